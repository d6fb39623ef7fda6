/* The Lua binding of locks, reentrant locks, semaphores, events,
** conditions and barriers, and the ffi fast path of acquire and release,
** on the handle core (lhandle.h). */
#include "lhandle.h"
#include "ser.h"
#include "sync.h"

#include <errno.h>
#include <lauxlib.h>
#include <lua.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

/* Handle kinds, by PCR_SYNC_* (K[0] unused). */
static int K[PCR_SYNC_BARRIER + 1];
#define K_LOCK K[PCR_SYNC_LOCK]
#define K_RLOCK K[PCR_SYNC_RLOCK]
#define K_SEM K[PCR_SYNC_SEM]
#define K_BSEM K[PCR_SYNC_BSEM]
#define K_EVENT K[PCR_SYNC_EVENT]
#define K_COND K[PCR_SYNC_COND]
#define K_BARRIER K[PCR_SYNC_BARRIER]

void pcr__lqueue_fast(lua_State *L);

static int l_sync(lua_State *L) {
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
  int64_t value = (int64_t)luaL_optnumber(L, 2, 0);
  pcr_handle *h = pcr__handle_push(L, NULL, K[kind]);
  pcr_sync *s = pcr__sync_new((uint32_t)kind, value, &h->lidx[0]);
  if (!s && pcr__lua_collect(L))
    s = pcr__sync_new((uint32_t)kind, value, &h->lidx[0]);
  if (!s) {
    pcr__handle_release(h);
    return pcr__handle_nospace(L, ctor[kind]);
  }
  h->o = &s->hdr;
  if (kind == PCR_SYNC_COND) {  /* arg 3: the lock handle */
    pcr_handle *lh = lua_touserdata(L, 3);
    int lk = lh ? pcr__handle_kind(L, 3) : -1;
    if ((lk != K_LOCK && lk != K_RLOCK) || !lh->open) {
      pcr__handle_release(h);
      return luaL_error(L, "pcrun.condition: lock must be a pcrun.lock or "
                           "pcrun.rlock");
    }
    pcr__obj_ref(lh->o);
    s->cond_lock = (pcr_sync *)lh->o;
  }
  if (kind == PCR_SYNC_BARRIER && lua_isnumber(L, 4)) {  /* checked */
    s->timeout = lua_tonumber(L, 4);
    s->has_timeout = 1;
  }
  if (action) {
    /* Named in s from its allocation on: the dtor frees it. */
    s->blob = pcr__shm_alloc_into(n, &s->blob, PCR_SHM_ADDR);
    if (!s->blob && pcr__lua_collect(L))
      s->blob = pcr__shm_alloc_into(n, &s->blob, PCR_SHM_ADDR);
    if (!s->blob) {
      pcr__handle_release(h);
      return pcr__handle_nospace(L, "pcrun.barrier");
    }
    memcpy(s->blob, action, n);
    s->bloblen = n;
  }
  return 1;
}

