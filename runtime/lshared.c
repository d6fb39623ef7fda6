/* The Lua binding of the arena's shared objects: queues, locks and the
** other synchronization objects, shared arrays and values. A handle is a
** userdata holding one reference; it crosses a process boundary by offset
** (in a queue item or a pipe message with a reference for the receiver),
** and every handle of this process sits on a list so that fork can take
** the child's references. */
#include "array.h"
#include "lshared.h"
#include "proc.h"
#include "queue.h"
#include "ser.h"
#include "ser_int.h"
#include "sync.h"

#include <errno.h>
#include <lauxlib.h>
#include <lua.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

typedef struct lobj {
  pcr_obj *o;
  uint32_t magic;             /* LOBJ_MAGIC: a handle of this file */
  int kind;                   /* K_* */
  uint32_t owner;             /* the process whose reference this is */
  struct lobj *prev, *next;   /* live handles of this process */
  pcr_qmsg m;                 /* queues: receive buffer */
} lobj;

#define LOBJ_MAGIC 0x6a624f50u

static lobj *live;

/* Metatable names, by kind; the user-facing name follows "pcrun.". */
enum { K_QUEUE, K_JQUEUE, K_LOCK, K_RLOCK, K_SEM, K_BSEM, K_EVENT, K_COND,
       K_BARRIER, K_REF, K_N };
static const char *const kname[K_N] = {
  "pcrun.Queue", "pcrun.JoinableQueue", "pcrun.Lock", "pcrun.RLock",
  "pcrun.Semaphore", "pcrun.BoundedSemaphore", "pcrun.Event",
  "pcrun.Condition", "pcrun.Barrier", "pcrun.ObjRef"
};

static void link_obj(lobj *h) {
  h->prev = NULL;
  h->next = live;
  if (live) live->prev = h;
  live = h;
}

static void unlink_obj(lobj *h) {
  if (h->prev) h->prev->next = h->next;
  else if (live == h) live = h->next;
  if (h->next) h->next->prev = h->prev;
  h->prev = h->next = NULL;
}

static void release(lobj *h) {
  if (!h->o) return;
  unlink_obj(h);
  if (h->m.blk) pcr__shm_free(h->m.blk);
  free(h->m.buf);
  h->m.blk = h->m.buf = NULL;
  h->m.bufcap = 0;
  if (h->owner == pcr__self()) pcr__obj_unref(h->o);
  h->o = NULL;
}

/* -- Messages --------------------------------------------------------- */

static pcr_obj **pend;  /* references taken by the message being encoded */
static int npend, cappend;

void pcr__msg_end(int sent) {
  if (!sent)
    for (int i = 0; i < npend; i++) pcr__obj_unref(pend[i]);
  npend = 0;
}

void pcr__msg_begin(void) {
  pcr__msg_end(0);  /* an encode that raised left its references here */
}

/* The arena offsets of the objects the message being encoded carries. */
static size_t msg_refs(const uint64_t **out) {
  static uint64_t *offs;
  static int cap;
  if (npend > cap) {
    uint64_t *p = realloc(offs, sizeof *p * (size_t)npend);
    if (!p) {  /* without the list a freed queue would leak them: rare */
      *out = NULL;
      return 0;
    }
    offs = p;
    cap = npend;
  }
  for (int i = 0; i < npend; i++) offs[i] = pcr__shm_offset(pend[i]);
  *out = offs;
  return (size_t)npend;
}

/* A reference for the message being encoded, dropped if it is not sent.
** Returns 0, or -1 out of memory (nothing taken). */
static int msg_ref(pcr_obj *o) {
  if (npend == cappend) {
    int cap = cappend ? 2 * cappend : 16;
    pcr_obj **p = realloc(pend, sizeof *p * (size_t)cap);
    if (!p) return -1;
    pend = p;
    cappend = cap;
  }
  pcr__obj_ref(o);
  pend[npend++] = o;
  return 0;
}

int pcr__lshared_hold(pcr_obj ***out) {
  size_t n = 0;
  for (lobj *h = live; h; h = h->next) n++;
  pcr_obj **v = malloc(sizeof *v * (n + 1));
  if (!v) return -1;
  int k = 0;
  for (lobj *h = live; h; h = h->next) {
    pcr__obj_ref(h->o);
    v[k++] = h->o;
  }
  *out = v;
  return k;
}

void pcr__lshared_forked(void) {
  for (lobj *h = live; h; h = h->next) {
    h->m.blk = NULL;  /* the parent's to free */
    h->m.buf = NULL;  /* a copy of the parent's heap: leave it */
    h->m.bufcap = 0;
  }
}

void pcr__lshared_exit(void) {
  while (live) release(live);
}

/* Wrap o (whose reference the new handle adopts) as a kind k userdata. */
static lobj *pushobj(lua_State *L, pcr_obj *o, int k) {
  lobj *h = lua_newuserdata(L, sizeof *h);
  memset(h, 0, sizeof *h);
  h->o = o;
  h->magic = LOBJ_MAGIC;
  h->kind = k;
  h->owner = pcr__self();
  link_obj(h);
  luaL_getmetatable(L, kname[k]);
  lua_setmetatable(L, -2);
  return h;
}

static int nospace(lua_State *L, const char *who) {
  return luaL_error(L, "%s: out of shared arena space (raise PCRUN_ARENA, "
                       "now %d MiB)", who, (int)(pcr__shm_size() >> 20));
}

/* Which kind of handle is at idx, or -1. The magic and size check is a
** metatable lookup's job done without one: this is on every call. */
static int kindof(lua_State *L, int idx) {
  lobj *h = lua_touserdata(L, idx);
  if (!h || lua_type(L, idx) != LUA_TUSERDATA ||
      lua_objlen(L, idx) != sizeof(lobj) || h->magic != LOBJ_MAGIC)
    return -1;
  return h->kind;
}

