/* The Lua binding: luaopen_pcrun_core. Opens the binding files on the
** handle core (lhandle.h) and wraps processes; argument checks for
** user-facing names live in lua/pcrun/, this layer checks types and turns
** codes into errors. */
#include "pcrun.h"
#include "lhandle.h"
#include "proc.h"
#include "ser.h"
#include "shm.h"

#include <lauxlib.h>
#include <lua.h>
#include <luajit.h>  /* LuaJIT only: refuse plain Lua 5.1 headers */
#include <errno.h>
#include <fcntl.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/syscall.h>
#include <unistd.h>

/* Raise for a negative errno from a blocking call. EINTR raises only when
** a hook is pending (luajit's and pcrun's Ctrl-C handlers set one);
** otherwise the caller retries. */
static int interrupted(lua_State *L) {
  pcr__lua_interrupted(L);
  return 0;
}

static double deadline_arg(lua_State *L, int idx) {
  if (lua_isnoneornil(L, idx)) return -1;
  double t = luaL_checknumber(L, idx);
  luaL_argcheck(L, t == t, idx, "timeout is NaN");
  return pcr__now() + (t < 0 ? 0 : t);
}

/* -- Processes -------------------------------------------------------- */

/* fork(): returns the child's pid in the parent, 0 in the child. The
** parent takes the child's references of every live handle before
** forking, so nothing can be freed under a child that has not yet counted
** itself, and drops them when it reaps the child: a child killed by a
** signal cannot drop them itself. */
static int l_fork(lua_State *L) {
  pcr_holds *h = pcr__lhandle_hold();
  if (!h) return luaL_error(L, "cannot fork: out of memory");
  pid_t pid = pcr__proc_spawn(pcr__lhandle_drop, h);
  if (pid < 0) {
    pcr__lhandle_drop(h);
    return luaL_error(L, "cannot fork: %s", strerror(-pid));
  }
  if (pid == 0) {
    pcr__lhandle_forget(h);
    pcr__lhandle_forked();
  }
  lua_pushinteger(L, pid);
  return 1;
}

/* End a child: flush, drop its references, _exit(code). Never returns. */
static int l_child_exit(lua_State *L) {
  int code = (int)luaL_optinteger(L, 1, 0);
  fflush(NULL);
  pcr__lhandle_exit();
  pcr__proc_reap_all(-1);
  _exit(code & 0xff);
}

static int l_wait(lua_State *L) {
  pid_t pid = (pid_t)luaL_checkinteger(L, 1);
  double deadline = deadline_arg(L, 2);
  int st, child = pcr__proc_is_child(pid);
  for (;;) {
    int r = child ? pcr__proc_wait(pid, deadline, &st)
                  : pcr__proc_wait_any(pid, deadline);
    if (r == -EINTR) { interrupted(L); continue; }
    if (r == -ECHILD) { child = 0; r = 1; }  /* reaped by another handle */
    if (r < 0) return luaL_error(L, "cannot wait for %d: %s", (int)pid,
                                 strerror(-r));
    lua_pushboolean(L, r > 0);
    if (r > 0 && child) {
      lua_pushinteger(L, pcr__proc_exitcode(st));
      return 2;
    }
    return 1;
  }
}

static int l_signal(lua_State *L) {
  int r = pcr__proc_signal((pid_t)luaL_checkinteger(L, 1),
                           (int)luaL_checkinteger(L, 2));
  if (r < 0) return luaL_error(L, "cannot signal: %s", strerror(-r));
  return 0;
}

static int l_is_child(lua_State *L) {
  lua_pushboolean(L, pcr__proc_is_child((pid_t)luaL_checkinteger(L, 1)));
  return 1;
}

static int l_set_daemon(lua_State *L) {
  pcr__proc_set_daemon((pid_t)luaL_checkinteger(L, 1), lua_toboolean(L, 2));
  return 0;
}

static int l_reap_all(lua_State *L) {
  pcr__proc_reap_all(luaL_optnumber(L, 1, -1));
  return 0;
}

static int l_pid_alive(lua_State *L) {
  lua_pushboolean(L, !pcr__pid_dead((uint32_t)luaL_checkinteger(L, 1)));
  return 1;
}

/* -- Misc ------------------------------------------------------------- */

static int l_cpu_count(lua_State *L) {
  lua_pushinteger(L, pcr__proc_cpu_count());
  return 1;
}

static int l_now(lua_State *L) {
  lua_pushnumber(L, pcr__now());
  return 1;
}

static int l_getpid(lua_State *L) {
  lua_pushinteger(L, getpid());
  return 1;
}

static int l_arena(lua_State *L) {
  lua_createtable(L, 0, 2);
  lua_pushnumber(L, (lua_Number)pcr__shm_size());
  lua_setfield(L, -2, "size");
  lua_pushnumber(L, (lua_Number)pcr__shm_used());
  lua_setfield(L, -2, "used");
  return 1;
}

/* Default pool size: the host's (pcrun -n) or the CPU count. */
static int l_default_workers(lua_State *L) {
  lua_getfield(L, LUA_REGISTRYINDEX, "pcrun.workers");
  if (lua_tointeger(L, -1) > 0) return 1;
  lua_pushinteger(L, pcr__proc_cpu_count());
  return 1;
}

/* core.interrupt([clear]): whether Ctrl-C is pending (sticky) and how
** many came so far; clear = true clears the pending one first. */
static int l_interrupt(lua_State *L) {
  if (lua_toboolean(L, 1)) pcr__interrupt_flag = 0;
  lua_pushboolean(L, pcr__interrupt_flag != 0);
  lua_pushinteger(L, pcr__interrupt_count);
  return 2;
}

static int l_isatty(lua_State *L) {
  lua_pushboolean(L, isatty((int)luaL_checkinteger(L, 1)));
  return 1;
}

static const luaL_Reg core_funcs[] = {
  {"isatty", l_isatty}, {"interrupt", l_interrupt},
  {"default_workers", l_default_workers},
  {"fork", l_fork}, {"child_exit", l_child_exit},
  {"wait", l_wait}, {"signal", l_signal}, {"is_child", l_is_child},
  {"set_daemon", l_set_daemon}, {"reap_all", l_reap_all},
  {"pid_alive", l_pid_alive}, {"cpu_count", l_cpu_count}, {"now", l_now},
  {"getpid", l_getpid}, {"arena", l_arena},
  {NULL, NULL}
};

#ifdef PCR_MPI
void pcr__mpi_lopen(lua_State *L);  /* mpi.c: core.mpi */
#endif

PCR_API int luaopen_pcrun_core(lua_State *L) {
  int e = pcr__shm_attach(0);
  if (e < 0 && pcr__shm_env_error())
    return luaL_error(L, "pcrun: %s", pcr__shm_env_error());
  if (e < 0)
    return luaL_error(L, "pcrun: cannot map the shared arena: %s "
                         "(check PCRUN_ARENA)", strerror(-e));
  lua_newtable(L);
  luaL_register(L, NULL, core_funcs);
  pcr__ser_open(L);
  pcr__lhandle_open(L);
  pcr__lconn_open(L);
  pcr__lqueue_open(L);
  pcr__lsync_open(L);
  pcr__larray_open(L);
  pcr__ldict_open(L);
#ifdef PCR_MPI
  pcr__mpi_lopen(L);
#endif
  lua_pushliteral(L, PCR_VERSION_STRING);
  lua_setfield(L, -2, "version");
  return 1;
}
