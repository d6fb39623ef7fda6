/* Synchronization objects: a counter or flag in the arena, a wait queue
** for its sleepers, and for locks the robust pid-owned lock of futex.c. */
#include "sync.h"
#include "pcrdef.h"
#include "frame.h"

#include <string.h>

/* Each part is given up with its release, as one (a death in it leaves
** the rest to the dtor run again: pcr__obj_finish). */
static void syncdtor(pcr_obj *o) {
  pcr_sync *s = (pcr_sync *)o, *c = s->cond_lock;
  if (c && !pcr__obj_refop(&c->hdr, -1, NULL,
                           (_Atomic uint64_t *)(void *)&s->cond_lock, 0, 0))
    pcr__obj_finish(&c->hdr, NULL);
  if (s->blob) pcr__shm_free_from(s->blob, &s->blob);
}

void pcr__sync_init(void) { pcr__obj_set_dtor(PCR_OBJ_SYNC, syncdtor); }

pcr_sync *pcr__sync_new(uint32_t kind, int64_t v, long *idx) {
  pcr_sync *s = (pcr_sync *)pcr__frame_obj_new(sizeof *s, PCR_OBJ_SYNC, idx);
  if (!s) return NULL;
  s->kind = kind;
  if (kind == PCR_SYNC_SEM || kind == PCR_SYNC_BSEM) {
    atomic_init(&s->value, v);
    s->limit = v;
  } else if (kind == PCR_SYNC_BARRIER) {
    s->limit = v;
  }
  return s;
}

static int expired(double deadline) {
  return deadline >= 0 && (deadline == 0 || pcr__now() >= deadline);
}

/* -- Locks ------------------------------------------------------------ */

int pcr__sync_owned(pcr_sync *s) {
  uint32_t w = atomic_load_explicit(&s->lock.word, memory_order_relaxed);
  return (w & ~PCR_LOCK_WAITERS) == pcr__self();
}

int pcr__sync_acquire(pcr_sync *s, double deadline) {
  if (s->kind == PCR_SYNC_RLOCK && pcr__sync_owned(s)) {
    s->depth++;
    return 0;
  }
  int r;
  if (deadline == 0) {
    r = pcr__lock_trylock(&s->lock);
    if (r == -EBUSY) r = -ETIMEDOUT;
  } else {
    r = pcr__lock_lock(&s->lock, deadline);
  }
  if (r >= 0) s->depth = 1;
  return r;
}

int pcr__sync_release(pcr_sync *s) {
  if (!pcr__sync_owned(s)) return -EPERM;
  if (s->kind == PCR_SYNC_RLOCK && --s->depth > 0) return 0;
  s->depth = 0;
  return pcr__lock_unlock(&s->lock);
}

/* -- Semaphores and events -------------------------------------------- */

static int sem_ready(pcr_sync *s) { return atomic_load(&s->value) > 0; }

/* Sleep on s->wq until ready(s) or the deadline; 0 means "try again". */
static int waiton(pcr_sync *s, int (*ready)(pcr_sync *), double deadline) {
  if (expired(deadline)) return -ETIMEDOUT;
  pcr_wqtok t;
  pcr__wq_prepare(&s->wq, &t);
  if (ready(s)) {
    pcr__wq_cancel(&s->wq, &t);
    return 0;
  }
  return pcr__wq_sleep(&s->wq, &t, deadline);
}

int pcr__sem_acquire(pcr_sync *s, double deadline) {
  for (;;) {
    int64_t v = atomic_load(&s->value);
    while (v > 0)
      if (atomic_compare_exchange_weak(&s->value, &v, v - 1)) return 0;
    int r = waiton(s, sem_ready, deadline);
    if (r < 0) return r;
  }
}

int pcr__sem_release(pcr_sync *s, int64_t n) {
  int64_t v = atomic_load(&s->value);
  do {
    if (s->kind == PCR_SYNC_BSEM && v + n > s->limit) return -ERANGE;
  } while (!atomic_compare_exchange_weak(&s->value, &v, v + n));
  pcr__wq_wake(&s->wq, n > INT32_MAX ? INT32_MAX : (int)n);
  return 0;
}

void pcr__event_set(pcr_sync *s, int on) {
  atomic_store(&s->value, on ? 1 : 0);
  if (on) pcr__wq_wake(&s->wq, INT32_MAX);
}

int pcr__event_wait(pcr_sync *s, double deadline) {
  for (;;) {
    if (sem_ready(s)) return 1;
    int r = waiton(s, sem_ready, deadline);
    if (r == -ETIMEDOUT) return sem_ready(s);
    if (r < 0) return r;
  }
}

/* -- Conditions ------------------------------------------------------- */

