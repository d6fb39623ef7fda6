/* The Lua binding of connections (pcrun.pipe's two ends) and select over
** them, on the handle core (lhandle.h): a connection is a handle whose
** state is a pcr_conn (pipe.h). */
#include "lhandle.h"
#include "frame.h"
#include "pipe.h"
#include "proc.h"
#include "ser.h"
#include "shm.h"

#include <errno.h>
#include <fcntl.h>
#include <lauxlib.h>
#include <lua.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/syscall.h>
#include <unistd.h>

#define CONN_MT "pcrun.Connection"

typedef struct lconn {
  pcr_conn c;
  pcr_obj *lend;  /* see "Lent sockets" below; NULL until first sent */
  int remote;     /* values sent are for another node (cluster agents) */
} lconn;

static int K_CONN;

/* -- Lent sockets -------------------------------------------------------
** A receiver that did not inherit a connection's socket copies it from
** the sender's descriptor table (pidfd_getfd), so the sender must keep
** that descriptor until every message carrying it is decoded, even if it
** closes the connection first (Python's send(w); w.close()). Each sent
** connection has a lend object: the sender holds one reference and each
** message in flight one more (taken and rolled back with the message's
** references, dropped by the receiver once it has its copy). Closing
** with messages still in flight defers closing the descriptor; a sweep at
** the next pipe operation closes those whose messages were all taken. */
typedef struct deferred {
  int fd;
  pcr_obj *lend;
} deferred;

static deferred *defer_list;
static int ndefer, capdefer;
static pid_t defer_owner;

static int lend_count(pcr_obj *o) { return (int)atomic_load(&o->refs); }

/* The sender's own reference is in its ledger (a killed sender's reaper
** drops it); the entry's index lives in the object, whose address does
** not move as the reference goes from the handle to the deferred list. */
typedef struct lendobj {
  pcr_obj hdr;
  long lidx;
} lendobj;

static pcr_obj *lend_new(void) {
  long idx;
  lendobj *l = (lendobj *)pcr__frame_obj_new(sizeof(lendobj), PCR_OBJ_LEND,
                                             &idx);
  if (l) l->lidx = idx;  /* the entry's index is ours to keep anywhere */
  return l ? &l->hdr : NULL;
}

static void lend_drop(pcr_obj *o) {
  pcr__frame_obj_drop(o, &((lendobj *)o)->lidx);  /* unrecorded with it */
}

static void sweep(void) {
  if (ndefer == 0) return;
  int keep = 0;
  int forked = defer_owner != getpid();  /* copies a fork left us */
  for (int i = 0; i < ndefer; i++) {
    deferred d = defer_list[i];
    if (forked) { close(d.fd); continue; }
    if (lend_count(d.lend) > 1) { defer_list[keep++] = d; continue; }
    close(d.fd);
    lend_drop(d.lend);
  }
  ndefer = keep;
}

/* Close lc's socket now, or once its messages in flight are taken. */
static void conn_release_fd(lconn *lc) {
  pcr_obj *lend = lc->lend;
  lc->lend = NULL;
  if (!lend) return;
  sweep();
  if (lc->c.fd < 0 || lend_count(lend) <= 1) {
    lend_drop(lend);
    return;
  }
  if (ndefer == capdefer) {
    int cap = capdefer ? 2 * capdefer : 8;
    deferred *p = realloc(defer_list, sizeof *p * (size_t)cap);
    if (!p) { lend_drop(lend); return; }  /* closes now, as before */
    defer_list = p;
    capdefer = cap;
  }
  defer_list[ndefer++] = (deferred){lc->c.fd, lend};
  defer_owner = getpid();
  lc->c.fd = -1;  /* pcr__conn_close must leave it open */
}

/* At exit the descriptors close with the process; the references go. */
void pcr__lconn_exit(void) {
  if (defer_owner == getpid())
    for (int i = 0; i < ndefer; i++) lend_drop(defer_list[i].lend);
  ndefer = 0;
}

