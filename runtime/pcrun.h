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
  X(EEXIT, -10, "script called os.exit")                         \
  X(ETYPE, -11, "value of the wrong type")                        \
  X(ECHILD, -12, "worker process died")

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

/* Any C function, as pcr_register takes it: cast with PCR_FN(f). */
typedef void (*pcr_fnptr)(void);
#define PCR_FN(f) ((pcr_fnptr)(f))

/* Called on the calling host thread when a call of an exported function
** fails, before it returns its error value; name is the export's name,
** msg the text pcr_export_status() then gives. Several host threads may
** run it at the same time: make it thread-safe. Must not call back into
** the runtime. */
typedef void (*pcr_export_errfn)(void *ud, const char *name, int code,
                                 const char *msg);

typedef struct pcr_options {
  int workers;            /* default pool size and workers per export
                             (at most 64 per export); 0 = cpu_count() */
  size_t arena_size;      /* bytes of shared arena; 0 = $PCRUN_ARENA or 1 GiB */
  const char *lua_path;   /* prepended to package.path; may be NULL (copied) */
  const char *lua_cpath;  /* prepended to package.cpath; may be NULL (copied) */
  int open_libs;          /* open the standard Lua libraries (default 1) */
  int zygote;             /* 1: pcr_open forks a single-threaded zygote that
                             forks every export worker, so the host never
                             forks again; see docs/embed.md (default 0) */
  pcr_export_errfn export_error;  /* optional, see pcr_export_errfn */
  void *export_error_ud;  /* passed to export_error */
} pcr_options;

/* Fill *o with defaults. Call before setting fields. */
PCR_API void pcr_options_init(pcr_options *o);

/* Create a runtime: a Lua state with pcrun loaded as global-free module
** `pcrun`. *out receives the handle, freed by pcr_close(). o may be NULL.
** One runtime per process: PCR_EINVAL while another is open in this
** process (a forked copy of the host may open its own). Call it from a
** thread that outlives the runtime: its children are killed when the
** thread that forked them exits (PR_SET_PDEATHSIG). Returns PCR_OK,
** PCR_EINVAL, PCR_ENOMEM, PCR_ENOSHM, PCR_ELUA or PCR_ESYS (zygote). */
PCR_API int pcr_open(pcr_runtime **out, const pcr_options *o);

/* Close the runtime: terminate and reap every child it forked, close the
** Lua state and free the handle. pcr_close(NULL) is a no-op. Called in a
** process forked from the one that opened rt, it frees only that copy's
** handle memory: the children, exports, shared arena blocks and Lua state
** stay the opener's. A host that exits without pcr_close has its export
** workers and zygote terminated at exit. */
PCR_API void pcr_close(pcr_runtime *rt);

/* Run a script file (path "-" reads stdin) with argv as the global `arg`
** table (argv[0] is the script name, as luajit sets it). argv is copied.
** Returns PCR_OK, PCR_EFILE, PCR_ESYNTAX or PCR_ELUA (also when setting
** `arg` raises, e.g. under a strict _G); the message and traceback are in
** pcr_last_error(). */
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

/* Call global Lua function fn with C arguments described by sig, a C
** signature such as "double(double, int)" (see pcr_register for the
** types). The arguments follow ret, as C passes them to a prototype of
** sig. ret, unless NULL or sig returns void, receives the result as the
** return type: a double for double, an int32_t for int, a
** `const char *` (owned by rt, valid until the next call on rt) for
** const char *. Returns PCR_OK; PCR_EINVAL for a bad signature or a
** global that is not a function; PCR_ELUA when fn raised, or reading the
** global did (a strict _G; message and traceback in pcr_last_error);
** PCR_ETYPE when its result does not fit the return type. Call from the
** thread that owns rt. */
PCR_API int pcr_call(pcr_runtime *rt, const char *fn, const char *sig,
                     void *ret, ...);

/* Expose host C function fn to Lua as pcrun.native.<name>, called through
** libffi with signature sig, e.g. "double(double, int)". Types: void,
** bool, char, short, int, long, long long with signed/unsigned, int8_t ..
** uint64_t, size_t, ssize_t, intptr_t, uintptr_t, ptrdiff_t, float,
** double, `const char *` (a Lua string, valid during the call) and any
** other `T *` (a pointer: nil, light userdata, FFI cdata, or an object
** with a `ptr` field or method, such as a shared array). name and sig are
** copied. Names: letters, digits and _, at most 63, not "has" or "names"
** (pcrun.native's own functions). Workers forked later (pools, exports)
** see it; those forked before do not. Returns PCR_OK, PCR_EINVAL (bad or
** taken name, bad signature; the text in pcr_last_error names it) or, in
** zygote mode, PCR_ESYS when the zygote cannot take it (the registration
** is then undone). Owner thread. */
PCR_API int pcr_register(pcr_runtime *rt, const char *name, pcr_fnptr fn,
                         const char *sig);

/* Give the host a plain C function pointer that calls global Lua function
** lua_fn with signature sig: *(T (**)(...))fnptr_out receives it (pass
** the address of your function pointer variable). The pointer stays valid
** until pcr_close(rt); any host thread may call it, at the same time:
** each call runs lua_fn in one of the export's worker processes (forked
** now from this process, or from the zygote). Arguments are copied: a
** `const char *` is copied into the request (2048 bytes in all, counting
** each string's length + 1; else PCR_EINVAL); other pointers pass as
** addresses, so they must point into the shared arena. A string result
** (at most 2047 bytes, else PCR_ETYPE) is copied to a buffer of the
** calling thread, valid until its next call of an exported function. The
** name lua_fn is at most 63 characters. On failure a call returns
** NaN (float, double), 0, false or NULL, and pcr_export_status() on that
** thread gives the code and message (plus options.export_error). Calls in
** flight when pcr_close runs fail with PCR_ECLOSED; calling the pointer
** after pcr_close has returned is undefined. Returns PCR_OK, PCR_EINVAL
** (bad signature, name too long, lua_fn not a global function, cannot be
** sent to the zygote), PCR_ELUA (reading the global raised), PCR_ENOSHM
** or PCR_ESYS. Owner thread. */
PCR_API int pcr_export(pcr_runtime *rt, const char *lua_fn, const char *sig,
                       void *fnptr_out);

/* The status of the calling thread's last call of an exported function:
** PCR_OK if it succeeded, else its PCR_E* code (PCR_ELUA:
** the Lua function raised; PCR_ETYPE: its result did not fit; PCR_ECHILD:
** the worker died; PCR_ECLOSED: the runtime closed). *msg, if msg is not
** NULL, receives the text (with the worker's traceback), owned by the
** thread and valid until its next call of an exported function. */
PCR_API int pcr_export_status(const char **msg);

/* Return the runtime's lua_State (a `lua_State *`) for advanced use. The
** state stays owned by rt. */
PCR_API void *pcr_lua_state(pcr_runtime *rt);

#ifdef __cplusplus
}
#endif
#endif