/* The method's name for messages: "pcrun.Queue:get". */
static const char *who(lua_State *L, int k, const char *m) {
  return lua_pushfstring(L, "%s:%s", kname[k], m);
}

static lobj *check(lua_State *L, int k, const char *m) {
  lobj *h = lua_touserdata(L, 1);
  int got = kindof(L, 1);
  if (got != k && !(k == K_QUEUE && got == K_JQUEUE) &&
      !(k == K_LOCK && got == K_RLOCK))
    luaL_error(L, "%s: call it as obj:%s(...) on a %s", who(L, k, m), m,
               kname[k]);
  if (!h->o) luaL_error(L, "%s: the object was released", who(L, k, m));
  return h;
}

static double timeout(lua_State *L, int idx, int k, const char *m) {
  if (lua_isnoneornil(L, idx)) return -1;
  if (lua_type(L, idx) != LUA_TNUMBER || lua_tonumber(L, idx) !=
                                             lua_tonumber(L, idx))
    luaL_error(L, "%s: timeout must be a number, got %s", who(L, k, m),
               luaL_typename(L, idx));
  double t = lua_tonumber(L, idx);
  return t <= 0 ? 0 : pcr__now() + t;
}

int pcr__lua_sigint(lua_State *L) {
  return pcr__interrupt_flag  /* sticky: see proc.h */
         || (lua_gethookmask(L) == (LUA_MASKCALL | LUA_MASKRET | LUA_MASKCOUNT)
             && lua_gethookcount(L) == 1);
}

/* EINTR or a slice's end: raise if Ctrl-C is pending, else go on. */
static void interrupted(lua_State *L) {
  if (pcr__lua_sigint(L)) {
    lua_sethook(L, NULL, 0, 0);  /* the hook has done its work: we raise */
    lua_pushliteral(L, "interrupted");  /* exactly: no position */
    lua_error(L);
  }
}

/* Blocking calls wait in slices: Ctrl-C sets a hook, which a wait that
** began before the signal would only see at its end. */
#define SLICE 0.25

static double sliced(double deadline) {
  double s = pcr__now() + SLICE;
  return deadline < 0 || deadline > s ? s : deadline;
}

/* One blocking operation, op(ctx, d, first) with d a deadline: returns 0
** (or a positive result) when done, -ETIMEDOUT when d passed, another
** negative errno for the caller. It is retried per slice, Ctrl-C raising
** between slices; with quick, a first try gets deadline 0 and reads no
** clock, which is the common case. Returns -ETIMEDOUT only once the
** caller's deadline passed. */
typedef int (*waitop)(void *ctx, double d, int first);

static int blocking(lua_State *L, double deadline, int quick, waitop op,
                    void *ctx) {
  for (int first = quick;; first = 0) {
    double d = first ? 0 : sliced(deadline);
    int e = op(ctx, d, first);
    if (first && e == -ETIMEDOUT && deadline != 0) continue;
    if (e == -EINTR || (e == -ETIMEDOUT && d != deadline)) {
      interrupted(L);
      continue;
    }
    return e;
  }
}

/* -- Queues ----------------------------------------------------------- */

static int l_queue(lua_State *L) {
  int64_t maxsize = (int64_t)luaL_optnumber(L, 1, 0);
  int joinable = lua_toboolean(L, 2);
  pcr_queue *q = pcr__queue_new(maxsize);
  if (!q) return nospace(L, joinable ? "pcrun.joinable_queue" : "pcrun.queue");
  q->hdr.flags = joinable;  /* puts count unfinished tasks */
  pushobj(L, &q->hdr, joinable ? K_JQUEUE : K_QUEUE);
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
  lobj *h = check(L, K_QUEUE, m);
  pcr_queue *q = (pcr_queue *)h->o;
  luaL_checkany(L, 2);
  double deadline = nowait ? 0 : timeout(L, 3, K_QUEUE, m);
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
    p = pcr__ser_encode_msg(L, 2, &n, "value");
    kind = PCR_QF_VALUE;
  }
  putctx c = { q, kind, p, n, NULL, 0 };
  c.nrefs = msg_refs(&c.refs);
  int e = blocking(L, deadline, 1, putop, &c);
  if (e) {
    pcr__msg_end(0);  /* not sent: its references go */
    if (e == -ETIMEDOUT) {
      if (nowait) return luaL_error(L, "%s: queue is full", who(L, K_QUEUE, m));
      lua_pushnil(L);
      lua_pushliteral(L, "timeout");
      return 2;
    }
    if (e == -EPIPE)
      return luaL_error(L, "%s: queue is closed", who(L, K_QUEUE, m));
    if (e == -ENOSPC) return nospace(L, who(L, K_QUEUE, m));
    return luaL_error(L, "%s: %s", who(L, K_QUEUE, m), strerror(-e));
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
  lobj *h = check(L, K_QUEUE, m);
  pcr_queue *q = (pcr_queue *)h->o;
  double deadline = nowait ? 0 : timeout(L, 2, K_QUEUE, m);
  if (h->m.blk) {
    pcr__shm_free(h->m.blk);
    h->m.blk = NULL;
  }
  getctx c = { q, &h->m, nowait };
  int e = blocking(L, deadline, 1, getop, &c);
  if (e) {
    if (e == -ETIMEDOUT) {
      if (nowait) return luaL_error(L, "%s: queue is empty", who(L, K_QUEUE, m));
      lua_pushnil(L);
      lua_pushliteral(L, "timeout");
      return 2;
    }
    if (e == -EPIPE)
      return luaL_error(L, "%s: queue is closed and empty", who(L, K_QUEUE, m));
    return luaL_error(L, "%s: %s", who(L, K_QUEUE, m), strerror(-e));
  }
  switch (h->m.kind) {
  case PCR_QF_STRING: lua_pushlstring(L, h->m.p, h->m.n); break;
  case PCR_QF_NUMBER: {
    lua_Number num;
    memcpy(&num, h->m.p, sizeof num);
    lua_pushnumber(L, num);
    break;
  }
  case PCR_QF_TRUE: case PCR_QF_FALSE:
    lua_pushboolean(L, h->m.kind == PCR_QF_TRUE);
    break;
  case PCR_QF_NIL: lua_pushnil(L); break;
  default:
    pcr__ser_decode(L, h->m.p, h->m.n, PCR_SER_TRUSTED | PCR_SER_MSG);
  }
  if (h->m.blk) {  /* decoded: the block is done with */
    pcr__shm_free(h->m.blk);
    h->m.blk = NULL;
  }
  return 1;
}

