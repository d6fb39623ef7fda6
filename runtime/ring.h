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
  /* The writers' line: only a sleeping reader writes here (rsleep). */
  _Alignas(64) pcr_lock wlock;         /* held while writing a frame */
  _Atomic uint32_t rsleep;    /* 1 while a reader sleeps; reader sets */
  _Atomic uint32_t readers;   /* handles that read it, all processes */
  _Atomic uint64_t head;      /* bytes written; writer, release */
  uint64_t tailseen;          /* writer's last view of tail; under wlock */
  /* The readers' line, mirror image. */
  _Alignas(64) pcr_lock rlock;         /* held while reading a frame */
  _Atomic uint32_t wsleep;    /* 1 while a writer waits for space */
  _Atomic uint32_t writers;   /* handles that write it, all processes */
  _Atomic uint64_t tail;      /* bytes read; reader, release */
  uint64_t headseen;          /* reader's last view of head; under rlock */
  _Alignas(64) char data[];
} pcr_ring;
_Static_assert(offsetof(pcr_ring, data) % 64 == 0, "ring data aligned");

/* Allocate a ring of cap bytes (rounded up to a power of two); NULL when
** the arena is full. Its reference is recorded in the ledger at *idx
** (pcr__frame_obj_new). Freed by pcr__obj_unref. */
pcr_ring *pcr__ring_new(size_t cap, long *idx);

/* Copy up to n bytes into the ring; returns how many fitted (0 when
** full). Publishes them to readers. Caller holds wlock. */
size_t pcr__ring_write(pcr_ring *r, const void *p, size_t n);
/* Copy up to n bytes out of the ring; returns how many (0 when empty).
** Caller holds rlock. */
size_t pcr__ring_read(pcr_ring *r, void *p, size_t n);

/* Free space as the writer sees it, reading the shared tail only when
** the cached view says there is not enough. Caller holds wlock. */
static inline size_t pcr__ring_room(pcr_ring *r, size_t want) {
  uint64_t h = atomic_load_explicit(&r->head, memory_order_relaxed);
  size_t room = (size_t)(r->cap - (h - r->tailseen));
  if (room >= want) return room;
  r->tailseen = atomic_load_explicit(&r->tail, memory_order_acquire);
  return (size_t)(r->cap - (h - r->tailseen));
}

/* Bytes readable as the reader sees it; mirror of pcr__ring_room. */
static inline size_t pcr__ring_ready(pcr_ring *r, size_t want) {
  uint64_t t = atomic_load_explicit(&r->tail, memory_order_relaxed);
  size_t ready = (size_t)(r->headseen - t);
  if (ready >= want) return ready;
  r->headseen = atomic_load_explicit(&r->head, memory_order_acquire);
  return (size_t)(r->headseen - t);
}

/* Write a header and payload as one publish; the caller checked that
** hn + n bytes of space are free. Caller holds wlock. */
void pcr__ring_write_frame(pcr_ring *r, const void *hdr, size_t hn,
                           const void *p, size_t n);
/* As pcr__ring_write_frame, but unpublished: returns the head that
** publishes it (pcr__frame_publish). */
uint64_t pcr__ring_put_frame(pcr_ring *r, const void *hdr, size_t hn,
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
