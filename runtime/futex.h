/* Futex waits and the robust cross-process lock. Free of Lua; all state
** lives in shared memory the caller provides. */
#ifndef PCR_FUTEX_H
#define PCR_FUTEX_H

#include <stdatomic.h>
#include <stdint.h>

/* Monotonic clock in seconds. */
double pcr__now(void);

/* Sleep while *addr == val, until woken or `deadline` (pcr__now() seconds;
** < 0 waits forever). Returns 0 when woken or the value changed, -ETIMEDOUT,
** or -EINTR when a signal arrived (callers check for Ctrl-C then retry).
** Either process; async-signal-safe. */
int pcr__futex_wait(_Atomic uint32_t *addr, uint32_t val, double deadline);

/* Wake up to n waiters on addr (INT32_MAX for all). */
void pcr__futex_wake(_Atomic uint32_t *addr, int n);

/* A lock in shared memory. The word holds the owner's pid (0 when free)
** and PCR_LOCK_WAITERS when someone sleeps on it. A waiter checks, every
** PCR_LOCK_PROBE seconds, whether the owner still exists; if it died the
** lock is taken over and pcr__lock_lock returns PCR_LOCK_OWNERDEAD. */
typedef struct pcr_lock {
  _Atomic uint32_t word;
} pcr_lock;

#define PCR_LOCK_WAITERS 0x80000000u
#define PCR_LOCK_PROBE 0.05
#define PCR_LOCK_OWNERDEAD 1

/* Acquire. Returns 0, PCR_LOCK_OWNERDEAD (acquired; the previous owner died
** holding it), -ETIMEDOUT, -EINTR or -EDEADLK (this process holds it). */
int pcr__lock_lock(pcr_lock *l, double deadline);
/* Try once. Returns 0, PCR_LOCK_OWNERDEAD or -EBUSY. */
int pcr__lock_trylock(pcr_lock *l);
/* Release. Returns 0, or -EPERM when this process is not the owner. */
int pcr__lock_unlock(pcr_lock *l);

/* A wait queue: sleepers wait on seq; a waker bumps seq and calls futex
** wake only when someone sleeps, so the busy path makes no syscall. Each
** sleeper notes its pid in a slot: one that dies asleep is struck off by
** the next sleeper whose slice ends, so a dead waiter does not cost every
** later wake a syscall. */
#define PCR_WQ_SLOTS 32
#define PCR_WQ_SLICE 0.25  /* sleepers recheck their condition this often */

typedef struct pcr_waitq {
  _Atomic uint32_t seq;
  _Atomic uint32_t nsleep;
  _Atomic uint32_t nmany;   /* sleepers in pcr__wq_sleep_many: a wake of
                               one might pick one of them, so wake all */
  _Atomic uint32_t pid[PCR_WQ_SLOTS];
} pcr_waitq;

typedef struct pcr_wqtok {
  uint32_t seq;
  int slot;
} pcr_wqtok;

/* Count this process as a sleeper and read seq; the caller then rechecks
** its condition and calls pcr__wq_sleep (or pcr__wq_cancel). */
void pcr__wq_prepare(pcr_waitq *q, pcr_wqtok *t);
void pcr__wq_cancel(pcr_waitq *q, pcr_wqtok *t);
/* Sleep until woken, a slice or the deadline passes. Returns 0, -ETIMEDOUT
** (deadline passed) or -EINTR. Uncounts the sleeper. */
int pcr__wq_sleep(pcr_waitq *q, pcr_wqtok *t, double deadline);
/* Sleep on several queues at once (each prepared by the caller) until one
** is woken, a slice or the deadline passes; uncounts the sleeper in each.
** Returns as pcr__wq_sleep. n <= 128. */
int pcr__wq_sleep_many(pcr_waitq **qs, pcr_wqtok *ts, int n, double deadline);

/* Wake up to n sleepers, if any sleep; callers publish their change
** first. */
static inline void pcr__wq_wake(pcr_waitq *q, int n) {
  atomic_thread_fence(memory_order_seq_cst);
  if (atomic_load_explicit(&q->nsleep, memory_order_relaxed)) {
    atomic_fetch_add(&q->seq, 1);
    pcr__futex_wake(&q->seq, atomic_load_explicit(&q->nmany,
                    memory_order_relaxed) ? INT32_MAX : n);
  }
}

/* Whether process pid is gone (exited, or a zombie nobody reaped yet). */
int pcr__pid_dead(uint32_t pid);

/* This process's pid, cached and refreshed after fork. */
uint32_t pcr__self(void);
void pcr__self_reset(void);

#endif
