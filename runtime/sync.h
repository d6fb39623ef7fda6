/* Synchronization objects in the arena: locks (robust: a dead owner's lock
** passes to the next acquirer, which is told), reentrant locks,
** semaphores, events, conditions and barriers. All waits take a deadline
** (pcr__now() seconds, < 0 forever, 0 try once) and cost no CPU. Free of
** Lua: a barrier's action is run by the binding. */
#ifndef PCR_SYNC_H
#define PCR_SYNC_H

#include "futex.h"
#include "shm.h"

enum {
  PCR_SYNC_LOCK = 1, PCR_SYNC_RLOCK, PCR_SYNC_SEM, PCR_SYNC_BSEM,
  PCR_SYNC_EVENT, PCR_SYNC_COND, PCR_SYNC_BARRIER
};

typedef struct pcr_sync {
  pcr_obj hdr;
  uint32_t kind;                /* PCR_SYNC_*; constant */
  uint32_t depth;               /* rlock: recursion depth; owner only */
  pcr_lock lock;                /* lock, rlock, barrier's state */
  _Atomic int64_t value;        /* semaphore count; event flag; barrier:
                                   parties arrived */
  int64_t limit;                /* bounded semaphore: its maximum;
                                   barrier: parties */
  _Atomic uint32_t gen;         /* barrier: generation */
  _Atomic uint32_t broken;      /* barrier: broken until reset */
  uint32_t brokengen;           /* barrier: a generation reset broke */
  struct pcr_sync *cond_lock;   /* condition: its lock (one reference) */
  void *blob;                   /* barrier: encoded action (arena block) */
  size_t bloblen;
  double timeout;               /* barrier: wait's default timeout, when */
  uint32_t has_timeout;         /* has_timeout */
  pcr_waitq wq;
} pcr_sync;

/* A new object of kind with initial value v (semaphores: the count;
** barrier: parties); NULL when the arena is full. Its reference is
** recorded in the ledger at *idx (pcr__frame_obj_new). */
pcr_sync *pcr__sync_new(uint32_t kind, int64_t v, long *idx);
/* Set the destructor; once, before any fork. */
void pcr__sync_init(void);

/* Locks and rlocks. acquire returns 0, PCR_LOCK_OWNERDEAD (acquired from a
** dead owner), -ETIMEDOUT, -EINTR or -EDEADLK (a plain lock this process
** already holds). release: 0 or -EPERM (not the owner). */
int pcr__sync_acquire(pcr_sync *s, double deadline);
int pcr__sync_release(pcr_sync *s);
/* Whether this process holds the (r)lock. */
int pcr__sync_owned(pcr_sync *s);

/* Semaphores: acquire 0, -ETIMEDOUT or -EINTR; release 0 or -ERANGE
** (a bounded semaphore released above its start value). */
int pcr__sem_acquire(pcr_sync *s, double deadline);
int pcr__sem_release(pcr_sync *s, int64_t n);

/* Events: wait returns 1 once set, 0 on timeout, -EINTR. */
void pcr__event_set(pcr_sync *s, int on);
int pcr__event_wait(pcr_sync *s, double deadline);

/* Conditions: the caller holds cond_lock. wait releases it, sleeps until
** notified or the deadline, and takes it again. Returns 1 notified, 0
** timed out, -EPERM (lock not held) or -EINTR (lock retaken). A waiter may
** wake without a notify, as with POSIX condition variables. */
int pcr__cond_wait(pcr_sync *c, double deadline);
int pcr__cond_notify(pcr_sync *c, int n);

/* Barriers. arrive returns the arrival index (parties - 1 for the last
** one, which must then call pcr__barrier_pass, after the action), -EPIPE
** when broken, or -ETIMEDOUT / -EINTR while it waited for the previous
** round to leave; *gen receives the generation to wait on. pass returns 0,
** or -EPIPE when a reset or abort came during the action. wait blocks for
** the others: 0 passed, -EPIPE broken, -ETIMEDOUT (the caller decides
** whether that breaks it) or -EINTR. */
int pcr__barrier_arrive(pcr_sync *b, uint32_t *gen, double deadline);
int pcr__barrier_pass(pcr_sync *b, uint32_t gen);
int pcr__barrier_wait(pcr_sync *b, uint32_t gen, double deadline);
void pcr__barrier_break(pcr_sync *b);
void pcr__barrier_reset(pcr_sync *b);

#endif
