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

/* Whether process pid is gone (exited, or a zombie nobody reaped yet). */
int pcr__pid_dead(uint32_t pid);

/* This process's pid, cached and refreshed after fork. */
uint32_t pcr__self(void);
void pcr__self_reset(void);

#endif