static int q_get(lua_State *L) { return q_get_(L, 0, "get"); }
static int q_get_nowait(lua_State *L) { return q_get_(L, 1, "get_nowait"); }

static int q_qsize(lua_State *L) {
  pcr_queue *q = (pcr_queue *)check(L, K_QUEUE, "qsize")->o;
  lua_pushnumber(L, (lua_Number)pcr__queue_size(q));
  return 1;
}

static int q_empty(lua_State *L) {
  pcr_queue *q = (pcr_queue *)check(L, K_QUEUE, "empty")->o;
  lua_pushboolean(L, pcr__queue_size(q) == 0);
  return 1;
}

static int q_full(lua_State *L) {
  pcr_queue *q = (pcr_queue *)check(L, K_QUEUE, "full")->o;
  lua_pushboolean(L, q->maxsize && pcr__queue_size(q) >= q->maxsize);
  return 1;
}

static int q_maxsize(lua_State *L) {
  pcr_queue *q = (pcr_queue *)check(L, K_QUEUE, "maxsize")->o;
  if (q->maxsize) lua_pushnumber(L, (lua_Number)q->maxsize);
  else lua_pushnil(L);
  return 1;
}

static int q_close(lua_State *L) {
  pcr__queue_close((pcr_queue *)check(L, K_QUEUE, "close")->o);
  return 0;
}

static int q_closed(lua_State *L) {
  pcr_queue *q = (pcr_queue *)check(L, K_QUEUE, "closed")->o;
  lua_pushboolean(L, atomic_load(&q->closed));
  return 1;
}

static int q_task_done(lua_State *L) {
  pcr_queue *q = (pcr_queue *)check(L, K_JQUEUE, "task_done")->o;
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
  pcr_queue *q = (pcr_queue *)check(L, K_JQUEUE, "join")->o;
  double deadline = timeout(L, 2, K_JQUEUE, "join");
  lua_pushboolean(L, blocking(L, deadline, 0, joinop, q) == 0);
  return 1;
}

/* -- Locks, semaphores, events, conditions, barriers ------------------ */

static int l_sync(lua_State *L) {
  static const int kinds[] = { 0, K_LOCK, K_RLOCK, K_SEM, K_BSEM, K_EVENT,
                               K_COND, K_BARRIER };
  static const char *const ctor[] = { NULL, "pcrun.lock", "pcrun.rlock",
    "pcrun.semaphore", "pcrun.bounded_semaphore", "pcrun.event",
    "pcrun.condition", "pcrun.barrier" };
  int kind = (int)luaL_checkinteger(L, 1);
  luaL_argcheck(L, kind >= PCR_SYNC_LOCK && kind <= PCR_SYNC_BARRIER, 1,
                "bad kind");
  size_t n = 0;
  const char *action = NULL;
  if (kind == PCR_SYNC_BARRIER && !lua_isnoneornil(L, 3))  /* may raise */
    action = pcr__ser_encode_named(L, 3, &n, "action");
  pcr_sync *s = pcr__sync_new((uint32_t)kind, (int64_t)luaL_optnumber(L, 2, 0));
  if (!s) return nospace(L, ctor[kind]);
  if (kind == PCR_SYNC_COND) {  /* arg 3: the lock handle */
    lobj *lh = lua_touserdata(L, 3);
    int lk = lh ? kindof(L, 3) : -1;
    if ((lk != K_LOCK && lk != K_RLOCK) || !lh->o) {
      pcr__obj_unref(&s->hdr);
      return luaL_error(L, "pcrun.condition: lock must be a pcrun.lock or "
                           "pcrun.rlock");
    }
    pcr__obj_ref(lh->o);
    s->cond_lock = (pcr_sync *)lh->o;
  }
  if (action) {
    if (!(s->blob = pcr__shm_alloc(n))) {
      pcr__obj_unref(&s->hdr);
      return nospace(L, "pcrun.barrier");
    }
    memcpy(s->blob, action, n);
    s->bloblen = n;
  }
  pushobj(L, &s->hdr, kinds[kind]);
  return 1;
}

static pcr_sync *tosync(lua_State *L, int k, const char *m) {
  return (pcr_sync *)check(L, k, m)->o;
}

/* Acquire a lock, rlock or semaphore (or a condition's lock). Pushes
** true / false (timed out); a lock taken from a dead owner warns. */
typedef struct acqctx {
  pcr_sync *s;
  double deadline;  /* the caller's: < 0 makes our own lock an error */
} acqctx;

static int acquireop(void *ctx, double d, int first) {
  acqctx *c = ctx;
  pcr_sync *s = c->s;
  (void)first;
  int e = s->kind == PCR_SYNC_SEM || s->kind == PCR_SYNC_BSEM
              ? pcr__sem_acquire(s, d) : pcr__sync_acquire(s, d);
  if (e == -EDEADLK && c->deadline > 0) {
    /* Our own lock, with a timeout: nobody else can free it, so wait it
    ** out as a thread would. */
    _Atomic uint32_t never = 0;
    e = pcr__futex_wait(&never, 0, d);
    return e == -EINTR ? e : -ETIMEDOUT;
  }
  return e;
}

