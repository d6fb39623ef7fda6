/* The embedding API: a runtime is a Lua state with pcrun's paths and core
** module in place, plus the error text of its last failed call, its
** native functions, its exports and, in zygote mode, its zygote. */
#include "export.h"
#include "native.h"
#include "pcrun.h"
#include "proc.h"
#include "shm.h"
#include "zygote.h"

#include <dlfcn.h>
#include <lauxlib.h>
#include <limits.h>
#include <lua.h>
#include <lualib.h>
#include <stdarg.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

int luaopen_pcrun_core(lua_State *L);

struct pcr_runtime {
  lua_State *L;
  pid_t pid;               /* the process that opened it */
  char *err;               /* last error text, owned */
  char *ret;               /* pcr_call's last string result, owned */
  int workers;             /* per export */
  pcr__native *natives;
  pcr__export *exports;
  pcr__zygote zy;          /* zy.pid == 0: no zygote */
  pcr_export_errfn onerr;
  void *onerr_ud;
};

/* The process that has a runtime open, or 0: one per process, since the
** registry of children to reap (proc.c) is per process. */
static _Atomic pid_t opened;

void pcr_options_init(pcr_options *o) {
  memset(o, 0, sizeof *o);
  o->open_libs = 1;
}

static void seterr(pcr_runtime *rt, const char *msg) {
  free(rt->err);
  rt->err = strdup(msg ? msg : "");
}

static int fail(pcr_runtime *rt, int code, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));
static int fail(pcr_runtime *rt, int code, const char *fmt, ...) {
  char buf[1024];
  va_list ap;
  va_start(ap, fmt);
  vsnprintf(buf, sizeof buf, fmt, ap);
  va_end(ap);
  seterr(rt, buf);
  return code;
}

/* Directory of the running executable, for finding ../share/lua. */
static int exedir(char *buf, size_t n) {
  ssize_t k = readlink("/proc/self/exe", buf, n - 1);
  if (k <= 0) return -1;
  buf[k] = '\0';
  char *slash = strrchr(buf, '/');
  if (!slash) return -1;
  *slash = '\0';
  return 0;
}

static void setpaths(lua_State *L, const pcr_options *o);

/* Whether this code runs from the build tree (build/pcrun, a test): only
** then do the checkout's modules come first. An installed copy must not
** change when the checkout is edited. */
static int in_build_tree(void) {
  Dl_info di;
  char got[PATH_MAX], build[PATH_MAX];
  const char *f = dladdr((void *)setpaths, &di) && di.dli_fname &&
                  strchr(di.dli_fname, '/') ? di.dli_fname : "/proc/self/exe";
  if (!realpath(f, got) || !realpath(PCR_BUILD_DIR, build)) return 0;
  size_t n = strlen(build);
  return !strncmp(got, build, n) && got[n] == '/';
}

/* package.path = extra;build tree (from there only);next to the binary;
** install;default. Without the standard libraries there is no package
** table: nothing. */
static void setpaths(lua_State *L, const pcr_options *o) {
  char dir[4096];
  const char *exe = exedir(dir, sizeof dir) == 0 ? dir : ".";
  lua_getglobal(L, "package");
  if (!lua_istable(L, -1)) { lua_pop(L, 1); return; }
  lua_pushfstring(L, "%s%s%s%s/../share/lua/5.1/?.lua;%s/../share/lua/5.1/"
                  "?/init.lua;" PCR_LUA_INSTALL_DIR "/?.lua;"
                  PCR_LUA_INSTALL_DIR "/?/init.lua;",
                  o->lua_path ? o->lua_path : "", o->lua_path ? ";" : "",
                  in_build_tree() ? PCR_LUA_SRC_DIR "/?.lua;" PCR_LUA_SRC_DIR
                                    "/?/init.lua;" : "",
                  exe, exe);
  lua_getfield(L, -2, "path");
  lua_concat(L, 2);
  lua_setfield(L, -2, "path");
  if (o->lua_cpath) {
    lua_pushfstring(L, "%s;", o->lua_cpath);
    lua_getfield(L, -2, "cpath");
    lua_concat(L, 2);
    lua_setfield(L, -2, "cpath");
  }
  /* The core is linked in: require "pcrun.core" must not load a copy. */
  lua_getfield(L, -1, "preload");
  lua_pushcfunction(L, luaopen_pcrun_core);
  lua_setfield(L, -2, "pcrun.core");
  lua_pop(L, 2);
}