/* With lent sockets waiting, a long wait is cut into slices that sweep. */
#define SWEEP_SLICE 0.02
static double slice_deadline(double deadline) {
  if (ndefer == 0) return deadline;
  double s = pcr__now() + SWEEP_SLICE;
  return deadline >= 0 && deadline < s ? deadline : s;
}

static double deadline_arg(lua_State *L, int idx) {
  if (lua_isnoneornil(L, idx)) return -1;
  double t = luaL_checknumber(L, idx);
  luaL_argcheck(L, t == t, idx, "timeout is NaN");
  return pcr__now() + (t < 0 ? 0 : t);
}

static lconn *newconn(lua_State *L) {
  lconn *lc = pcr__handle_extra(pcr__handle_push(L, NULL, K_CONN));
  lc->c.fd = -1;  /* closed until it owns something */
  lc->c.heldidx = -1;
  return lc;
}

/* The connection of the handle at idx (any state), or raise. */
static lconn *checkconn(lua_State *L, int idx) {
  return pcr__handle_extra(luaL_checkudata(L, idx, CONN_MT));
}

static lconn *toconn(lua_State *L) {
  lconn *lc = checkconn(L, 1);
  if (lc->c.fd < 0) luaL_error(L, "attempt to use a closed connection");
  return lc;
}

static int l_pipe(lua_State *L) {
  int duplex = lua_isnoneornil(L, 1) ? 1 : lua_toboolean(L, 1);
  size_t cap = (size_t)luaL_optnumber(L, 2, (lua_Number)PCR_RING_DEFAULT);
  lconn *a = newconn(L), *b = newconn(L);
  /* Recorded from the rings' allocation on, at the handles' entries. */
  long *ai = ((pcr_handle *)lua_touserdata(L, -2))->lidx;
  long *bi = ((pcr_handle *)lua_touserdata(L, -1))->lidx;
  int e = pcr__pipe_open(&a->c, &b->c, duplex, cap, ai, bi);
  if (e == -ENOSPC && pcr__lua_collect(L))
    e = pcr__pipe_open(&a->c, &b->c, duplex, cap, ai, bi);
  if (e == -ENOSPC)
    return pcr__handle_nospace(L, "pcrun.pipe");
  if (e < 0)
    return luaL_error(L, "pcrun.pipe: cannot create pipe: %s", strerror(-e));
  return 2;
}

/* Send one frame with the references the message being encoded took;
** whatever the outcome but success, they are rolled back here. */
static int sendframe(lua_State *L, lconn *lc, unsigned kind, const char *p,
                     size_t n, double deadline, const char *who) {
  sweep();
  const uint64_t *refs;
  size_t nrefs = pcr__msg_refs(&refs);
  for (;;) {
    int e = pcr__conn_send(&lc->c, kind, p, n, refs, nrefs, deadline);
    if (e == 0) {
      pcr__msg_end(1);
      return 0;
    }
    if (e == -EINTR) {
      if (pcr__lua_sigint(L)) pcr__msg_end(0);  /* about to raise */
      pcr__lua_interrupted(L);
      continue;
    }
    pcr__msg_end(0);
    if (e == -ETIMEDOUT) {
      lua_pushnil(L);
      lua_pushliteral(L, "timeout");
      return 2;
    }
    if (e == -EPIPE)
      return pcr__lua_raise(L, "closed", "%s: peer closed the connection",
                            who);
    if (e == -EBADF) return luaL_error(L, "%s: connection is not writable", who);
    if (e == -EMSGSIZE)
      return luaL_error(L, "%s: too many handles in one message for this "
                           "pipe's buffer", who);
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
    p = pcr__msg_encode(L, 2, &n, "message", lc->remote);
    kind = PCR_FRAME_VALUE;
  }
  int r = sendframe(L, lc, kind, p, n, deadline, "send");
  if (r) return r;
  lua_pushboolean(L, 1);
  return 1;
}

