/* The Lua binding: luaopen_pcrun_core. Wraps the arena, connections and
** processes as Lua values; argument checks for user-facing names live in
** lua/pcrun/, this layer checks types and turns codes into errors. */
#include "pcrun.h"
#include "lshared.h"
#include "pipe.h"
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

#define CONN_MT "pcrun.Connection"

typedef struct lconn {
  pcr_conn c;
  struct lconn *prev, *next;  /* live connections of this process */
} lconn;

/* Connections open in this process (all Lua states of it: handles are a
** process resource). Before a fork the parent takes the child's ring
** references for each of them; it drops them when it reaps the child. */
static lconn *live;

static void link_conn(lconn *lc) {
  lc->prev = NULL;
  lc->next = live;
  if (live) live->prev = lc;
  live = lc;
}

static void unlink_conn(lconn *lc) {
  if (lc->prev) lc->prev->next = lc->next;
  else if (live == lc) live = lc->next;
  if (lc->next) lc->next->prev = lc->prev;
  lc->prev = lc->next = NULL;
}

static void conn_release(lconn *lc) {
  if (lc->c.fd < 0) return;
  unlink_conn(lc);
  pcr__conn_close(&lc->c);
}

/* Raise for a negative errno from a blocking call. EINTR raises only when
** a hook is pending (luajit's and pcrun's Ctrl-C handlers set one);
** otherwise the caller retries. */
static int interrupted(lua_State *L) {
  if (pcr__lua_sigint(L)) {
    lua_sethook(L, NULL, 0, 0);  /* the hook has done its work: we raise */
    lua_pushliteral(L, "interrupted");  /* exactly: no position */
    return lua_error(L);
  }
  return 0;
}

static double deadline_arg(lua_State *L, int idx) {
  if (lua_isnoneornil(L, idx)) return -1;
  double t = luaL_checknumber(L, idx);
  luaL_argcheck(L, t == t, idx, "timeout is NaN");
  return pcr__now() + (t < 0 ? 0 : t);
}

/* -- Connections ------------------------------------------------------ */

static lconn *newconn(lua_State *L) {
  lconn *lc = lua_newuserdata(L, sizeof *lc);
  memset(lc, 0, sizeof *lc);
  lc->c.fd = -1;  /* closed until it owns something */
  luaL_getmetatable(L, CONN_MT);
  lua_setmetatable(L, -2);
  return lc;
}

static lconn *toconn(lua_State *L) {
  lconn *lc = luaL_checkudata(L, 1, CONN_MT);
  if (lc->c.fd < 0) luaL_error(L, "attempt to use a closed connection");
  return lc;
}

static int l_pipe(lua_State *L) {
  int duplex = lua_isnoneornil(L, 1) ? 1 : lua_toboolean(L, 1);
  size_t cap = (size_t)luaL_optnumber(L, 2, (lua_Number)PCR_RING_DEFAULT);
  lconn *a = newconn(L), *b = newconn(L);
  int e = pcr__pipe_open(&a->c, &b->c, duplex, cap);
  if (e == -ENOSPC)
    return luaL_error(L, "pcrun.pipe: out of shared arena space "
                         "(raise PCRUN_ARENA, now %d MiB)",
                      (int)(pcr__shm_size() >> 20));
  if (e < 0)
    return luaL_error(L, "pcrun.pipe: cannot create pipe: %s", strerror(-e));
  link_conn(a);
  link_conn(b);
  return 2;
}

static int sendframe(lua_State *L, lconn *lc, unsigned kind, const char *p,
                     size_t n, double deadline, const char *who) {
  for (;;) {
    int e = pcr__conn_send(&lc->c, kind, p, n, deadline);
    if (e == 0) return 0;
    if (e == -EINTR) { interrupted(L); continue; }
    if (e == -ETIMEDOUT) {
      lua_pushnil(L);
      lua_pushliteral(L, "timeout");
      return 2;
    }
    if (e == -EPIPE) return luaL_error(L, "%s: peer closed the connection", who);
    if (e == -EBADF) return luaL_error(L, "%s: connection is not writable", who);
    return luaL_error(L, "%s: %s", who, strerror(-e));
  }
}

