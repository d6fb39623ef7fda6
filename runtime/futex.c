/* Futex wait/wake with deadlines and a robust pid-owned lock. Callers own
** the memory; this file never allocates and never touches Lua. */
#include "futex.h"
#include "pcrdef.h"

#include <linux/futex.h>
#include <stdint.h>
#include <pthread.h>
#include <signal.h>
#include <stdio.h>
#include <string.h>
#include <sys/syscall.h>
#include <time.h>
#include <unistd.h>

static uint32_t self_pid;

void pcr__self_reset(void) { self_pid = (uint32_t)getpid(); }

/* The pid is cached; a fork by anyone (ffi's C.fork included) runs the
** atfork handler, so the child never acts under its parent's pid. */
uint32_t pcr__self(void) {
  if (PCR_UNLIKELY(self_pid == 0)) {
    static int registered;
    if (!registered) {
      registered = 1;
      pthread_atfork(NULL, NULL, pcr__self_reset);
    }
    self_pid = (uint32_t)getpid();
  }
  return self_pid;
}

double pcr__now(void) {
  struct timespec ts;
  clock_gettime(CLOCK_MONOTONIC, &ts);
  return (double)ts.tv_sec + (double)ts.tv_nsec * 1e-9;
}

int pcr__futex_wait(_Atomic uint32_t *addr, uint32_t val, double deadline) {
  struct timespec ts, *tp = NULL;
  if (deadline >= 0) {
    double left = deadline - pcr__now();
    if (left <= 0) return -ETIMEDOUT;
    ts.tv_sec = (time_t)left;
    ts.tv_nsec = (long)((left - (double)ts.tv_sec) * 1e9);
    tp = &ts;
  }
  /* Shared (not FUTEX_PRIVATE) because the word lives in the arena. */
  long r = syscall(SYS_futex, (uint32_t *)addr, FUTEX_WAIT, val, tp, NULL, 0);
  if (r == 0 || errno == EAGAIN) return 0;
  return -errno;
}

void pcr__futex_wake(_Atomic uint32_t *addr, int n) {
  syscall(SYS_futex, (uint32_t *)addr, FUTEX_WAKE, n, NULL, NULL, 0);
}

int pcr__pid_dead(uint32_t pid) {
  if (kill((pid_t)pid, 0) == -1 && errno == ESRCH) return 1;
  char path[64], buf[256];
  snprintf(path, sizeof path, "/proc/%u/stat", pid);
  FILE *f = fopen(path, "re");
  if (!f) {
    /* kill() found it: alive, unless /proc works and says it is gone
    ** (without /proc, e.g. in a chroot, a live owner must not lose its
    ** lock). */
    static int procfs = -1;
    if (procfs < 0) procfs = access("/proc/self/stat", R_OK) == 0;
    return procfs && errno == ENOENT;
  }
  size_t n = fread(buf, 1, sizeof buf - 1, f);
  fclose(f);
  buf[n] = '\0';
  const char *p = strrchr(buf, ')');  /* comm may hold spaces */
  return p && (p[2] == 'Z' || p[2] == 'X');
}

/* Take the lock over from a dead owner: replace exactly the word we saw. */
static int takeover(pcr_lock *l, uint32_t seen) {
  uint32_t me = pcr__self() | (seen & PCR_LOCK_WAITERS);
  if (atomic_compare_exchange_strong(&l->word, &seen, me))
    return PCR_LOCK_OWNERDEAD;
  return -EAGAIN;
}

int pcr__lock_trylock(pcr_lock *l) {
  uint32_t expect = 0;
  if (atomic_compare_exchange_strong_explicit(&l->word, &expect, pcr__self(),
        memory_order_acquire, memory_order_relaxed))
    return 0;
  uint32_t owner = expect & ~PCR_LOCK_WAITERS;
  if (owner != pcr__self() && pcr__pid_dead(owner) &&
      takeover(l, expect) == PCR_LOCK_OWNERDEAD)
    return PCR_LOCK_OWNERDEAD;
  return -EBUSY;
}

int pcr__lock_lock(pcr_lock *l, double deadline) {
  uint32_t me = pcr__self(), w = 0;
  if (PCR_LIKELY(atomic_compare_exchange_strong_explicit(&l->word, &w, me,
        memory_order_acquire, memory_order_relaxed)))
    return 0;
  for (int spin = 0; spin < 200; spin++) {  /* short holds are common */
    pcr__cpu_relax();
    w = 0;
    if (atomic_compare_exchange_weak_explicit(&l->word, &w, me,
          memory_order_acquire, memory_order_relaxed))
      return 0;
  }
  if ((w & ~PCR_LOCK_WAITERS) == me) return -EDEADLK;
  double probe = pcr__now() + PCR_LOCK_PROBE;
  for (;;) {
    w = atomic_load(&l->word);
    if (w == 0) {
      /* Keep the waiters bit: others may still sleep. */
      if (atomic_compare_exchange_strong(&l->word, &w, me | PCR_LOCK_WAITERS))
        return 0;
      continue;
    }
    if (!(w & PCR_LOCK_WAITERS)) {
      if (!atomic_compare_exchange_strong(&l->word, &w, w | PCR_LOCK_WAITERS))
        continue;
      w |= PCR_LOCK_WAITERS;
    }
    double until = probe;
    if (deadline >= 0 && deadline < until) until = deadline;
    int r = pcr__futex_wait(&l->word, w, until);
    if (r == -EINTR) return r;
    double now = pcr__now();
    if (deadline >= 0 && now >= deadline) return -ETIMEDOUT;
    if (now >= probe) {
      probe = now + PCR_LOCK_PROBE;
      w = atomic_load(&l->word);
      if (w && pcr__pid_dead(w & ~PCR_LOCK_WAITERS) &&
          takeover(l, w) == PCR_LOCK_OWNERDEAD)
        return PCR_LOCK_OWNERDEAD;
    }
  }
}