/* The address of the ffi buffer at idx (a pointer or an array) and its
** size in bytes, or -1 for a pointer (its size is the caller's word). */
static char *cdata_buf(lua_State *L, int idx, const char *who,
                       const char *what, lua_Number *cap) {
  static int K_CDATA_BUF;
  lua_pushlightuserdata(L, &K_CDATA_BUF);
  lua_rawget(L, LUA_REGISTRYINDEX);
  if (lua_isnil(L, -1)) {
    lua_pop(L, 1);
    if (luaL_loadstring(L,
          "local ffi = require 'ffi'\n"
          "return function(b)\n"
          "  if type(b) ~= 'cdata' then return nil end\n"
          "  local t = tostring(ffi.typeof(b))\n"
          "  local arr = t:find('[', 1, true)\n"
          "  if not arr and not t:find('*', 1, true) then return nil end\n"
          "  local ok, p = pcall(ffi.cast, 'char *', b)\n"
          "  if not ok or p == nil then return nil end\n"
          "  return p, arr and ffi.sizeof(b) or -1\n"
          "end") || lua_pcall(L, 0, 1, 0))
      lua_error(L);
    lua_pushlightuserdata(L, &K_CDATA_BUF);
    lua_pushvalue(L, -2);
    lua_rawset(L, LUA_REGISTRYINDEX);
  }
  lua_pushvalue(L, idx);
  lua_call(L, 1, 2);
  if (lua_isnil(L, -2))
    luaL_error(L, "%s: buf must be %s, got %s", who, what,
               luaL_typename(L, idx));
  char *p = *(char *const *)lua_topointer(L, -2);
  *cap = lua_tonumber(L, -1);
  lua_pop(L, 2);
  return p;
}

static size_t size_arg(lua_State *L, int idx, const char *who,
                       const char *name) {
  lua_Number v = lua_tonumber(L, idx);
  if (lua_type(L, idx) != LUA_TNUMBER || !(v >= 0 && v <= 0x1p53) ||
      v != (lua_Number)(size_t)v)
    luaL_error(L, "%s: %s must be a non-negative integer", who, name);
  return (size_t)v;
}

/* send_bytes(s [, timeout]), or Python's send_bytes(buf, offset, size
** [, timeout]) with buf a string or an ffi buffer. */
static int conn_send_bytes(lua_State *L) {
  lconn *lc = toconn(L);
  size_t n;
  const char *p;
  int tidx = 3;
  if (lua_gettop(L) >= 4) {
    const char *who = "pcrun.Connection:send_bytes";
    size_t off = size_arg(L, 3, who, "offset");
    size_t size = size_arg(L, 4, who, "size");
    lua_Number cap;
    if (lua_type(L, 2) == LUA_TSTRING) {
      p = lua_tolstring(L, 2, &n);
      cap = (lua_Number)n;
    } else {
      p = cdata_buf(L, 2, who, "a string or an ffi pointer or array", &cap);
    }
    if (cap >= 0 && (lua_Number)off + (lua_Number)size > cap)
      return luaL_error(L, "%s: offset + size (%f) is past the end of buf "
                           "(%f bytes)", who, (double)off + (double)size,
                        (double)cap);
    p += off;
    n = size;
    tidx = 5;
  } else {
    p = luaL_checklstring(L, 2, &n);
  }
  pcr__msg_begin();
  int r = sendframe(L, lc, PCR_FRAME_BYTES, p, n, deadline_arg(L, tidx),
                    "send_bytes");
  if (r) return r;
  lua_pushboolean(L, 1);
  return 1;
}

static unsigned lastkind;  /* the kind of the frame recvframe received */