static pcr_sync *tosync(lua_State *L, int k, const char *m) {
  return (pcr_sync *)pcr__handle_check(L, k, m)->o;
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
  int e = pcr__lua_blocking(L, deadline, 0, acquireop, &c);
  if (e == -EDEADLK)
    return luaL_error(L, "%s: this process already holds the lock "
                         "(waiting would deadlock; use pcrun.rlock)",
                      pcr__handle_who(L, k, "acquire"));
  if (e == PCR_LOCK_OWNERDEAD) {
    fprintf(stderr, "pcrun: warning: %s: the previous owner died "
                    "holding the lock; this process now holds it\n",
            pcr__handle_kindinfo(k)->name);
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
  int k = pcr__handle_kind(L, 1);
  if (!lockish(k))
    return luaL_error(L, "acquire: call it as obj:acquire([timeout])");
  pcr_sync *s = tosync(L, k, "acquire");
  if (k == K_COND) s = s->cond_lock;
  return acquire(L, s, k, pcr__handle_timeout(L, 2, k, "acquire"));
}

static int syncrelease(lua_State *L, pcr_sync *s, int k, int64_t n) {
  int e;
  if (s->kind == PCR_SYNC_SEM || s->kind == PCR_SYNC_BSEM) {
    e = pcr__sem_release(s, n);
    if (e == -ERANGE)
      return luaL_error(L, "%s: released more times than acquired",
                        pcr__handle_who(L, k, "release"));
  } else if ((e = pcr__sync_release(s)) == -EPERM) {
    return luaL_error(L, "%s: this process does not hold the lock",
                      pcr__handle_who(L, k, "release"));
  }
  return 0;
}

static int s_release(lua_State *L) {
  int k = pcr__handle_kind(L, 1);
  if (!lockish(k)) return luaL_error(L, "release: call it as obj:release()");
  pcr_sync *s = tosync(L, k, "release");
  int64_t n = 1;
  if (k == K_COND) s = s->cond_lock;
  if ((k == K_SEM || k == K_BSEM) && !lua_isnoneornil(L, 2)) {
    lua_Number v = lua_tonumber(L, 2);
    if (lua_type(L, 2) != LUA_TNUMBER || v < 1 || v != (int64_t)v)
      return luaL_error(L, "%s: n must be a positive integer",
                        pcr__handle_who(L, k, "release"));
    n = (int64_t)v;
  }
  return syncrelease(L, s, k, n);
}

/* obj:with(fn, ...): fn(...) holding it; released on error too. */
static int s_with(lua_State *L) {
  int k = pcr__handle_kind(L, 1);
  if (!lockish(k)) return luaL_error(L, "with: call it as obj:with(fn, ...)");
  pcr_sync *s = tosync(L, k, "with");
  if (k == K_COND) s = s->cond_lock;
  if (!lua_isfunction(L, 2)) {
    if (!luaL_getmetafield(L, 2, "__call"))
      return luaL_error(L, "%s: fn must be a function, got %s",
                        pcr__handle_who(L, k, "with"), luaL_typename(L, 2));
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
  int k = pcr__handle_kind(L, 1);
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
  double deadline = pcr__handle_timeout(L, 2, K_EVENT, "wait");
  lua_pushboolean(L, pcr__lua_blocking(L, deadline, 0, eventop, s) == 0);
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
  double deadline = pcr__handle_timeout(L, 2, K_COND, "wait");
  int e = pcr__lua_blocking(L, deadline, 0, condop, c);
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
  double deadline = pcr__handle_timeout(L, 2, K_BARRIER, "wait");
  if (deadline < 0 && b->has_timeout)  /* the barrier's default */
    deadline = b->timeout <= 0 ? 0 : pcr__now() + b->timeout;
  uint32_t gen;
  arrivectx c = { b, &gen };
  /* arrive waits only while the last round leaves */
  int idx = pcr__lua_blocking(L, deadline, 0, arriveop, &c), e;
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
    double d = pcr__lua_sliced(deadline);
    e = pcr__barrier_wait(b, gen, d);
    if (e == -ETIMEDOUT && d == deadline) {  /* a timeout breaks it */
      pcr__barrier_break(b);
      e = -EPIPE;
    }
    if (e == -EINTR || e == -ETIMEDOUT) {
      if (pcr__lua_sigint(L)) {
        pcr__barrier_break(b);  /* the others must not wait for us */
        pcr__lua_interrupted(L);
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

/* -- The ffi fast path ------------------------------------------------ */

/* Called through ffi function pointers (lua/pcrun/sync.lua): an ffi call
** compiles to a direct call, where a lua_CFunction ends the trace. h is
** the handle's payload; anything else returns -EBADF and the caller falls
** back to the methods above, which raise with a message. */
static pcr_sync *fastsync(void *p, int *k) {
  pcr_handle *h = p;
  if (!h || h->magic != PCR_HANDLE_MAGIC || !h->open) return NULL;
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
  int bounded = timeout < 0 || timeout > PCR_SLICE;
  double deadline = pcr__now() + (bounded ? PCR_SLICE : timeout);
  r = sem ? pcr__sem_acquire(s, deadline) : pcr__sync_acquire(s, deadline);
  return r == -ETIMEDOUT && bounded ? -EAGAIN : r;
}

static int f_release(void *p) {
  int k;
  pcr_sync *s = fastsync(p, &k);
  if (!s) return -EBADF;
  if (k == K_LOCK || k == K_RLOCK || k == K_COND) return pcr__sync_release(s);
  if (k == K_SEM || k == K_BSEM) return pcr__sem_release(s, 1);
  return -EBADF;
}

static void pushfast(lua_State *L) {
  lua_newtable(L);
  lua_pushlightuserdata(L, (void *)(uintptr_t)f_acquire);
  lua_setfield(L, -2, "acquire");
  lua_pushlightuserdata(L, (void *)(uintptr_t)f_release);
  lua_setfield(L, -2, "release");
  pcr__lqueue_fast(L);
  lua_pushinteger(L, ETIMEDOUT);
  lua_setfield(L, -2, "ETIMEDOUT");
  lua_pushinteger(L, EAGAIN);
  lua_setfield(L, -2, "EAGAIN");
  lua_pushnumber(L, PCR_SLICE);
  lua_setfield(L, -2, "SLICE");
  lua_pushinteger(L, PCR_LOCK_OWNERDEAD);
  lua_setfield(L, -2, "OWNERDEAD");
  lua_setfield(L, -2, "sync_fast");
}

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

static int e_ready(pcr_handle *h) {
  return atomic_load(&((pcr_sync *)h->o)->value) != 0;
}

static pcr_waitq *s_waitq(pcr_handle *h) { return &((pcr_sync *)h->o)->wq; }

void pcr__lsync_open(lua_State *L) {
  static const struct {
    int kind;
    const char *mt, *ctor;
    const luaL_Reg *m;
  } all[] = {
    { PCR_SYNC_LOCK, "pcrun.Lock", "lock", lock_m },
    { PCR_SYNC_RLOCK, "pcrun.RLock", "rlock", lock_m },
    { PCR_SYNC_SEM, "pcrun.Semaphore", "semaphore", sem_m },
    { PCR_SYNC_BSEM, "pcrun.BoundedSemaphore", "bounded_semaphore", sem_m },
    { PCR_SYNC_EVENT, "pcrun.Event", "event", event_m },
    { PCR_SYNC_COND, "pcrun.Condition", "condition", cond_m },
    { PCR_SYNC_BARRIER, "pcrun.Barrier", "barrier", barrier_m },
  };
  static const luaL_Reg fns[] = { {"sync", l_sync}, {NULL, NULL} };
  pcr__sync_init();
  lua_newtable(L);  /* core.sync_kinds: constructor name -> kind */
  for (size_t i = 0; i < sizeof all / sizeof all[0]; i++) {
    pcr_hkind k = { all[i].mt, all[i].m, NULL, 0, -1, NULL, NULL, NULL,
                    NULL, NULL, NULL, NULL, NULL };
    if (all[i].kind == PCR_SYNC_EVENT) {
      k.ready = e_ready;
      k.waitq = s_waitq;
    }
    if (all[i].kind == PCR_SYNC_RLOCK) k.base = K_LOCK;
    lua_insert(L, -2);
    K[all[i].kind] = pcr__handle_register(L, &k);
    lua_insert(L, -2);
    lua_pushinteger(L, all[i].kind);
    lua_setfield(L, -2, all[i].ctor);
  }
  lua_setfield(L, -2, "sync_kinds");
  luaL_register(L, NULL, fns);
  pushfast(L);
}