static int acquire(lua_State *L, pcr_sync *s, int k, double deadline) {
  acqctx c = { s, deadline };
  int e = blocking(L, deadline, 0, acquireop, &c);
  if (e == -EDEADLK)
    return luaL_error(L, "%s: this process already holds the lock "
                         "(waiting would deadlock; use pcrun.rlock)",
                      who(L, k, "acquire"));
  if (e == PCR_LOCK_OWNERDEAD) {
    fprintf(stderr, "pcrun: warning: %s: the previous owner died "
                    "holding the lock; this process now holds it\n",
            kname[k]);
    lua_pushboolean(L, 1);
    lua_pushliteral(L, "owner died");
    return 2;
  }
  lua_pushboolean(L, e >= 0);
  return 1;
}

/* Kinds with acquire, release and with. */
static int lockish(int k) {
  return k == K_LOCK || k == K_RLOCK || k == K_SEM || k == K_BSEM ||
         k == K_COND;
}

static int s_acquire(lua_State *L) {
  int k = kindof(L, 1);
  if (!lockish(k))
    return luaL_error(L, "acquire: call it as obj:acquire([timeout])");
  pcr_sync *s = tosync(L, k, "acquire");
  if (k == K_COND) s = s->cond_lock;
  return acquire(L, s, k, timeout(L, 2, k, "acquire"));
}

static int syncrelease(lua_State *L, pcr_sync *s, int k, int64_t n) {
  int e;
  if (s->kind == PCR_SYNC_SEM || s->kind == PCR_SYNC_BSEM) {
    e = pcr__sem_release(s, n);
    if (e == -ERANGE)
      return luaL_error(L, "%s: released more times than acquired",
                        who(L, k, "release"));
  } else if ((e = pcr__sync_release(s)) == -EPERM) {
    return luaL_error(L, "%s: this process does not hold the lock",
                      who(L, k, "release"));
  }
  return 0;
}

static int s_release(lua_State *L) {
  int k = kindof(L, 1);
  if (!lockish(k)) return luaL_error(L, "release: call it as obj:release()");
  pcr_sync *s = tosync(L, k, "release");
  int64_t n = 1;
  if (k == K_COND) s = s->cond_lock;
  if ((k == K_SEM || k == K_BSEM) && !lua_isnoneornil(L, 2)) {
    lua_Number v = lua_tonumber(L, 2);
    if (lua_type(L, 2) != LUA_TNUMBER || v < 1 || v != (int64_t)v)
      return luaL_error(L, "%s: n must be a positive integer",
                        who(L, k, "release"));
    n = (int64_t)v;
  }
  return syncrelease(L, s, k, n);
}

/* obj:with(fn, ...): fn(...) holding it; released on error too. */
static int s_with(lua_State *L) {
  int k = kindof(L, 1);
  if (!lockish(k)) return luaL_error(L, "with: call it as obj:with(fn, ...)");
  pcr_sync *s = tosync(L, k, "with");
  if (k == K_COND) s = s->cond_lock;
  if (!lua_isfunction(L, 2)) {
    if (!luaL_getmetafield(L, 2, "__call"))
      return luaL_error(L, "%s: fn must be a function, got %s",
                        who(L, k, "with"), luaL_typename(L, 2));
    lua_pop(L, 1);
  }
  int top = lua_gettop(L);
  acquire(L, s, k, -1);
  lua_settop(L, top);
  int r = lua_pcall(L, top - 2, LUA_MULTRET, 0);
  syncrelease(L, s, k, 1);
  if (r) return lua_error(L);
  return lua_gettop(L) - 1;
}

static int s_locked(lua_State *L) {
  pcr_sync *s = tosync(L, K_LOCK, "locked");
  lua_pushboolean(L, atomic_load(&s->lock.word) != 0);
  return 1;
}

static int s_owned(lua_State *L) {
  pcr_sync *s = tosync(L, K_LOCK, "owned");
  lua_pushboolean(L, pcr__sync_owned(s));
  return 1;
}

static int s_get_value(lua_State *L) {
  int k = kindof(L, 1);
  if (k != K_SEM && k != K_BSEM)
    return luaL_error(L, "get_value: call it as sem:get_value()");
  lua_pushnumber(L, (lua_Number)atomic_load(&tosync(L, k, "get_value")->value));
  return 1;
}

static int e_set(lua_State *L) {
  pcr__event_set(tosync(L, K_EVENT, "set"), 1);
  return 0;
}

static int e_clear(lua_State *L) {
  pcr__event_set(tosync(L, K_EVENT, "clear"), 0);
  return 0;
}

static int e_is_set(lua_State *L) {
  lua_pushboolean(L, atomic_load(&tosync(L, K_EVENT, "is_set")->value) != 0);
  return 1;
}

static int eventop(void *s, double d, int first) {
  (void)first;
  int e = pcr__event_wait(s, d);
  return e > 0 ? 0 : e == 0 ? -ETIMEDOUT : e;
}

static int e_wait(lua_State *L) {
  pcr_sync *s = tosync(L, K_EVENT, "wait");
  double deadline = timeout(L, 2, K_EVENT, "wait");
  lua_pushboolean(L, blocking(L, deadline, 0, eventop, s) == 0);
  return 1;
}

/* Between slices this process holds the lock, so no notify can slip
** between one wait and the next. */
static int condop(void *c, double d, int first) {
  (void)first;
  int e = pcr__cond_wait(c, d);
  return e > 0 ? 0 : e == 0 ? -ETIMEDOUT : e;
}