static int conn_send(lua_State *L) {
  lconn *lc = toconn(L);
  luaL_checkany(L, 2);
  double deadline = deadline_arg(L, 3);
  size_t n;
  const char *p;
  unsigned kind = PCR_FRAME_STRING;
  pcr__msg_begin();
  if (lua_type(L, 2) == LUA_TSTRING) {  /* strings go raw: no copy */
    p = lua_tolstring(L, 2, &n);
  } else {
    p = pcr__ser_encode_msg(L, 2, &n, "message");
    kind = PCR_FRAME_VALUE;
  }
  int r = sendframe(L, lc, kind, p, n, deadline, "send");
  pcr__msg_end(r == 0);  /* timed out: the references go (errors: later) */
  if (r) return r;
  lua_pushboolean(L, 1);
  return 1;
}

static int conn_send_bytes(lua_State *L) {
  lconn *lc = toconn(L);
  size_t n;
  const char *p = luaL_checklstring(L, 2, &n);
  int r = sendframe(L, lc, PCR_FRAME_BYTES, p, n, deadline_arg(L, 3),
                    "send_bytes");
  if (r) return r;
  lua_pushboolean(L, 1);
  return 1;
}

/* Receive one frame; pushes it (decoded unless raw) or nil, "timeout". */
static int recvframe(lua_State *L, int raw, const char *who) {
  lconn *lc = toconn(L);
  double deadline = deadline_arg(L, 2);
  unsigned kind;
  const char *p;
  size_t n;
  for (;;) {
    int e = pcr__conn_recv(&lc->c, &kind, &p, &n, deadline);
    if (e == 0) break;
    if (e == -EINTR) { interrupted(L); continue; }
    if (e == -ETIMEDOUT) {
      lua_pushnil(L);
      lua_pushliteral(L, "timeout");
      return 2;
    }
    if (e == -EPIPE) return luaL_error(L, "%s: end of file: peer closed", who);
    if (e == -EBADF) return luaL_error(L, "%s: connection is not readable", who);
    return luaL_error(L, "%s: %s", who, strerror(-e));
  }
  if (raw || kind != PCR_FRAME_VALUE) lua_pushlstring(L, p, n);
  else pcr__ser_decode(L, p, n, PCR_SER_TRUSTED | PCR_SER_MSG);
  pcr__conn_done(&lc->c);
  return 1;
}

static int conn_recv(lua_State *L) { return recvframe(L, 0, "recv"); }
static int conn_recv_bytes(lua_State *L) {
  return recvframe(L, 1, "recv_bytes");
}

static int conn_poll(lua_State *L) {
  lconn *lc = toconn(L);
  double deadline = lua_isnoneornil(L, 2) ? pcr__now() : deadline_arg(L, 2);
  for (;;) {
    int e = pcr__conn_poll(&lc->c, deadline);
    if (e == -EINTR) { interrupted(L); continue; }
    if (e == -EBADF) return luaL_error(L, "poll: connection is not readable");
    lua_pushboolean(L, e > 0);
    return 1;
  }
}

static int conn_close(lua_State *L) {
  lconn *lc = luaL_checkudata(L, 1, CONN_MT);
  conn_release(lc);
  return 0;
}

static int conn_closed(lua_State *L) {
  lconn *lc = luaL_checkudata(L, 1, CONN_MT);
  lua_pushboolean(L, lc->c.fd < 0);
  return 1;
}

static int conn_fileno(lua_State *L) {
  lua_pushinteger(L, toconn(L)->c.fd);
  return 1;
}

static int conn_tostring(lua_State *L) {
  lconn *lc = luaL_checkudata(L, 1, CONN_MT);
  lua_pushfstring(L, "pcrun.Connection (%s%s%s): %p",
                  lc->c.fd < 0 ? "closed" : lc->c.in ? "r" : "",
                  lc->c.fd >= 0 && lc->c.out ? "w" : "", "", (void *)lc);
  return 1;
}

/* Crossing a process boundary: the rings go by offset with one reference
** held for the receiver; the socket by (pid, fd, inode), which the
** receiver finds in its own table (inherited through fork) or copies from
** the sender with pidfd_getfd. */
typedef struct wireconn {
  uint64_t in, out, ino;
  int32_t pid, fd;
} wireconn;

static int conn_serialize(lua_State *L) {
  lconn *lc = toconn(L);
  struct stat st;
  if (fstat(lc->c.fd, &st) < 0) return luaL_error(L, "%s", strerror(errno));
  wireconn w = {lc->c.in ? pcr__shm_offset(lc->c.in) : 0,
                lc->c.out ? pcr__shm_offset(lc->c.out) : 0,
                (uint64_t)st.st_ino, (int32_t)getpid(), lc->c.fd};
  /* In a message the receiver adopts a hold; pcrun.encode's output may be
  ** decoded many times or never, so each decode takes its own. */
  if (pcr__ser_msg) pcr__conn_hold(lc->c.in, lc->c.out);
  lua_pushlstring(L, (const char *)&w, sizeof w);
  return 1;
}

