/* pcrun: a parallel compute runtime for LuaJIT -- the public embedding API.
** Every fallible call returns PCR_OK (0) or a negative PCR_E* code; detail
** text comes from pcr_last_error() and is owned by the runtime handle. */
#ifndef PCRUN_H
#define PCRUN_H

#include <stddef.h>
#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

#if defined(PCR_BUILDING)
#define PCR_API __attribute__((visibility("default")))
#else
#define PCR_API
#endif

#define PCR_VERSION_MAJOR 0
#define PCR_VERSION_MINOR 1
#define PCR_VERSION_PATCH 0
#define PCR_VERSION_STRING "0.1.0"

/* Every error code with its message: generates the enum, pcr_strerror()
** and pcr_err_name(). */
#define PCR_ERRNO_MAP(X)                                          \
  X(EINVAL, -1, "invalid argument")                               \
  X(ENOMEM, -2, "out of memory")                                  \
  X(ENOSHM, -3, "out of shared arena space (raise PCRUN_ARENA)")  \
  X(ESYS, -4, "system call failed")                               \
  X(ELUA, -5, "Lua error")                                        \
  X(ECLOSED, -6, "handle is closed")                              \
  X(ETIMEDOUT, -7, "timed out")                                   \
  X(EFILE, -8, "cannot read file")                                \
  X(ESYNTAX, -9, "syntax error")                                  \
  X(EEXIT, -10, "script called os.exit")

typedef enum {
  PCR_OK = 0,
#define PCR_ERR_ENUM(name, code, msg) PCR_##name = (code),
  PCR_ERRNO_MAP(PCR_ERR_ENUM)
#undef PCR_ERR_ENUM
} pcr_errcode;

/* Return the message / the symbolic name (e.g. "PCR_EINVAL") of an error
** code; static strings, never NULL. */
PCR_API const char *pcr_strerror(int code);
PCR_API const char *pcr_err_name(int code);
/* Return the library version as "MAJOR.MINOR.PATCH" (static string). */
PCR_API const char *pcr_version(void);

typedef struct pcr_runtime pcr_runtime;

typedef struct pcr_options {
  int workers;            /* default pool size; 0 = cpu_count() */
  size_t arena_size;      /* bytes of shared arena; 0 = $PCRUN_ARENA or 1 GiB */
  const char *lua_path;   /* prepended to package.path; may be NULL (copied) */
  const char *lua_cpath;  /* prepended to package.cpath; may be NULL (copied) */
  int open_libs;          /* open the standard Lua libraries (default 1) */
} pcr_options;

/* Fill *o with defaults. Call before setting fields. */
PCR_API void pcr_options_init(pcr_options *o);

/* Create a runtime: a Lua state with pcrun loaded as global-free module
** `pcrun`. *out receives the handle, freed by pcr_close(). o may be NULL. */
PCR_API int pcr_open(pcr_runtime **out, const pcr_options *o);

/* Close the runtime: terminate and reap every child it forked, close the
** Lua state and free the handle. pcr_close(NULL) is a no-op. */
PCR_API void pcr_close(pcr_runtime *rt);

/* Run a script file (path "-" reads stdin) with argv as the global `arg`
** table (argv[0] is the script name, as luajit sets it). argv is copied.
** Returns PCR_OK, PCR_EFILE, PCR_ESYNTAX or PCR_ELUA; the message and
** traceback are in pcr_last_error(). */
PCR_API int pcr_run_file(pcr_runtime *rt, const char *path, int argc,
                         char **argv);

/* Run a chunk of Lua source; name is the chunk name used in messages. */
PCR_API int pcr_run_string(pcr_runtime *rt, const char *code,
                           const char *name);

/* Require a module and bind it to the global of the same name (like
** luajit -l). */
PCR_API int pcr_require(pcr_runtime *rt, const char *module);

/* Terminate every child the runtime forked (SIGTERM, then SIGKILL after a
** second) and reap them; for hosts leaving after an error or Ctrl-C.
** pcr_close() instead waits for children still running, as Python does. */
PCR_API void pcr_kill_children(pcr_runtime *rt);

/* Return the last error's text (message and traceback) or "" if none.
** Owned by rt; valid until the next call on rt. */
PCR_API const char *pcr_last_error(pcr_runtime *rt);

/* Return the runtime's lua_State (a `lua_State *`) for advanced use. The
** state stays owned by rt. */
PCR_API void *pcr_lua_state(pcr_runtime *rt);

#ifdef __cplusplus
}
#endif
#endif
