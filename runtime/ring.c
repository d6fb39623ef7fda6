/* Byte ring arithmetic: head and tail only grow; the position in data is
** the counter modulo cap. */
#include "ring.h"
#include "pcrdef.h"
#include "frame.h"

#include <string.h>

pcr_ring *pcr__ring_new(size_t cap, long *idx) {
  size_t c = 4096;
  while (c < cap) c <<= 1;
  pcr_ring *r = (pcr_ring *)pcr__frame_obj_new(sizeof(pcr_ring) + c,
                                               PCR_OBJ_RING, idx);
  if (r) r->cap = c;
  return r;
}

size_t pcr__ring_write(pcr_ring *r, const void *p, size_t n) {
  uint64_t h = atomic_load_explicit(&r->head, memory_order_relaxed);
  size_t space = pcr__ring_room(r, n);
  if (n > space) n = space;
  if (n == 0) return 0;
  pcr__wrap_in(r->data, r->cap, h, p, n);
  atomic_store_explicit(&r->head, h + n, memory_order_release);
  return n;
}

size_t pcr__ring_read(pcr_ring *r, void *p, size_t n) {
  uint64_t t = atomic_load_explicit(&r->tail, memory_order_relaxed);
  size_t avail = pcr__ring_ready(r, n);
  if (n > avail) n = avail;
  if (n == 0) return 0;
  pcr__wrap_out(r->data, r->cap, t, p, n);
  atomic_store_explicit(&r->tail, t + n, memory_order_release);
  return n;
}

void pcr__ring_write_frame(pcr_ring *r, const void *hdr, size_t hn,
                           const void *p, size_t n) {
  atomic_store_explicit(&r->head, pcr__ring_put_frame(r, hdr, hn, p, n),
                        memory_order_release);
}

uint64_t pcr__ring_put_frame(pcr_ring *r, const void *hdr, size_t hn,
                             const void *p, size_t n) {
  uint64_t h = atomic_load_explicit(&r->head, memory_order_relaxed);
  size_t at = (size_t)(h & (r->cap - 1));
  if (at + hn + n <= r->cap) {  /* common: no wrap */
    memcpy(r->data + at, hdr, hn);
    memcpy(r->data + at + hn, p, n);
  } else {
    pcr__wrap_in(r->data, r->cap, h, hdr, hn);
    pcr__wrap_in(r->data, r->cap, h + hn, p, n);
  }
  return h + hn + n;
}