static int samesock(int fd, uint64_t ino) {
  struct stat st;
  return fd >= 0 && fstat(fd, &st) == 0 && (uint64_t)st.st_ino == ino;
}

static pcr_ring *ringat(uint64_t off) {
  pcr_ring *r = off ? pcr__shm_at(off, sizeof(pcr_ring)) : NULL;
  return r && r->hdr.magic == PCR_OBJ_MAGIC && r->hdr.type == PCR_OBJ_RING
             ? r : NULL;
}

static int conn_deserialize(lua_State *L) {
  size_t n;
  const char *s = luaL_checklstring(L, 1, &n);
  wireconn w;
  if (n != sizeof w) return luaL_error(L, "bad pcrun.Connection encoding");
  memcpy(&w, s, sizeof w);
  if (!pcr__ser_msg && !pcr__ser_trusted)
    return luaL_error(L, "pcrun.decode: a connection in untrusted input "
                         "(decode with { trusted = true })");
  pcr_ring *in = ringat(w.in), *out = ringat(w.out);
  if ((w.in && !in) || (w.out && !out))
    return luaL_error(L, "pcrun.Connection: its buffers are gone");
  int fd = -1;
  if (samesock(w.fd, w.ino)) {
    fd = fcntl(w.fd, F_DUPFD_CLOEXEC, 0);
  } else {
    int pfd = (int)syscall(SYS_pidfd_open, w.pid, 0);
    if (pfd >= 0) {
      fd = (int)syscall(SYS_pidfd_getfd, pfd, w.fd, 0);
      close(pfd);
      if (fd >= 0 && !samesock(fd, w.ino)) { close(fd); fd = -1; }
    }
  }
  if (fd < 0)
    return luaL_error(L, "pcrun.Connection: cannot receive a connection this "
                         "process did not inherit (%s)", strerror(errno));
  lconn *lc = newconn(L);
  if (!pcr__ser_msg) pcr__conn_hold(in, out);
  lc->c.in = in;
  lc->c.out = out;
  lc->c.fd = fd;
  link_conn(lc);
  return 1;
}

/* select(conns, timeout [, spin]) -> index of the first readable one, or
** nil. spin: seconds to poll before sleeping (default 100 us). */
static int l_select(lua_State *L) {
  luaL_checktype(L, 1, LUA_TTABLE);
  int n = (int)lua_objlen(L, 1);
  double deadline = deadline_arg(L, 2);
  double spin = luaL_optnumber(L, 3, 100e-6);
  pcr_conn *cs[PCR_SELECT_MAX];
  luaL_argcheck(L, n > 0 && n <= PCR_SELECT_MAX, 1, "1 to 1024 connections");
  for (int i = 0; i < n; i++) {
    lua_rawgeti(L, 1, i + 1);
    lconn *lc = luaL_testudata(L, -1, CONN_MT);
    if (!lc || lc->c.fd < 0 || !lc->c.in)
      return luaL_error(L, "select: item %d is not an open readable "
                           "connection", i + 1);
    cs[i] = &lc->c;
    lua_pop(L, 1);
  }
  for (;;) {
    int r = pcr__conn_select(cs, n, deadline, spin);
    if (r >= 0) { lua_pushinteger(L, r + 1); return 1; }
    if (r == -EINTR) { interrupted(L); continue; }
    if (r == -ETIMEDOUT) return 0;
    return luaL_error(L, "select: %s", strerror(-r));
  }
}

/* Mark a connection as used by one process per end (pools' channels). */
static int conn_exclusive(lua_State *L) {
  toconn(L)->c.exclusive = lua_toboolean(L, 2);
  return 0;
}

static const luaL_Reg conn_methods[] = {
  {"_exclusive", conn_exclusive},
  {"send", conn_send}, {"recv", conn_recv},
  {"send_bytes", conn_send_bytes}, {"recv_bytes", conn_recv_bytes},
  {"poll", conn_poll}, {"close", conn_close}, {"closed", conn_closed},
  {"fileno", conn_fileno},
  {NULL, NULL}
};

static void conn_open(lua_State *L) {
  static const luaL_Reg meta[] = {
    {"__gc", conn_close}, {"__tostring", conn_tostring},
    {"__serialize", conn_serialize}, {"__deserialize", conn_deserialize},
    {NULL, NULL}
  };
  pcr__lua_class(L, CONN_MT, conn_methods, NULL, meta);
  lua_pop(L, 1);
}