static int c_wait(lua_State *L) {
  pcr_sync *c = tosync(L, K_COND, "wait");
  double deadline = timeout(L, 2, K_COND, "wait");
  int e = blocking(L, deadline, 0, condop, c);
  if (e == -EPERM)
    return luaL_error(L, "pcrun.Condition:wait: the lock is not held by "
                         "this process");
  lua_pushboolean(L, e == 0);
  return 1;
}

static int c_notify_(lua_State *L, int all, const char *m) {
  pcr_sync *c = tosync(L, K_COND, m);
  int n = 1;
  if (all) {
    n = INT32_MAX;
  } else if (!lua_isnoneornil(L, 2)) {
    lua_Number v = lua_tonumber(L, 2);
    if (lua_type(L, 2) != LUA_TNUMBER || v < 1 || v != (int)v)
      return luaL_error(L, "pcrun.Condition:notify: n must be a positive "
                           "integer");
    n = (int)v;
  }
  if (pcr__cond_notify(c, n) == -EPERM)
    return luaL_error(L, "pcrun.Condition:%s: the lock is not held by this "
                         "process", m);
  return 0;
}

static int c_notify(lua_State *L) { return c_notify_(L, 0, "notify"); }
static int c_notify_all(lua_State *L) { return c_notify_(L, 1, "notify_all"); }

/* Decode the barrier's action (upvalue 1: the barrier) and run it. */
static int b_action(lua_State *L) {
  pcr_sync *b = lua_touserdata(L, 1);
  pcr__ser_decode(L, b->blob, b->bloblen, PCR_SER_TRUSTED);
  lua_call(L, 0, 0);
  return 0;
}

typedef struct arrivectx {
  pcr_sync *b;
  uint32_t *gen;
} arrivectx;

static int arriveop(void *ctx, double d, int first) {
  arrivectx *c = ctx;
  (void)first;
  return pcr__barrier_arrive(c->b, c->gen, d);
}

static int b_wait(lua_State *L) {
  pcr_sync *b = tosync(L, K_BARRIER, "wait");
  double deadline = timeout(L, 2, K_BARRIER, "wait");
  uint32_t gen;
  arrivectx c = { b, &gen };
  /* arrive waits only while the last round leaves */
  int idx = blocking(L, deadline, 0, arriveop, &c), e;
  if (idx == -ETIMEDOUT) {
    pcr__barrier_break(b);
    idx = -EPIPE;
  }
  if (idx == -EPIPE)
    return luaL_error(L, "pcrun.Barrier:wait: the barrier is broken");
  if (idx == b->limit - 1) {  /* last to arrive: run the action, open it */
    if (b->blob) {
      lua_pushcfunction(L, b_action);
      lua_pushlightuserdata(L, b);
      if (lua_pcall(L, 1, 0, 0)) {
        pcr__barrier_break(b);
        return luaL_error(L, "pcrun.Barrier:wait: the action failed: %s",
                          lua_tostring(L, -1));
      }
    }
    if (pcr__barrier_pass(b, gen) < 0)
      return luaL_error(L, "pcrun.Barrier:wait: the barrier is broken");
    lua_pushinteger(L, idx);
    return 1;
  }
  for (;;) {
    double d = sliced(deadline);
    e = pcr__barrier_wait(b, gen, d);
    if (e == -ETIMEDOUT && d == deadline) {  /* a timeout breaks it */
      pcr__barrier_break(b);
      e = -EPIPE;
    }
    if (e == -EINTR || e == -ETIMEDOUT) {
      if (pcr__lua_sigint(L)) {
        pcr__barrier_break(b);  /* the others must not wait for us */
        interrupted(L);
      }
      continue;
    }
    break;
  }
  if (e == -EPIPE)
    return luaL_error(L, "pcrun.Barrier:wait: the barrier is broken");
  lua_pushinteger(L, idx);
  return 1;
}

static int b_abort(lua_State *L) {
  pcr__barrier_break(tosync(L, K_BARRIER, "abort"));
  return 0;
}

static int b_reset(lua_State *L) {
  pcr__barrier_reset(tosync(L, K_BARRIER, "reset"));
  return 0;
}

static int b_parties(lua_State *L) {
  lua_pushinteger(L, (lua_Integer)tosync(L, K_BARRIER, "parties")->limit);
  return 1;
}

static int b_n_waiting(lua_State *L) {
  pcr_sync *b = tosync(L, K_BARRIER, "n_waiting");
  lua_pushinteger(L, (lua_Integer)atomic_load(&b->value));
  return 1;
}

static int b_broken(lua_State *L) {
  lua_pushboolean(L, atomic_load(&tosync(L, K_BARRIER, "broken")->broken));
  return 1;
}

/* -- Shared arrays and values ----------------------------------------- */

/* array_new(ctype, esize, n) -> ObjRef, address (a number) */
static int l_array_new(lua_State *L) {
  const char *ct = luaL_checkstring(L, 1);
  size_t esize = (size_t)luaL_checknumber(L, 2);
  lua_Number n = luaL_checknumber(L, 3);
  pcr_array *a = n < 0 ? NULL : pcr__array_new(ct, esize, (uint64_t)n);
  if (!a) return nospace(L, lua_tostring(L, 4) ? lua_tostring(L, 4)
                                               : "pcrun.array");
  pushobj(L, &a->hdr, K_REF);
  lua_pushnumber(L, (lua_Number)(uintptr_t)a->data);
  return 2;
}

/* ref_info(ref) -> address, n, ctype */
static int r_info(lua_State *L) {
  lobj *h = check(L, K_REF, "info");
  pcr_array *a = (pcr_array *)h->o;
  lua_pushnumber(L, (lua_Number)(uintptr_t)a->data);
  lua_pushnumber(L, (lua_Number)a->n);
  lua_pushstring(L, a->ctype);
  return 3;
}