/* Receive one frame; pushes it (decoded unless raw) or nil, "timeout". */
static int recvframe(lua_State *L, int raw, const char *who) {
  lconn *lc = toconn(L);
  double deadline = deadline_arg(L, 2);
  unsigned kind;
  const char *p;
  size_t n, mark = pcr__taken_mark();
  for (;;) {
    sweep();
    double d = slice_deadline(deadline);
    int e = pcr__conn_recv(&lc->c, &kind, &p, &n, d);
    if (e == 0) break;
    if (e == -EINTR) { pcr__lua_interrupted(L); continue; }
    if (e == -ETIMEDOUT && d != deadline) continue;
    if (e == -ETIMEDOUT) {
      lua_pushnil(L);
      lua_pushliteral(L, "timeout");
      return 2;
    }
    if (e == -EPIPE)
      return pcr__lua_raise(L, "eof", "%s: end of file: peer closed", who);
    if (e == -EBADF) return luaL_error(L, "%s: connection is not readable", who);
    return luaL_error(L, "%s: %s", who, strerror(-e));
  }
  lastkind = kind;
  if (raw || kind != PCR_FRAME_VALUE) {
    lua_pushlstring(L, p, n);
    pcr__taken_end(mark);
  } else {
    pcr__msg_decode(L, p, n, mark);
  }
  pcr__conn_done(&lc->c);
  return 1;
}

static int conn_recv(lua_State *L) { return recvframe(L, 0, "recv"); }

/* recv_bytes_into(buf, size [, timeout]): Python's recv_bytes_into, into
** an ffi buffer with room for size bytes (buf + offset for an offset).
** Returns the message's length; a longer message comes back whole as
** nil, "buffer too short", message rather than being lost. */
static int conn_recv_bytes_into(lua_State *L) {
  const char *who = "pcrun.Connection:recv_bytes_into";
  toconn(L);
  lua_Number cap;
  char *buf = cdata_buf(L, 2, who, "an ffi pointer or array", &cap);
  size_t room = size_arg(L, 3, who, "size");
  if (cap >= 0 && (lua_Number)room > cap)
    return luaL_error(L, "%s: size (%f) is larger than buf (%f bytes)", who,
                      (double)room, (double)cap);
  lua_remove(L, 2);  /* recvframe reads the timeout at 2 */
  lua_remove(L, 2);
  int r = recvframe(L, 1, "recv_bytes_into");
  if (r == 2) return 2;  /* nil, "timeout" */
  size_t n;
  const char *p = lua_tolstring(L, -1, &n);
  if (n > room) {
    lua_pushnil(L);
    lua_pushliteral(L, "buffer too short");
    lua_pushvalue(L, -3);
    return 3;
  }
  memcpy(buf, p, n);
  lua_pushnumber(L, (lua_Number)n);
  return 1;
}
static int conn_recv_bytes(lua_State *L) {
  return recvframe(L, 1, "recv_bytes");
}

static int conn_poll(lua_State *L) {
  lconn *lc = toconn(L);
  double deadline = lua_isnoneornil(L, 2) ? pcr__now() : deadline_arg(L, 2);
  for (;;) {
    sweep();
    double d = slice_deadline(deadline);
    int e = pcr__conn_poll(&lc->c, d);
    if (e == -EINTR) { pcr__lua_interrupted(L); continue; }
    if (e == 0 && d != deadline) continue;
    if (e == -EBADF) return luaL_error(L, "poll: connection is not readable");
    lua_pushboolean(L, e > 0);
    return 1;
  }
}

static int conn_close(lua_State *L) {
  checkconn(L, 1);
  pcr__handle_release(lua_touserdata(L, 1));
  return 0;
}

static int conn_closed(lua_State *L) {
  lconn *lc = checkconn(L, 1);
  lua_pushboolean(L, lc->c.fd < 0);
  return 1;
}

static int conn_fileno(lua_State *L) {
  lua_pushinteger(L, toconn(L)->c.fd);
  return 1;
}

