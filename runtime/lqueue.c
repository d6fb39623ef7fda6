/* The Lua binding of queues (pcrun.queue, pcrun.joinable_queue) and
** their ffi fast path, on the handle core (lhandle.h). */
#include "lhandle.h"
#include "frame.h"
#include "queue.h"
#include "ser.h"

#include <errno.h>
#include <lauxlib.h>
#include <lua.h>
#include <stdlib.h>
#include <string.h>

static int K_QUEUE, K_JQUEUE;

/* A queue handle keeps the receive buffer of its last get. */
#define QM(h) ((pcr_qmsg *)pcr__handle_extra(h))

static int l_queue(lua_State *L) {
  int64_t maxsize = (int64_t)luaL_optnumber(L, 1, 0);
  int joinable = lua_toboolean(L, 2);
  pcr_handle *h = pcr__handle_push(L, NULL, joinable ? K_JQUEUE : K_QUEUE);
  pcr_queue *q = pcr__queue_new(maxsize, &h->lidx[0]);
  if (!q && pcr__lua_collect(L)) q = pcr__queue_new(maxsize, &h->lidx[0]);
  if (!q) {
    pcr__handle_release(h);
    return pcr__handle_nospace(L, joinable ? "pcrun.joinable_queue"
                                           : "pcrun.queue");
  }
  q->hdr.flags = joinable;  /* puts count unfinished tasks */
  h->o = &q->hdr;
  return 1;
}

typedef struct putctx {
  pcr_queue *q;
  unsigned kind;
  const char *p;
  size_t n;
  const uint64_t *refs;
  size_t nrefs;
} putctx;

static int putop(void *ctx, double d, int first) {
  putctx *c = ctx;
  (void)first;
  return pcr__queue_put(c->q, c->kind, c->p, c->n, c->refs, c->nrefs, d);
}

static int q_put_(lua_State *L, int nowait, const char *m) {
  pcr_handle *h = pcr__handle_check(L, K_QUEUE, m);
  pcr_queue *q = (pcr_queue *)h->o;
  luaL_checkany(L, 2);
  double deadline = nowait ? 0 : pcr__handle_timeout(L, 3, K_QUEUE, m);
  size_t n;
  const char *p;
  unsigned kind = PCR_QF_STRING;
  lua_Number num;
  pcr__msg_begin();
  switch (lua_type(L, 2)) {
  case LUA_TSTRING: p = lua_tolstring(L, 2, &n); break;
  case LUA_TNUMBER:
    num = lua_tonumber(L, 2);
    p = (const char *)&num;
    n = sizeof num;
    kind = PCR_QF_NUMBER;
    break;
  case LUA_TBOOLEAN:
    kind = lua_toboolean(L, 2) ? PCR_QF_TRUE : PCR_QF_FALSE;
    p = "";
    n = 0;
    break;
  case LUA_TNIL: kind = PCR_QF_NIL; p = ""; n = 0; break;
  default:
    p = pcr__msg_encode(L, 2, &n, "value", 0);
    kind = PCR_QF_VALUE;
  }
  putctx c = { q, kind, p, n, NULL, 0 };
  c.nrefs = pcr__msg_refs(&c.refs);
  int e = pcr__lua_blocking(L, deadline, 1, putop, &c);
  /* Out of arena: collect and try again, unless the frame carries
  ** references (a finalizer that sends would end our transaction). */
  if (e == -ENOSPC && c.nrefs == 0 && pcr__lua_collect(L))
    e = pcr__lua_blocking(L, deadline, 1, putop, &c);
  if (e) {
    pcr__msg_end(0);  /* not sent: its references go */
    if (e == -ETIMEDOUT) {
      if (nowait) return luaL_error(L, "%s: queue is full", pcr__handle_who(L, K_QUEUE, m));
      lua_pushnil(L);
      lua_pushliteral(L, "timeout");
      return 2;
    }
    if (e == -EPIPE)
      return pcr__lua_raise(L, "closed", "%s: queue is closed",
                            pcr__handle_who(L, K_QUEUE, m));
    if (e == -ENOSPC) return pcr__handle_nospace(L, pcr__handle_who(L, K_QUEUE, m));
    return luaL_error(L, "%s: %s", pcr__handle_who(L, K_QUEUE, m), strerror(-e));
  }
  pcr__msg_end(1);
  lua_pushboolean(L, 1);
  return 1;
}