/* Set up a fresh state (lua_cpcall: the options are the light userdata). */
static int setupstate(lua_State *L) {
  const pcr_options *o = lua_touserdata(L, 1);
  if (o->open_libs) luaL_openlibs(L);
  setpaths(L, o);
  lua_pushinteger(L, o->workers);
  lua_setfield(L, LUA_REGISTRYINDEX, "pcrun.workers");
  pcr__native_open(L);
  return 0;
}

int pcr_open(pcr_runtime **out, const pcr_options *o) {
  pcr_options def;
  if (!out) return PCR_EINVAL;
  *out = NULL;
  if (!o) { pcr_options_init(&def); o = &def; }
  if (o->workers < 0) return PCR_EINVAL;
  pid_t me = getpid(), cur = atomic_load(&opened);
  if (cur == me || !atomic_compare_exchange_strong(&opened, &cur, me))
    return PCR_EINVAL;  /* another runtime is open in this process */
  int r = PCR_ENOSHM;
  pcr_runtime *rt = NULL;
  if (pcr__shm_attach(o->arena_size) < 0) goto failed;
  r = PCR_ENOMEM;
  if (!(rt = calloc(1, sizeof *rt)) || !(rt->L = luaL_newstate())) goto failed;
  rt->pid = me;
  int e = lua_cpcall(rt->L, setupstate, (void *)o);
  if (e) { r = e == LUA_ERRMEM ? PCR_ENOMEM : PCR_ELUA; goto failed; }
  rt->workers = o->workers ? o->workers : pcr__proc_cpu_count();
  rt->onerr = o->export_error;
  rt->onerr_ud = o->export_error_ud;
  r = PCR_ESYS;
  if (o->zygote && pcr__zygote_start(&rt->zy, rt->L, &rt->natives) < 0)
    goto failed;
  *out = rt;
  return PCR_OK;
failed:
  if (rt && rt->L) lua_close(rt->L);
  free(rt);
  atomic_store(&opened, 0);
  return r;
}

/* pcr_close in a process forked from the one that opened rt: the
** children, exports and arena blocks are the opener's, so leave them and
** free only this copy's own memory. The Lua state is left as well: its
** finalizers would act on the opener's pools and shared objects. */
static void closecopy(pcr_runtime *rt) {
  while (rt->exports) {
    pcr__export *x = rt->exports;
    rt->exports = x->next;
    pcr__export_forget(x);
  }
  pcr__zygote_forget(&rt->zy);
  pcr__native_free(rt->natives);
  free(rt->ret);
  free(rt->err);
  free(rt);
}

void pcr_close(pcr_runtime *rt) {
  if (!rt) return;
  if (rt->pid != getpid()) { closecopy(rt); return; }
  for (pcr__export *x = rt->exports; x; x = x->next) pcr__export_shut(x);
  while (rt->exports) {
    pcr__export *x = rt->exports;
    rt->exports = x->next;
    pcr__export_free(x, 1);
  }
  pcr__zygote_stop(&rt->zy);
  lua_close(rt->L);  /* pools and connections close through __gc */
  pcr__proc_reap_all(-1);
  pcr__native_free(rt->natives);
  free(rt->ret);
  free(rt->err);
  free(rt);
  atomic_store(&opened, 0);
}

static int traceback(lua_State *L) {
  const char *msg = lua_tostring(L, 1);
  if (!msg) {
    if (luaL_callmeta(L, 1, "__tostring") && lua_isstring(L, -1)) return 1;
    msg = lua_pushfstring(L, "(error object is a %s value)",
                          luaL_typename(L, 1));
  }
  luaL_traceback(L, L, msg, 1);
  return 1;
}

/* Call the function below nargs arguments; record any error. */
static int docall(pcr_runtime *rt, int nargs) {
  lua_State *L = rt->L;
  int base = lua_gettop(L) - nargs;
  lua_pushcfunction(L, traceback);
  lua_insert(L, base);
  int r = lua_pcall(L, nargs, 0, base);
  lua_remove(L, base);
  if (r == 0) { seterr(rt, ""); return PCR_OK; }
  seterr(rt, lua_tostring(L, -1));
  lua_pop(L, 1);
  return r == LUA_ERRMEM ? PCR_ENOMEM : PCR_ELUA;
}

static int loaded(pcr_runtime *rt, int r) {
  if (r == 0) return PCR_OK;
  seterr(rt, lua_tostring(rt->L, -1));
  lua_pop(rt->L, 1);
  return r == LUA_ERRSYNTAX ? PCR_ESYNTAX
         : r == LUA_ERRFILE ? PCR_EFILE : PCR_ENOMEM;
}