static int conn_tostring(lua_State *L) {
  lconn *lc = checkconn(L, 1);
  lua_pushfstring(L, "pcrun.Connection (%s%s%s): %p",
                  lc->c.fd < 0 ? "closed" : lc->c.in ? "r" : "",
                  lc->c.fd >= 0 && lc->c.out ? "w" : "", "", (void *)lc);
  return 1;
}

/* Crossing a process boundary: the rings go by offset with one reference
** held for the receiver; the socket by (pid, fd, inode), which the
** receiver finds in its own table (inherited through fork) or copies from
** the sender with pidfd_getfd; lend (in a message) keeps the sender's
** descriptor open until then. */
typedef struct wireconn {
  uint64_t in, out, ino, lend;
  int32_t pid, fd;
} wireconn;

static int conn_serialize(lua_State *L) {
  lconn *lc = toconn(L);
  struct stat st;
  sweep();
  if (fstat(lc->c.fd, &st) < 0) return luaL_error(L, "%s", strerror(errno));
  wireconn w = {lc->c.in ? pcr__shm_offset(lc->c.in) : 0,
                lc->c.out ? pcr__shm_offset(lc->c.out) : 0,
                (uint64_t)st.st_ino, 0, (int32_t)getpid(), lc->c.fd};
  int msg = pcr__ser_hookflags(L, 2) & PCR_SER_MSG;
  if (msg) {
    if (!lc->lend) {
      lc->lend = lend_new();
      if (!lc->lend) return luaL_error(L, "out of shared arena space");
    }
    if (pcr__msg_ref(lc->lend, PCR_REF_PLAIN) < 0) return luaL_error(L, "out of memory");
    w.lend = pcr__shm_offset(lc->lend);
  }
  /* In a message the receiver adopts a hold; pcrun.encode's output may be
  ** decoded many times or never, so each decode takes its own. */
  if (msg &&
      ((lc->c.in && pcr__msg_ref(&lc->c.in->hdr, PCR_REF_READER) < 0) ||
       (lc->c.out && pcr__msg_ref(&lc->c.out->hdr, PCR_REF_WRITER) < 0)))
    return luaL_error(L, "out of memory");
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
  int how = pcr__ser_hookflags(L, 2), msg = how & PCR_SER_MSG;
  if (!how)
    return luaL_error(L, "pcrun.decode: a connection in untrusted input "
                         "(decode with { trusted = true })");
  pcr_ring *in = ringat(w.in), *out = ringat(w.out);
  int fd = -1, err = 0;
  const char *why = NULL;
  if (samesock(w.fd, w.ino)) {
    fd = fcntl(w.fd, F_DUPFD_CLOEXEC, 0);
    if (fd < 0) err = errno, why = "cannot copy its socket";
  } else {
    int pfd = pcr__pidfd_open(w.pid);
    if (pfd < 0) {
      err = errno;
      why = err == ESRCH ? "its sender has ended, and its socket with it"
                         : "cannot reach its sender";
    } else {
      fd = (int)syscall(SYS_pidfd_getfd, pfd, w.fd, 0);
      if (fd < 0) err = errno;
      close(pfd);
      if (fd >= 0 && !samesock(fd, w.ino)) { close(fd); fd = -1; err = 0; }
      if (fd < 0)
        why = err == EPERM || err == EACCES
                  ? "the kernel does not let this process copy its socket "
                    "from its sender (pidfd_getfd)"
                  : "its sender no longer holds its socket (it was closed "
                    "before this copy was decoded)";
    }
  }
  /* The sender may close its descriptor now (the message's reference to
  ** its lend, adopted here). */
  if (w.lend && msg) {
    pcr_obj *lend = pcr__shm_at(w.lend, sizeof(pcr_obj));
    long li;
    if (lend && lend->magic == PCR_OBJ_MAGIC && lend->type == PCR_OBJ_LEND) {
      if (pcr__taken_adopt(w.lend | PCR_REF_PLAIN, &li) < 0 || li < 0)
        pcr__obj_unref(lend);
      else
        pcr__ledger_drop(&li);
    }
  }
  if ((w.in && !in) || (w.out && !out)) {
    if (fd >= 0) close(fd);
    return luaL_error(L, "pcrun.Connection: its buffers are gone");
  }
  if (fd < 0) {
    if (err)
      return luaL_error(L, "pcrun.Connection: cannot receive it from "
                           "process %d: %s (%s)", (int)w.pid, why,
                        strerror(err));
    return luaL_error(L, "pcrun.Connection: cannot receive it from process "
                         "%d: %s", (int)w.pid, why);
  }
  lconn *lc = newconn(L);
  pcr_handle *h = lua_touserdata(L, -1);
  lc->c.in = in;
  lc->c.out = out;
  lc->c.fd = fd;
  /* The message's references become the handle's (their ledger entries
  ** with them); outside a message, it takes its own. */
  int k = 0, all = msg;
  if (in && all) all = pcr__taken_adopt(w.in | PCR_REF_READER,
                                        &h->lidx[k++]) == 0;
  if (out && all) all = pcr__taken_adopt(w.out | PCR_REF_WRITER,
                                         &h->lidx[k]) == 0;
  if (!msg) {
    k = 0;
    if (in) pcr__ledger_take(&in->hdr, PCR_REF_READER, &h->lidx[k++]);
    if (out) pcr__ledger_take(&out->hdr, PCR_REF_WRITER, &h->lidx[k]);
  } else if (!all) {  /* a frame that does not list them: as before */
    pcr__ledger_remove(&h->lidx[0]);
    pcr__ledger_remove(&h->lidx[1]);
    pcr__handle_own(h);
  }
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
    pcr_handle *h = luaL_testudata(L, -1, CONN_MT);
    lconn *lc = h ? pcr__handle_extra(h) : NULL;
    if (!lc || lc->c.fd < 0 || !lc->c.in)
      return luaL_error(L, "select: item %d is not an open readable "
                           "connection", i + 1);
    cs[i] = &lc->c;
    lua_pop(L, 1);
  }
  for (;;) {
    sweep();
    double d = slice_deadline(deadline);
    int r = pcr__conn_select(cs, n, d, spin);
    if (r >= 0) { lua_pushinteger(L, r + 1); return 1; }
    if (r == -EINTR) { pcr__lua_interrupted(L); continue; }
    if (r == -ETIMEDOUT && d != deadline) continue;
    if (r == -ETIMEDOUT) return 0;
    return luaL_error(L, "select: %s", strerror(-r));
  }
}