/* Atomic access to one element: kind 'i' signed, 'u' unsigned, 'f'
** floating, with the element's size. */
typedef union { int8_t i8; int16_t i16; int32_t i32; int64_t i64;
                uint8_t u8; uint16_t u16; uint32_t u32; uint64_t u64;
                float f; double d; } scalar;

static lua_Number scalar_get(int kind, size_t size, scalar s) {
  if (kind == 'f') return size == 4 ? s.f : s.d;
  if (kind == 'i')
    return size == 1 ? s.i8 : size == 2 ? s.i16 : size == 4 ? s.i32
                                                            : (lua_Number)s.i64;
  return size == 1 ? s.u8 : size == 2 ? s.u16 : size == 4 ? s.u32
                                                          : (lua_Number)s.u64;
}

static scalar scalar_from(int kind, size_t size, lua_Number v) {
  scalar s;
  memset(&s, 0, sizeof s);
  if (kind == 'f') { if (size == 4) s.f = (float)v; else s.d = v; return s; }
  if (kind == 'i') {
    if (size == 1) s.i8 = (int8_t)v; else if (size == 2) s.i16 = (int16_t)v;
    else if (size == 4) s.i32 = (int32_t)v; else s.i64 = (int64_t)v;
    return s;
  }
  if (size == 1) s.u8 = (uint8_t)v; else if (size == 2) s.u16 = (uint16_t)v;
  else if (size == 4) s.u32 = (uint32_t)v; else s.u64 = (uint64_t)v;
  return s;
}

static int cas_bits(void *p, size_t size, scalar *old, scalar nw) {
  switch (size) {
  case 1: return __atomic_compare_exchange(
      (uint8_t *)p, &old->u8, &nw.u8, 0, __ATOMIC_SEQ_CST, __ATOMIC_SEQ_CST);
  case 2: return __atomic_compare_exchange(
      (uint16_t *)p, &old->u16, &nw.u16, 0, __ATOMIC_SEQ_CST, __ATOMIC_SEQ_CST);
  case 4: return __atomic_compare_exchange(
      (uint32_t *)p, &old->u32, &nw.u32, 0, __ATOMIC_SEQ_CST, __ATOMIC_SEQ_CST);
  default: return __atomic_compare_exchange(
      (uint64_t *)p, &old->u64, &nw.u64, 0, __ATOMIC_SEQ_CST, __ATOMIC_SEQ_CST);
  }
}

static scalar load_bits(void *p, size_t size) {
  scalar s;
  memset(&s, 0, sizeof s);
  switch (size) {
  case 1: s.u8 = __atomic_load_n((uint8_t *)p, __ATOMIC_SEQ_CST); break;
  case 2: s.u16 = __atomic_load_n((uint16_t *)p, __ATOMIC_SEQ_CST); break;
  case 4: s.u32 = __atomic_load_n((uint32_t *)p, __ATOMIC_SEQ_CST); break;
  default: s.u64 = __atomic_load_n((uint64_t *)p, __ATOMIC_SEQ_CST);
  }
  return s;
}

/* value_op(ref, kind, op, a, b): op 'l' load, 's' store a, 'a' add a
** (returns the old value), 'c' cas(a, b) (returns whether it swapped). */
static int r_value_op(lua_State *L) {
  lobj *h = check(L, K_REF, "value");
  pcr_array *a = (pcr_array *)h->o;
  int kind = *luaL_checkstring(L, 2), op = *luaL_checkstring(L, 3);
  size_t size = a->esize;
  void *p = a->data;
  if (op == 'l') {
    lua_pushnumber(L, scalar_get(kind, size, load_bits(p, size)));
    return 1;
  }
  lua_Number x = luaL_checknumber(L, 4);
  scalar old = load_bits(p, size), nw;
  if (op == 'c') {
    scalar want = scalar_from(kind, size, x);
    nw = scalar_from(kind, size, luaL_checknumber(L, 5));
    /* Compare by value, so that 1.0 matches whatever bits it has now. */
    if (scalar_get(kind, size, old) != scalar_get(kind, size, want)) {
      lua_pushboolean(L, 0);
      return 1;
    }
    lua_pushboolean(L, cas_bits(p, size, &old, nw));
    return 1;
  }
  do {
    lua_Number cur = scalar_get(kind, size, old);
    nw = scalar_from(kind, size, op == 'a' ? cur + x : x);
  } while (!cas_bits(p, size, &old, nw));
  lua_pushnumber(L, scalar_get(kind, size, old));
  return 1;
}

/* -- Crossing processes, lifetime ------------------------------------- */

/* The wire form: offset and kind; the reference travels with it. */
typedef struct wireobj {
  uint64_t off;
  int32_t kind;
  uint32_t type;
} wireobj;

static int o_serialize(lua_State *L) {
  lobj *h = lua_touserdata(L, 1);
  int k = kindof(L, 1);
  if (k < 0 || !h->o) return luaL_error(L, "cannot send a released object");
  wireobj w = { pcr__shm_offset(h->o), k, h->o->type };
  if (pcr__ser_msg && msg_ref(h->o) < 0)  /* the receiver adopts it */
    return luaL_error(L, "out of memory");
  lua_pushlstring(L, (const char *)&w, sizeof w);
  return 1;
}