typedef struct args { int argc; char **argv; } args;

/* Set global `arg` (lua_cpcall: a strict _G may raise). */
static int setarg(lua_State *L) {
  const args *a = lua_touserdata(L, 1);
  lua_createtable(L, a->argc, 1);
  for (int i = 0; i < a->argc; i++) {
    lua_pushstring(L, a->argv[i]);
    lua_rawseti(L, -2, i);
  }
  lua_setglobal(L, "arg");
  return 0;
}

int pcr_run_file(pcr_runtime *rt, const char *path, int argc, char **argv) {
  if (!rt || !path || argc < 0 || (argc > 0 && !argv)) return PCR_EINVAL;
  lua_State *L = rt->L;
  args a = {argc, argv};
  int e = lua_cpcall(L, setarg, &a);
  if (e) {
    fail(rt, e == LUA_ERRMEM ? PCR_ENOMEM : PCR_ELUA, "pcr_run_file: cannot "
         "set global 'arg': %s", lua_tostring(L, -1) ? lua_tostring(L, -1)
                                                     : "?");
    lua_pop(L, 1);
    return e == LUA_ERRMEM ? PCR_ENOMEM : PCR_ELUA;
  }
  e = loaded(rt, luaL_loadfile(L, strcmp(path, "-") ? path : NULL));
  if (e) return e;
  for (int i = 1; i < argc; i++) lua_pushstring(L, argv[i]);
  return docall(rt, argc > 0 ? argc - 1 : 0);
}

int pcr_run_string(pcr_runtime *rt, const char *code, const char *name) {
  if (!rt || !code) return PCR_EINVAL;
  int e = loaded(rt, luaL_loadbuffer(rt->L, code, strlen(code),
                                     name ? name : "=(string)"));
  return e ? e : docall(rt, 0);
}

/* require(module) and bind the global, all protected (a strict _G). */
static int requiremod(lua_State *L) {
  const char *module = lua_tostring(L, 1);
  lua_getglobal(L, "require");
  lua_pushvalue(L, 1);
  lua_call(L, 1, 1);
  lua_setglobal(L, module);
  return 0;
}

int pcr_require(pcr_runtime *rt, const char *module) {
  if (!rt || !module) return PCR_EINVAL;
  lua_pushcfunction(rt->L, requiremod);
  lua_pushstring(rt->L, module);
  return docall(rt, 1);
}

void pcr_kill_children(pcr_runtime *rt) {
  (void)rt;
  pcr__proc_reap_all(0);
}

const char *pcr_last_error(pcr_runtime *rt) {
  return rt && rt->err ? rt->err : "";
}

/* -- Calls, natives and exports -------------------------------------- */

static void pusharg(lua_State *L, int kind, va_list *ap) {
  pcr__val v;
  switch (kind) {
  case PCR_T_BOOL: v.b = va_arg(*ap, int) != 0; break;
  case PCR_T_I8: v.i8 = (int8_t)va_arg(*ap, int); break;
  case PCR_T_U8: v.u8 = (uint8_t)va_arg(*ap, int); break;
  case PCR_T_I16: v.i16 = (int16_t)va_arg(*ap, int); break;
  case PCR_T_U16: v.u16 = (uint16_t)va_arg(*ap, int); break;
  case PCR_T_I32: v.i32 = va_arg(*ap, int32_t); break;
  case PCR_T_U32: v.u32 = va_arg(*ap, uint32_t); break;
  case PCR_T_I64: v.i64 = va_arg(*ap, int64_t); break;
  case PCR_T_U64: v.u64 = va_arg(*ap, uint64_t); break;
  case PCR_T_FLOAT: v.f = (float)va_arg(*ap, double); break;
  case PCR_T_DOUBLE: v.d = va_arg(*ap, double); break;
  case PCR_T_STR: v.s = va_arg(*ap, const char *); break;
  default: v.p = va_arg(*ap, void *); break;
  }
  pcr__lua_pushval(L, kind, &v);
}

static size_t kindsize(int kind) {
  switch (kind) {
  case PCR_T_VOID: return 0;
  case PCR_T_BOOL: case PCR_T_I8: case PCR_T_U8: return 1;
  case PCR_T_I16: case PCR_T_U16: return 2;
  case PCR_T_I32: case PCR_T_U32: case PCR_T_FLOAT: return 4;
  default: return 8;
  }
}