/* Raw frames, for a cluster agent that relays its workers' messages over
** MPI without decoding them: _recv_raw([timeout]) gives the payload and
** its frame kind (nil, "timeout" on timeout); _send_raw(kind, payload)
** sends a frame carrying no references. _remote(on): values this end
** sends are for another node, so arena handles are refused. */
static int conn_recv_raw(lua_State *L) {
  int r = recvframe(L, 1, "recv");
  if (r == 2) return 2;
  lua_pushinteger(L, lastkind);
  return 2;
}

/* Set by mpi.c when built: resolves the light userdata its recv("view")
** returns to the bytes in its receive buffer (-1: not a live view). */
int (*pcr__raw_view)(const void *key, const char **p, size_t *n);

static int conn_send_raw(lua_State *L) {
  lconn *lc = toconn(L);
  lua_Integer kind = luaL_checkinteger(L, 2);
  size_t n;
  const char *p;
  if (lua_type(L, 3) == LUA_TLIGHTUSERDATA) {
    if (!pcr__raw_view || pcr__raw_view(lua_touserdata(L, 3), &p, &n) < 0)
      return luaL_argerror(L, 3, "not a live MPI view");
  } else {
    p = luaL_checklstring(L, 3, &n);
  }
  luaL_argcheck(L, kind == PCR_FRAME_VALUE || kind == PCR_FRAME_BYTES ||
                kind == PCR_FRAME_STRING, 2, "not a frame kind");
  pcr__msg_begin();
  int r = sendframe(L, lc, (unsigned)kind, p, n, deadline_arg(L, 4),
                    "send");
  if (r) return r;
  lua_pushboolean(L, 1);
  return 1;
}