static int q_put(lua_State *L) { return q_put_(L, 0, "put"); }
static int q_put_nowait(lua_State *L) { return q_put_(L, 1, "put_nowait"); }

typedef struct getctx {
  pcr_queue *q;
  pcr_qmsg *m;
  int nowait;
} getctx;

static int getop(void *ctx, double d, int first) {
  getctx *c = ctx;  /* spin before sleeping, unless a mere try */
  return pcr__queue_get(c->q, c->m, d, first || c->nowait ? 0 : 100e-6);
}

static int q_get_(lua_State *L, int nowait, const char *m) {
  pcr_handle *h = pcr__handle_check(L, K_QUEUE, m);
  pcr_queue *q = (pcr_queue *)h->o;
  double deadline = nowait ? 0 : pcr__handle_timeout(L, 2, K_QUEUE, m);
  pcr__ledger_free(QM(h)->blk, &QM(h)->blkidx);
  QM(h)->blk = NULL;
  size_t mark = pcr__taken_mark();
  getctx c = { q, QM(h), nowait };
  int e = pcr__lua_blocking(L, deadline, 1, getop, &c);
  if (e) {
    if (e == -ETIMEDOUT) {
      if (nowait) return luaL_error(L, "%s: queue is empty", pcr__handle_who(L, K_QUEUE, m));
      lua_pushnil(L);
      lua_pushliteral(L, "timeout");
      return 2;
    }
    if (e == -EPIPE)
      return pcr__lua_raise(L, "eof", "%s: queue is closed and empty",
                            pcr__handle_who(L, K_QUEUE, m));
    return luaL_error(L, "%s: %s", pcr__handle_who(L, K_QUEUE, m), strerror(-e));
  }
  switch (QM(h)->kind) {
  case PCR_QF_STRING: lua_pushlstring(L, QM(h)->p, QM(h)->n); break;
  case PCR_QF_NUMBER: {
    lua_Number num;
    memcpy(&num, QM(h)->p, sizeof num);
    lua_pushnumber(L, num);
    break;
  }
  case PCR_QF_TRUE: case PCR_QF_FALSE:
    lua_pushboolean(L, QM(h)->kind == PCR_QF_TRUE);
    break;
  case PCR_QF_NIL: lua_pushnil(L); break;
  default:
    pcr__msg_decode(L, QM(h)->p, QM(h)->n, mark);
  }
  pcr__taken_end(mark);  /* a frame of another kind carries none */
  pcr__ledger_free(QM(h)->blk, &QM(h)->blkidx);  /* decoded: done with */
  QM(h)->blk = NULL;
  return 1;
}

static int q_get(lua_State *L) { return q_get_(L, 0, "get"); }
static int q_get_nowait(lua_State *L) { return q_get_(L, 1, "get_nowait"); }

static int q_qsize(lua_State *L) {
  pcr_queue *q = (pcr_queue *)pcr__handle_check(L, K_QUEUE, "qsize")->o;
  lua_pushnumber(L, (lua_Number)pcr__queue_size(q));
  return 1;
}

static int q_empty(lua_State *L) {
  pcr_queue *q = (pcr_queue *)pcr__handle_check(L, K_QUEUE, "empty")->o;
  lua_pushboolean(L, pcr__queue_size(q) == 0);
  return 1;
}

static int q_full(lua_State *L) {
  pcr_queue *q = (pcr_queue *)pcr__handle_check(L, K_QUEUE, "full")->o;
  lua_pushboolean(L, q->maxsize && pcr__queue_size(q) >= q->maxsize);
  return 1;
}

static int q_maxsize(lua_State *L) {
  pcr_queue *q = (pcr_queue *)pcr__handle_check(L, K_QUEUE, "maxsize")->o;
  if (q->maxsize) lua_pushnumber(L, (lua_Number)q->maxsize);
  else lua_pushnil(L);
  return 1;
}

static int q_close(lua_State *L) {
  pcr__queue_close((pcr_queue *)pcr__handle_check(L, K_QUEUE, "close")->o);
  return 0;
}