static int o_deserialize(lua_State *L) {
  size_t n;
  const char *s = luaL_checklstring(L, 1, &n);
  wireobj w;
  if (n != sizeof w) return luaL_error(L, "bad pcrun object encoding");
  memcpy(&w, s, sizeof w);
  pcr_obj *o = pcr__shm_at(w.off, sizeof(pcr_obj));
  if (!pcr__ser_msg && !pcr__ser_trusted)
    return luaL_error(L, "pcrun.decode: a shared object in untrusted input "
                         "(decode with { trusted = true })");
  if (!o || o->magic != PCR_OBJ_MAGIC || o->type != w.type || w.kind < 0 ||
      w.kind >= K_N)
    return luaL_error(L, "pcrun: a shared object in a message no longer "
                         "exists");
  if (!pcr__ser_msg) pcr__obj_ref(o);  /* else adopt the message's */
  pushobj(L, o, w.kind);
  return 1;
}

static int o_gc(lua_State *L) {
  lobj *h = lua_touserdata(L, 1);
  if (h) release(h);
  return 0;
}

static int o_tostring(lua_State *L) {
  lobj *h = lua_touserdata(L, 1);
  int k = kindof(L, 1);
  lua_pushfstring(L, "%s: %p", k >= 0 ? kname[k] : "pcrun.object",
                  h ? (void *)h->o : NULL);
  return 1;
}

static int o_eq(lua_State *L) {
  lobj *a = lua_touserdata(L, 1), *b = lua_touserdata(L, 2);
  lua_pushboolean(L, a && b && a->o == b->o);
  return 1;
}

/* ready(objs) -> index of the first ready queue or event, or nil;
** wait_many(objs, timeout) sleeps until one may be. */
static int readyat(lua_State *L, int i) {
  lobj *h = lua_touserdata(L, i);
  int k = h ? kindof(L, i) : -1;
  if (!h || !h->o) return -1;
  if (k == K_QUEUE || k == K_JQUEUE) return pcr__queue_ready((pcr_queue *)h->o);
  if (k == K_EVENT) return atomic_load(&((pcr_sync *)h->o)->value) != 0;
  return -1;
}

static pcr_waitq *waitqof(lua_State *L, int i) {
  lobj *h = lua_touserdata(L, i);
  int k = kindof(L, i);
  if (k == K_QUEUE || k == K_JQUEUE) return &((pcr_queue *)h->o)->getq;
  return &((pcr_sync *)h->o)->wq;
}

static int l_wait_many(lua_State *L) {
  luaL_checktype(L, 1, LUA_TTABLE);
  int n = (int)lua_objlen(L, 1);
  double deadline = lua_isnoneornil(L, 2) ? -1 : luaL_checknumber(L, 2);
  luaL_argcheck(L, n >= 1 && n <= 128, 1, "1 to 128 queues and events");
  pcr_waitq *qs[128];
  pcr_wqtok ts[128];
  int r = 0;
  for (int i = 0; i < n; i++) {
    lua_rawgeti(L, 1, i + 1);
    int ready = readyat(L, -1);
    if (ready < 0) {
      for (int j = 0; j < i; j++) pcr__wq_cancel(qs[j], &ts[j]);
      return luaL_error(L, "pcrun.select: item %d is not a queue or event",
                        i + 1);
    }
    qs[i] = waitqof(L, -1);
    pcr__wq_prepare(qs[i], &ts[i]);
    r |= ready;
    lua_pop(L, 1);
  }
  if (r) {
    for (int i = 0; i < n; i++) pcr__wq_cancel(qs[i], &ts[i]);
    return 0;
  }
  r = pcr__wq_sleep_many(qs, ts, n, deadline);
  if (r == -EINTR) interrupted(L);
  return 0;
}

static int l_ready(lua_State *L) {
  lua_pushboolean(L, readyat(L, 1) > 0);
  return 1;
}

/* -- The ffi fast path ------------------------------------------------ */

/* Called through ffi function pointers (lua/pcrun/sync.lua): an ffi call
** compiles to a direct call, where a lua_CFunction ends the trace. h is
** the handle's payload; anything else returns -EBADF and the caller falls
** back to the methods above, which raise with a message. */
static pcr_sync *fastsync(void *p, int *k) {
  lobj *h = p;
  if (!h || h->magic != LOBJ_MAGIC || !h->o) return NULL;
  *k = h->kind;
  pcr_sync *s = (pcr_sync *)h->o;
  return *k == K_COND ? s->cond_lock : s;
}

/* timeout: < 0 forever, else seconds. Returns as pcr__sync_acquire. */
static int f_acquire(void *p, double timeout) {
  int k;
  pcr_sync *s = fastsync(p, &k);
  if (!s) return -EBADF;
  int sem = k == K_SEM || k == K_BSEM, r;
  if (!sem && k != K_LOCK && k != K_RLOCK && k != K_COND) return -EBADF;
  /* One try without a clock read or a liveness probe: the common case. */
  if (sem) {
    int64_t v = atomic_load(&s->value);
    if (v > 0 && atomic_compare_exchange_strong(&s->value, &v, v - 1))
      return 0;
  } else if (k == K_RLOCK && pcr__sync_owned(s)) {
    s->depth++;
    return 0;
  } else {
    uint32_t free_ = 0;
    if (atomic_compare_exchange_strong_explicit(&s->lock.word, &free_,
          pcr__self(), memory_order_acquire, memory_order_relaxed)) {
      s->depth = 1;
      return 0;
    }
  }
  if (timeout == 0)
    return sem ? pcr__sem_acquire(s, 0) : pcr__sync_acquire(s, 0);
  /* At most one slice here: a longer wait goes on in the C method, which
  ** sees Ctrl-C. -EAGAIN says the slice passed. */
  int bounded = timeout < 0 || timeout > SLICE;
  double deadline = pcr__now() + (bounded ? SLICE : timeout);
  r = sem ? pcr__sem_acquire(s, deadline) : pcr__sync_acquire(s, deadline);
  return r == -ETIMEDOUT && bounded ? -EAGAIN : r;
}