/* -- Processes -------------------------------------------------------- */

/* The references a child inherited (rings and shared objects), dropped by
** the parent when it reaps the child: a child killed by a signal cannot
** drop them itself. */
typedef struct holds {
  int n, nobj;
  pcr_obj **obj;
  struct { pcr_ring *in, *out; } r[];
} holds;

static void drop_holds(void *arg) {
  holds *h = arg;
  for (int i = 0; i < h->n; i++) pcr__conn_drop(h->r[i].in, h->r[i].out);
  for (int i = 0; i < h->nobj; i++) pcr__obj_unref(h->obj[i]);
  free(h->obj);
  free(h);
}

/* fork(): returns the child's pid in the parent, 0 in the child. The
** parent takes the child's references before forking, so nothing can be
** freed under a child that has not yet counted itself. */
static int l_fork(lua_State *L) {
  int n = 0;
  for (lconn *lc = live; lc; lc = lc->next) n++;
  holds *h = malloc(sizeof *h + (size_t)n * sizeof h->r[0]);
  if (!h) return luaL_error(L, "cannot fork: out of memory");
  h->n = 0;
  h->nobj = pcr__lshared_hold(&h->obj);
  if (h->nobj < 0) {
    free(h);
    return luaL_error(L, "cannot fork: out of memory");
  }
  for (lconn *lc = live; lc; lc = lc->next, h->n++) {
    h->r[h->n].in = lc->c.in;
    h->r[h->n].out = lc->c.out;
    pcr__conn_hold(lc->c.in, lc->c.out);
  }
  pid_t pid = pcr__proc_spawn(drop_holds, h);
  if (pid < 0) {
    drop_holds(h);
    return luaL_error(L, "cannot fork: %s", strerror(-pid));
  }
  if (pid == 0) {
    free(h->obj);
    free(h);
    for (lconn *lc = live; lc; lc = lc->next) lc->c.borrowed = 1;
    pcr__lshared_forked();
  }
  lua_pushinteger(L, pid);
  return 1;
}

/* End a child: flush, drop its references, _exit(code). Never returns. */
static int l_child_exit(lua_State *L) {
  int code = (int)luaL_optinteger(L, 1, 0);
  fflush(NULL);
  while (live) conn_release(live);
  pcr__lshared_exit();
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

/* Raw zeroed arena memory for the pool's own bookkeeping (a lightuserdata
** to cast with ffi); internal, freed with shm_free. */
static int l_shm_alloc(lua_State *L) {
  size_t n = (size_t)luaL_checknumber(L, 1);
  void *p = pcr__shm_alloc(n);
  if (!p) return luaL_error(L, "out of shared arena space (raise PCRUN_ARENA)");
  memset(p, 0, n);
  lua_pushlightuserdata(L, p);
  return 1;
}

static int l_shm_free(lua_State *L) {
  luaL_checktype(L, 1, LUA_TLIGHTUSERDATA);
  pcr__shm_free(lua_touserdata(L, 1));
  return 0;
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
  {"shm_alloc", l_shm_alloc}, {"shm_free", l_shm_free},
  {"default_workers", l_default_workers},
  {"pipe", l_pipe}, {"select", l_select}, {"fork", l_fork}, {"child_exit", l_child_exit},
  {"wait", l_wait}, {"signal", l_signal}, {"is_child", l_is_child},
  {"set_daemon", l_set_daemon}, {"reap_all", l_reap_all},
  {"pid_alive", l_pid_alive}, {"cpu_count", l_cpu_count}, {"now", l_now},
  {"getpid", l_getpid}, {"arena", l_arena},
  {NULL, NULL}
};

PCR_API int luaopen_pcrun_core(lua_State *L) {
  int e = pcr__shm_attach(0);
  if (e < 0)
    return luaL_error(L, "pcrun: cannot map the shared arena: %s "
                         "(check PCRUN_ARENA)", strerror(-e));
  conn_open(L);
  lua_newtable(L);
  luaL_register(L, NULL, core_funcs);
  pcr__ser_open(L);
  pcr__lshared_open(L);
  lua_pushliteral(L, PCR_VERSION_STRING);
  lua_setfield(L, -2, "version");
  luaL_getmetatable(L, CONN_MT);
  lua_setfield(L, -2, "Connection");
  return 1;
}