static int q_closed(lua_State *L) {
  pcr_queue *q = (pcr_queue *)pcr__handle_check(L, K_QUEUE, "closed")->o;
  lua_pushboolean(L, atomic_load(&q->closed));
  return 1;
}

static int q_task_done(lua_State *L) {
  pcr_queue *q = (pcr_queue *)pcr__handle_check(L, K_JQUEUE, "task_done")->o;
  if (pcr__queue_task_done(q) < 0)
    return luaL_error(L, "pcrun.JoinableQueue:task_done: called more times "
                         "than there were items");
  return 0;
}

static int joinop(void *q, double d, int first) {
  (void)first;
  return pcr__queue_join(q, d);
}

static int q_join(lua_State *L) {
  pcr_queue *q = (pcr_queue *)pcr__handle_check(L, K_JQUEUE, "join")->o;
  double deadline = pcr__handle_timeout(L, 2, K_JQUEUE, "join");
  lua_pushboolean(L, pcr__lua_blocking(L, deadline, 0, joinop, q) == 0);
  return 1;
}
/* Queues, numbers only: put never waits, get takes a number frame that is
** ready. Anything else (full, empty, closed, another kind, a block of
** the last get still held) is the C methods' job. */
static pcr_queue *fastqueue(void *p) {
  pcr_handle *h = p;
  if (!h || h->magic != PCR_HANDLE_MAGIC || !h->open ||
      (h->kind != K_QUEUE && h->kind != K_JQUEUE) || QM(h)->blk)
    return NULL;
  return (pcr_queue *)h->o;
}

static int f_qput(void *p, double v) {
  pcr_queue *q = fastqueue(p);
  return q ? pcr__queue_put(q, PCR_QF_NUMBER, &v, sizeof v, NULL, 0, 0)
           : -EBADF;
}

static int f_qget(void *p, double *v) {
  pcr_queue *q = fastqueue(p);
  return q ? pcr__queue_get_number(q, v) : -EBADF;
}

static const luaL_Reg queue_m[] = {
  {"put", q_put}, {"get", q_get}, {"put_nowait", q_put_nowait},
  {"get_nowait", q_get_nowait}, {"qsize", q_qsize}, {"empty", q_empty},
  {"full", q_full}, {"close", q_close}, {"closed", q_closed},
  {"maxsize", q_maxsize}, {NULL, NULL}
};
static const luaL_Reg jqueue_m[] = {
  {"task_done", q_task_done}, {"join", q_join}, {NULL, NULL}
};

static void q_release(pcr_handle *h) {
  pcr__ledger_free(QM(h)->blk, &QM(h)->blkidx);
  free(QM(h)->buf);
  memset(QM(h), 0, sizeof(pcr_qmsg));
}

static void q_forked(pcr_handle *h) {
  QM(h)->blk = NULL;  /* the parent's to free */
  QM(h)->buf = NULL;  /* a copy of the parent's heap: leave it */
  QM(h)->bufcap = 0;
}

static int q_ready(pcr_handle *h) {
  return pcr__queue_ready((pcr_queue *)h->o);
}

static pcr_waitq *q_waitq(pcr_handle *h) {
  return &((pcr_queue *)h->o)->getq;
}

/* Used by the ffi fast path (lsync.c pushes the table). */
void pcr__lqueue_fast(lua_State *L) {
  lua_pushlightuserdata(L, (void *)(uintptr_t)f_qput);
  lua_setfield(L, -2, "qput");
  lua_pushlightuserdata(L, (void *)(uintptr_t)f_qget);
  lua_setfield(L, -2, "qget");
}

void pcr__lqueue_open(lua_State *L) {
  static const luaL_Reg fns[] = { {"queue", l_queue}, {NULL, NULL} };
  pcr_hkind k = { "pcrun.Queue", queue_m, NULL, sizeof(pcr_qmsg), -1,
                  q_release, q_forked, NULL, q_ready, q_waitq, NULL, NULL, NULL };
  pcr__queue_init();
  K_QUEUE = pcr__handle_register(L, &k);
  k.name = "pcrun.JoinableQueue";
  k.more = jqueue_m;
  k.base = K_QUEUE;
  K_JQUEUE = pcr__handle_register(L, &k);
  luaL_register(L, NULL, fns);
}