/* seq counts notifies: notify bumps it under the lock, whether or not
** anyone sleeps yet, so a waiter between its sleeps (or retaking the lock)
** still sees that it was notified. */
int pcr__cond_wait(pcr_sync *c, double deadline) {
  pcr_sync *l = c->cond_lock;
  if (!pcr__sync_owned(l)) return -EPERM;
  uint32_t seq = atomic_load(&c->wq.seq), depth = l->depth;
  l->depth = 0;
  pcr__lock_unlock(&l->lock);
  int r = 0;
  while (atomic_load(&c->wq.seq) == seq) {
    pcr_wqtok t;
    pcr__wq_prepare(&c->wq, &t);
    t.seq = seq;  /* a notify since the unlock: the futex returns at once */
    if ((r = pcr__wq_sleep(&c->wq, &t, deadline)) < 0) break;
  }
  while (pcr__lock_lock(&l->lock, -1) == -EINTR) {}
  l->depth = depth;
  if (atomic_load(&c->wq.seq) != seq) return 1;
  return r == -EINTR ? -EINTR : 0;
}

int pcr__cond_notify(pcr_sync *c, int n) {
  if (!pcr__sync_owned(c->cond_lock)) return -EPERM;
  atomic_fetch_add(&c->wq.seq, 1);
  if (atomic_load(&c->wq.nsleep)) pcr__futex_wake(&c->wq.seq, n);
  return 0;
}

/* -- Barriers --------------------------------------------------------- */

static void block(pcr_sync *b) {
  while (pcr__lock_lock(&b->lock, -1) == -EINTR) {}
}

static int draining(pcr_sync *b) {
  return atomic_load(&b->value) >= b->limit && !atomic_load(&b->broken);
}

int pcr__barrier_arrive(pcr_sync *b, uint32_t *gen, double deadline) {
  for (;;) {
    block(b);
    if (atomic_load(&b->broken)) {
      pcr__lock_unlock(&b->lock);
      return -EPIPE;
    }
    if (atomic_load(&b->value) < b->limit) break;
    /* The last arrival of the round runs the action: wait for the next. */
    pcr__lock_unlock(&b->lock);
    if (expired(deadline)) return -ETIMEDOUT;
    pcr_wqtok t;
    pcr__wq_prepare(&b->wq, &t);
    if (!draining(b)) {
      pcr__wq_cancel(&b->wq, &t);
      continue;
    }
    int r = pcr__wq_sleep(&b->wq, &t, deadline);
    if (r < 0) return r;
  }
  *gen = atomic_load(&b->gen);
  int64_t idx = atomic_fetch_add(&b->value, 1);
  pcr__lock_unlock(&b->lock);
  return (int)idx;
}

/* The last arrival, after the action: open the barrier for its round,
** unless a reset or abort came first (-EPIPE). */
int pcr__barrier_pass(pcr_sync *b, uint32_t gen) {
  block(b);
  int ok = atomic_load(&b->gen) == gen && !atomic_load(&b->broken);
  if (ok) {
    atomic_store(&b->value, 0);
    atomic_fetch_add(&b->gen, 1);
  }
  pcr__lock_unlock(&b->lock);
  pcr__wq_wake(&b->wq, INT32_MAX);
  return ok ? 0 : -EPIPE;
}

void pcr__barrier_break(pcr_sync *b) {
  block(b);
  atomic_store(&b->broken, 1);
  pcr__lock_unlock(&b->lock);
  pcr__wq_wake(&b->wq, INT32_MAX);
}

void pcr__barrier_reset(pcr_sync *b) {
  block(b);
  if (atomic_load(&b->value) > 0)  /* its waiters fail, as broken */
    b->brokengen = atomic_load(&b->gen) + 1;
  atomic_store(&b->value, 0);
  atomic_fetch_add(&b->gen, 1);
  atomic_store(&b->broken, 0);
  pcr__lock_unlock(&b->lock);
  pcr__wq_wake(&b->wq, INT32_MAX);
}

int pcr__barrier_wait(pcr_sync *b, uint32_t gen, double deadline) {
  for (;;) {
    if (atomic_load(&b->gen) != gen) {
      block(b);
      int broke = b->brokengen == gen + 1;
      pcr__lock_unlock(&b->lock);
      return broke ? -EPIPE : 0;
    }
    if (atomic_load(&b->broken)) return -EPIPE;
    if (expired(deadline)) return -ETIMEDOUT;
    pcr_wqtok t;
    pcr__wq_prepare(&b->wq, &t);
    if (atomic_load(&b->gen) != gen || atomic_load(&b->broken)) {
      pcr__wq_cancel(&b->wq, &t);
      continue;
    }
    int r = pcr__wq_sleep(&b->wq, &t, deadline);
    if (r == -EINTR) return r;
  }
}
