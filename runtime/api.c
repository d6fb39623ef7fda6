/* The embedding API: a runtime is a Lua state with pcrun's paths and core
** module in place, plus the error text of its last failed call. */
#include "pcrun.h"
#include "proc.h"
#include "shm.h"

#include <lauxlib.h>
#include <lua.h>
#include <lualib.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

int luaopen_pcrun_core(lua_State *L);

struct pcr_runtime {
  lua_State *L;
  char *err;  /* last error text, owned */
};

void pcr_options_init(pcr_options *o) {
  memset(o, 0, sizeof *o);
  o->open_libs = 1;
}

static void seterr(pcr_runtime *rt, const char *msg) {
  free(rt->err);
  rt->err = strdup(msg ? msg : "");
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

/* package.path = extra;build tree;next to the binary;install;default */
static void setpaths(lua_State *L, const pcr_options *o) {
  char dir[4096];
  const char *exe = exedir(dir, sizeof dir) == 0 ? dir : ".";
  lua_getglobal(L, "package");
  lua_pushfstring(L, "%s%s" PCR_LUA_SRC_DIR "/?.lua;" PCR_LUA_SRC_DIR
                  "/?/init.lua;%s/../share/lua/5.1/?.lua;%s/../share/lua/5.1/"
                  "?/init.lua;" PCR_LUA_INSTALL_DIR "/?.lua;"
                  PCR_LUA_INSTALL_DIR "/?/init.lua;",
                  o->lua_path ? o->lua_path : "", o->lua_path ? ";" : "",
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

int pcr_open(pcr_runtime **out, const pcr_options *o) {
  pcr_options def;
  if (!out) return PCR_EINVAL;
  *out = NULL;
  if (!o) { pcr_options_init(&def); o = &def; }
  if (o->workers < 0) return PCR_EINVAL;
  if (pcr__shm_attach(o->arena_size) < 0) return PCR_ENOSHM;
  pcr_runtime *rt = calloc(1, sizeof *rt);
  if (!rt) return PCR_ENOMEM;
  rt->L = luaL_newstate();
  if (!rt->L) { free(rt); return PCR_ENOMEM; }
  if (o->open_libs) luaL_openlibs(rt->L);
  setpaths(rt->L, o);
  lua_pushinteger(rt->L, o->workers);
  lua_setfield(rt->L, LUA_REGISTRYINDEX, "pcrun.workers");
  *out = rt;
  return PCR_OK;
}

void pcr_close(pcr_runtime *rt) {
  if (!rt) return;
  lua_close(rt->L);  /* pools and connections close through __gc */
  pcr__proc_reap_all(-1);
  free(rt->err);
  free(rt);
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

int pcr_run_file(pcr_runtime *rt, const char *path, int argc, char **argv) {
  if (!rt || !path || argc < 0) return PCR_EINVAL;
  lua_State *L = rt->L;
  lua_createtable(L, argc, 1);
  for (int i = 0; i < argc; i++) {
    lua_pushstring(L, argv[i]);
    lua_rawseti(L, -2, i);
  }
  lua_setglobal(L, "arg");
  int e = loaded(rt, luaL_loadfile(L, strcmp(path, "-") ? path : NULL));
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

int pcr_require(pcr_runtime *rt, const char *module) {
  if (!rt || !module) return PCR_EINVAL;
  lua_getglobal(rt->L, "require");
  lua_pushstring(rt->L, module);
  int base = lua_gettop(rt->L) - 1;
  lua_pushcfunction(rt->L, traceback);
  lua_insert(rt->L, base);
  int r = lua_pcall(rt->L, 1, 1, base);
  lua_remove(rt->L, base);
  if (r) {
    seterr(rt, lua_tostring(rt->L, -1));
    lua_pop(rt->L, 1);
    return PCR_ELUA;
  }
  lua_setglobal(rt->L, module);
  return PCR_OK;
}

void pcr_kill_children(pcr_runtime *rt) {
  (void)rt;
  pcr__proc_reap_all(0);
}

const char *pcr_last_error(pcr_runtime *rt) {
  return rt && rt->err ? rt->err : "";
}

void *pcr_lua_state(pcr_runtime *rt) { return rt ? rt->L : NULL; }