static int conn_remote(lua_State *L) {
  toconn(L)->remote = lua_toboolean(L, 2);
  return 0;
}

/* Mark a connection as used by one process per end (pools' channels). */
static int conn_exclusive(lua_State *L) {
  toconn(L)->c.exclusive = lua_toboolean(L, 2);
  return 0;
}

static const luaL_Reg conn_methods[] = {
  {"_exclusive", conn_exclusive}, {"_recv_raw", conn_recv_raw},
  {"_send_raw", conn_send_raw}, {"_remote", conn_remote},
  {"send", conn_send}, {"recv", conn_recv},
  {"send_bytes", conn_send_bytes}, {"recv_bytes", conn_recv_bytes},
  {"recv_bytes_into", conn_recv_bytes_into},
  {"poll", conn_poll}, {"close", conn_close}, {"closed", conn_closed},
  {"fileno", conn_fileno},
  {NULL, NULL}
};

static void c_release(pcr_handle *h) {
  lconn *lc = pcr__handle_extra(h);
  conn_release_fd(lc);
  pcr__conn_close(&lc->c, h->lidx);
}

/* The ring references this end owns: none in a forked copy, whose rings
** the parent holds until it reaps it. */
static int c_refs(pcr_handle *h, uint64_t out[2]) {
  pcr_conn *c = &((lconn *)pcr__handle_extra(h))->c;
  int n = 0;
  if (c->borrowed || c->fd < 0) return 0;
  if (c->in) out[n++] = pcr__shm_offset(c->in) | PCR_REF_READER;
  if (c->out) out[n++] = pcr__shm_offset(c->out) | PCR_REF_WRITER;
  return n;
}

/* A forked copy's rings are held by the parent until it reaps it; its
** lend is the parent's, and so are the sockets the parent defers. */
static void c_forked(pcr_handle *h) {
  lconn *lc = pcr__handle_extra(h);
  lc->c.borrowed = 1;
  lc->lend = NULL;
  lc->c.held = NULL;  /* the parent's block, the parent's to free */
  lc->c.heldidx = -1;
  sweep();
}

static void drop_reader(pcr_obj *o) { pcr__conn_drop((pcr_ring *)o, NULL); }
static void drop_writer(pcr_obj *o) { pcr__conn_drop(NULL, (pcr_ring *)o); }

static int c_hold(pcr_handle *h, int (*add)(pcr_obj *, pcr_hold_fn)) {
  pcr_conn *c = &((lconn *)pcr__handle_extra(h))->c;
  if (c->fd < 0) return 0;
  if (c->in) {
    if (add(&c->in->hdr, drop_reader) < 0) return -1;
    pcr__shm_count(&c->in->readers, 1);  /* add took the reference */
  }
  if (c->out) {
    if (add(&c->out->hdr, drop_writer) < 0) return -1;
    pcr__shm_count(&c->out->writers, 1);
  }
  return 0;
}

void pcr__lconn_open(lua_State *L) {
  static const luaL_Reg fns[] = {
    {"pipe", l_pipe}, {"select", l_select}, {NULL, NULL}
  };
  pcr_hkind k = { CONN_MT, conn_methods, NULL, sizeof(lconn), -1,
                  c_release, c_forked, c_hold, NULL, NULL, c_refs,
                  conn_serialize, conn_deserialize };
  K_CONN = pcr__handle_register(L, &k);
  luaL_getmetatable(L, CONN_MT);
  lua_pushcfunction(L, conn_tostring);
  lua_setfield(L, -2, "__tostring");
  lua_pushcfunction(L, conn_close);
  lua_setfield(L, -2, "__gc");
  lua_setfield(L, -2, "Connection");
  luaL_register(L, NULL, fns);
}