int pcr__lock_unlock(pcr_lock *l) {
  uint32_t w = atomic_load_explicit(&l->word, memory_order_relaxed);
  if ((w & ~PCR_LOCK_WAITERS) != pcr__self()) return -EPERM;
  w = atomic_exchange_explicit(&l->word, 0, memory_order_release);
  if (w & PCR_LOCK_WAITERS) pcr__futex_wake(&l->word, 1);
  return 0;
}

/* -- Wait queues ------------------------------------------------------ */

void pcr__wq_prepare(pcr_waitq *q, pcr_wqtok *t) {
  uint32_t me = pcr__self();
  t->seq = atomic_load(&q->seq);
  t->slot = -1;
  for (int i = 0, j = (int)(me % PCR_WQ_SLOTS); i < PCR_WQ_SLOTS; i++) {
    uint32_t z = 0;
    if (atomic_compare_exchange_strong(&q->pid[(j + i) % PCR_WQ_SLOTS], &z,
                                       me)) {
      t->slot = (j + i) % PCR_WQ_SLOTS;
      break;
    }
  }
  atomic_fetch_add(&q->nsleep, 1);  /* seq_cst: pairs with pcr__wq_wake */
}

void pcr__wq_cancel(pcr_waitq *q, pcr_wqtok *t) {
  if (t->slot >= 0) atomic_store(&q->pid[t->slot], 0);
  atomic_fetch_sub(&q->nsleep, 1);
}

/* Strike off sleepers that died asleep. The CAS lets one healer win.
** Each call looks at a few slots only, in turn, so that many sleepers do
** not each probe every other one at every slice. */
static void heal(pcr_waitq *q) {
  static unsigned next;
  uint32_t me = pcr__self();
  for (int k = 0; k < 4; k++) {
    int i = (int)(next++ % PCR_WQ_SLOTS);
    uint32_t p = atomic_load_explicit(&q->pid[i], memory_order_relaxed);
    if (p && p != me && pcr__pid_dead(p) &&
        atomic_compare_exchange_strong(&q->pid[i], &p, 0))
      atomic_fetch_sub(&q->nsleep, 1);
  }
}

int pcr__wq_sleep(pcr_waitq *q, pcr_wqtok *t, double deadline) {
  double now = pcr__now(), until = now + PCR_WQ_SLICE;
  if (deadline >= 0 && deadline < until) until = deadline;
  int r = until > now ? pcr__futex_wait(&q->seq, t->seq, until) : -ETIMEDOUT;
  pcr__wq_cancel(q, t);
  if (r == -EINTR) return r;
  if (r == -ETIMEDOUT) {
    if (deadline >= 0 && pcr__now() >= deadline) return -ETIMEDOUT;
    heal(q);
  }
  return 0;
}

#ifndef SYS_futex_waitv
#define SYS_futex_waitv 449
#endif

struct waitv {  /* struct futex_waitv, Linux 5.16 */
  uint64_t val, uaddr;
  uint32_t flags, reserved;
};

int pcr__wq_sleep_many(pcr_waitq **qs, pcr_wqtok *ts, int n,
                       double deadline) {
  struct waitv w[128];
  for (int i = 0; i < n; i++) atomic_fetch_add(&qs[i]->nmany, 1);
  double now = pcr__now(), until = now + PCR_WQ_SLICE;
  if (deadline >= 0 && deadline < until) until = deadline;
  for (int i = 0; i < n; i++)
    w[i] = (struct waitv){ ts[i].seq, (uint64_t)(uintptr_t)&qs[i]->seq,
                           2 /* FUTEX2_SIZE_U32, shared */, 0 };
  struct timespec abs;
  clock_gettime(CLOCK_MONOTONIC, &abs);
  double left = until - now;
  if (left < 0) left = 0;
  abs.tv_sec += (time_t)left;
  abs.tv_nsec += (long)((left - (double)(time_t)left) * 1e9);
  if (abs.tv_nsec >= 1000000000L) { abs.tv_sec++; abs.tv_nsec -= 1000000000L; }
  long r = syscall(SYS_futex_waitv, w, (unsigned)n, 0, &abs,
                   CLOCK_MONOTONIC);
  int e = r >= 0 || errno == EAGAIN ? 0 : -errno;
  if (e == -ENOSYS) {  /* older kernels: sleep briefly, callers recheck */
    struct timespec ts = {0, 1000000};
    nanosleep(&ts, NULL);
    e = 0;
  }
  for (int i = 0; i < n; i++) {
    atomic_fetch_sub(&qs[i]->nmany, 1);
    pcr__wq_cancel(qs[i], &ts[i]);
  }
  if (e == -EINTR) return e;
  if (e == -ETIMEDOUT) {
    if (deadline >= 0 && pcr__now() >= deadline) return -ETIMEDOUT;
    for (int i = 0; i < n; i++) heal(qs[i]);
  }
  return 0;
}
