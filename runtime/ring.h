/* A byte ring in the arena: one stream of frames in one direction. Any
** number of processes may write or read it; a frame is written and read
** whole under the ring's writer/reader lock. Waiting is the caller's. */
#ifndef PCR_RING_H
#define PCR_RING_H

#include "futex.h"
#include "shm.h"

typedef struct pcr_ring {
  pcr_obj hdr;
  uint64_t cap;               /* power of two; constant */
  pcr_lock wlock;             /* held by the process writing a frame */
  pcr_lock rlock;             /* held by the process reading a frame */
  _Alignas(64) _Atomic uint64_t head;  /* bytes written; writer, release */
  _Atomic uint32_t rsleep;    /* 1 while a reader sleeps; reader sets */
  _Alignas(64) _Atomic uint64_t tail;  /* bytes read; reader, release */
  _Atomic uint32_t wsleep;    /* 1 while a writer waits for space */
  _Alignas(64) char data[];
} pcr_ring;
_Static_assert(offsetof(pcr_ring, data) % 64 == 0, "ring data aligned");

/* Allocate a ring of cap bytes (rounded up to a power of two); NULL when
** the arena is full. Freed by pcr__obj_unref. */
pcr_ring *pcr__ring_new(size_t cap);

/* Copy up to n bytes into the ring; returns how many fitted (0 when
** full). Publishes them to readers. Caller holds wlock. */
size_t pcr__ring_write(pcr_ring *r, const void *p, size_t n);
/* Copy up to n bytes out of the ring; returns how many (0 when empty).
** Caller holds rlock. */
size_t pcr__ring_read(pcr_ring *r, void *p, size_t n);

/* Write a header and payload as one publish; the caller checked that
** hn + n bytes of space are free. Caller holds wlock. */
void pcr__ring_write_frame(pcr_ring *r, const void *hdr, size_t hn,
                           const void *p, size_t n);

static inline size_t pcr__ring_avail(pcr_ring *r) {
  return (size_t)(atomic_load_explicit(&r->head, memory_order_acquire) -
                  atomic_load_explicit(&r->tail, memory_order_relaxed));
}

static inline size_t pcr__ring_space(pcr_ring *r) {
  return (size_t)(r->cap - (atomic_load_explicit(&r->head,
                    memory_order_relaxed) -
                  atomic_load_explicit(&r->tail, memory_order_acquire)));
}

#endif