static int f_release(void *p) {
  int k;
  pcr_sync *s = fastsync(p, &k);
  if (!s) return -EBADF;
  switch (k) {
  case K_LOCK: case K_RLOCK: case K_COND: return pcr__sync_release(s);
  case K_SEM: case K_BSEM: return pcr__sem_release(s, 1);
  default: return -EBADF;
  }
}

/* Queues, numbers only: put never waits, get takes a number frame that is
** ready. Anything else (full, empty, closed, another kind, a block of
** the last get still held) is the C methods' job. */
static pcr_queue *fastqueue(void *p) {
  lobj *h = p;
  if (!h || h->magic != LOBJ_MAGIC || !h->o ||
      (h->kind != K_QUEUE && h->kind != K_JQUEUE) || h->m.blk)
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

static void pushfast(lua_State *L) {
  lua_newtable(L);
  lua_pushlightuserdata(L, (void *)(uintptr_t)f_acquire);
  lua_setfield(L, -2, "acquire");
  lua_pushlightuserdata(L, (void *)(uintptr_t)f_release);
  lua_setfield(L, -2, "release");
  lua_pushlightuserdata(L, (void *)(uintptr_t)f_qput);
  lua_setfield(L, -2, "qput");
  lua_pushlightuserdata(L, (void *)(uintptr_t)f_qget);
  lua_setfield(L, -2, "qget");
  lua_pushinteger(L, ETIMEDOUT);
  lua_setfield(L, -2, "ETIMEDOUT");
  lua_pushinteger(L, EAGAIN);
  lua_setfield(L, -2, "EAGAIN");
  lua_pushnumber(L, SLICE);
  lua_setfield(L, -2, "SLICE");
  lua_pushinteger(L, PCR_LOCK_OWNERDEAD);
  lua_setfield(L, -2, "OWNERDEAD");
  lua_setfield(L, -2, "sync_fast");
}

/* cdhook(ctype_id, mt): cdata of that ctype cross by mt.__serialize. */
static int l_cdhook(lua_State *L) {
  luaL_checknumber(L, 1);
  luaL_checktype(L, 2, LUA_TTABLE);
  pcr__ser_cdhooks(L);
  lua_pushvalue(L, 1);
  lua_pushvalue(L, 2);
  lua_rawset(L, -3);
  return 0;
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
static const luaL_Reg lock_m[] = {
  {"acquire", s_acquire}, {"release", s_release}, {"with", s_with},
  {"locked", s_locked}, {"owned", s_owned}, {NULL, NULL}
};
static const luaL_Reg sem_m[] = {
  {"acquire", s_acquire}, {"release", s_release}, {"with", s_with},
  {"get_value", s_get_value}, {NULL, NULL}
};
static const luaL_Reg event_m[] = {
  {"set", e_set}, {"clear", e_clear}, {"is_set", e_is_set}, {"wait", e_wait},
  {NULL, NULL}
};
static const luaL_Reg cond_m[] = {
  {"acquire", s_acquire}, {"release", s_release}, {"with", s_with},
  {"wait", c_wait}, {"notify", c_notify}, {"notify_all", c_notify_all},
  {NULL, NULL}
};
static const luaL_Reg barrier_m[] = {
  {"wait", b_wait}, {"abort", b_abort}, {"reset", b_reset},
  {"parties", b_parties}, {"n_waiting", b_n_waiting}, {"broken", b_broken},
  {NULL, NULL}
};
static const luaL_Reg ref_m[] = {
  {"info", r_info}, {"value_op", r_value_op}, {NULL, NULL}
};

int pcr__lua_class(lua_State *L, const char *name, const luaL_Reg *methods,
                   const luaL_Reg *more, const luaL_Reg *meta) {
  int fresh = luaL_newmetatable(L, name);
  lua_newtable(L);
  luaL_register(L, NULL, methods);
  if (more) luaL_register(L, NULL, more);
  lua_setfield(L, -2, "__index");
  luaL_register(L, NULL, meta);
  lua_pushstring(L, name);
  lua_setfield(L, -2, "__name");
  return fresh;
}

static void newmt(lua_State *L, int k, const luaL_Reg *m1, const luaL_Reg *m2) {
  static const luaL_Reg meta[] = {
    {"__gc", o_gc}, {"__tostring", o_tostring}, {"__eq", o_eq},
    {"__serialize", o_serialize}, {"__deserialize", o_deserialize},
    {NULL, NULL}
  };
  pcr__lua_class(L, kname[k], m1, m2, meta);
  lua_pushinteger(L, k);
  lua_setfield(L, -2, "__kind");
  lua_setfield(L, -2, kname[k] + 6);  /* core.Queue = mt, ... */
}

void pcr__lshared_open(lua_State *L) {
  static const luaL_Reg fns[] = {
    {"queue", l_queue}, {"sync", l_sync}, {"array_new", l_array_new},
    {"wait_many", l_wait_many}, {"ready", l_ready}, {"cdhook", l_cdhook},
    {NULL, NULL}
  };
  static int atexit_set;
  if (!atexit_set) {  /* os.exit in a child drops its references too */
    atexit_set = 1;
    atexit(pcr__lshared_exit);
  }
  pcr__queue_init();
  pcr__sync_init();
  luaL_register(L, NULL, fns);
  pushfast(L);
  newmt(L, K_QUEUE, queue_m, NULL);
  newmt(L, K_JQUEUE, queue_m, jqueue_m);
  newmt(L, K_LOCK, lock_m, NULL);
  newmt(L, K_RLOCK, lock_m, NULL);
  newmt(L, K_SEM, sem_m, NULL);
  newmt(L, K_BSEM, sem_m, NULL);
  newmt(L, K_EVENT, event_m, NULL);
  newmt(L, K_COND, cond_m, NULL);
  newmt(L, K_BARRIER, barrier_m, NULL);
  newmt(L, K_REF, ref_m, NULL);
}