/* Store the result on top of the stack into ret; pops it. */
static int getresult(pcr_runtime *rt, const char *fn, const pcr__sig *s,
                     void *ret) {
  lua_State *L = rt->L;
  pcr__val v;
  char why[128];
  int r = PCR_OK;
  if (pcr__lua_toval(L, -1, s->ret, &v, why, sizeof why))
    r = fail(rt, PCR_ETYPE, "pcr_call: '%s': result %s", fn, why);
  else if (s->ret == PCR_T_STR && v.s) {
    free(rt->ret);
    if (!(rt->ret = strdup(v.s))) r = fail(rt, PCR_ENOMEM, "out of memory");
    v.s = rt->ret;
  }
  if (r == PCR_OK && ret) memcpy(ret, &v, kindsize(s->ret));
  lua_pop(L, 1);
  return r;
}

int pcr_call(pcr_runtime *rt, const char *fn, const char *sig, void *ret,
             ...) {
  if (!rt) return PCR_EINVAL;
  if (!fn) return fail(rt, PCR_EINVAL, "pcr_call: function name is NULL");
  pcr__sig s;
  char why[PCR_SIG_TEXT + 128];
  if (pcr__sig_parse(&s, sig, why, sizeof why))
    return fail(rt, PCR_EINVAL, "pcr_call: '%s': %s", fn, why);
  lua_State *L = rt->L;
  int base = lua_gettop(L);
  lua_pushcfunction(L, traceback);
  if (pcr__lua_getglobal(L, fn)) {
    fail(rt, PCR_ELUA, "pcr_call: reading global '%s' raised: %s", fn,
         lua_tostring(L, -1) ? lua_tostring(L, -1) : "?");
    lua_settop(L, base);
    return PCR_ELUA;
  }
  if (!lua_isfunction(L, -1)) {
    const char *tn = luaL_typename(L, -1);
    lua_settop(L, base);
    return fail(rt, PCR_EINVAL, "pcr_call: global '%s' is not a function "
                "(%s)", fn, tn);
  }
  va_list ap;
  va_start(ap, ret);
  for (int i = 0; i < s.nargs; i++) pusharg(L, s.args[i], &ap);
  va_end(ap);
  int nres = s.ret == PCR_T_VOID ? 0 : 1;
  int r = lua_pcall(L, s.nargs, nres, base + 1);
  if (r) {
    seterr(rt, lua_tostring(L, -1));
    lua_settop(L, base);
    return r == LUA_ERRMEM ? PCR_ENOMEM : PCR_ELUA;
  }
  seterr(rt, "");
  r = nres ? getresult(rt, fn, &s, ret) : PCR_OK;
  lua_settop(L, base);
  return r;
}

int pcr_register(pcr_runtime *rt, const char *name, pcr_fnptr fn,
                 const char *sig) {
  if (!rt) return PCR_EINVAL;
  char err[PCR_SIG_TEXT + 256];
  int r = pcr__native_add(rt->L, &rt->natives, name, fn, sig, err,
                          sizeof err);
  if (r) return fail(rt, r, "%s", err);
  if (rt->zy.pid > 0 && (r = pcr__zygote_register(&rt->zy, name, fn, sig))) {
    pcr__native_remove(rt->L, &rt->natives, name);  /* all or nothing */
    int code = r <= PCR_EINVAL && r >= PCR_ECHILD ? r : PCR_ESYS;
    return fail(rt, code, "pcr_register: '%s': the zygote could not "
                "register it: %s", name, code == PCR_ESYS ? strerror(-r)
                                                          : pcr_strerror(r));
  }
  seterr(rt, "");
  return PCR_OK;
}

int pcr_export(pcr_runtime *rt, const char *lua_fn, const char *sig,
               void *fnptr_out) {
  if (!rt) return PCR_EINVAL;
  if (!lua_fn || !fnptr_out)
    return fail(rt, PCR_EINVAL, "pcr_export: %s is NULL",
                lua_fn ? "fnptr_out" : "lua_fn");
  char err[PCR_SIG_TEXT + 512];
  pcr__export *x;
  int r = pcr__export_new(rt->L, rt->zy.pid > 0 ? &rt->zy : NULL, lua_fn,
                          sig, rt->workers, rt->onerr, rt->onerr_ud, &x, err,
                          sizeof err);
  if (r) return fail(rt, r, "%s", err);
  x->next = rt->exports;
  rt->exports = x;
  memcpy(fnptr_out, &x->code, sizeof x->code);
  seterr(rt, "");
  return PCR_OK;
}

int pcr_export_status(const char **msg) { return pcr__export_status(msg); }

void *pcr_lua_state(pcr_runtime *rt) { return rt ? rt->L : NULL; }
