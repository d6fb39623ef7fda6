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
  size_t at = (size_t)(h & (r->cap - 1)), first = r->cap - at;
  if (first >= n) {
    memcpy(r->data + at, p, n);
  } else {
    memcpy(r->data + at, p, first);
    memcpy(r->data, (const char *)p + first, n - first);
  }
  atomic_store_explicit(&r->head, h + n, memory_order_release);
  return n;
}

size_t pcr__ring_read(pcr_ring *r, void *p, size_t n) {
  uint64_t t = atomic_load_explicit(&r->tail, memory_order_relaxed);
  size_t avail = pcr__ring_ready(r, n);
  if (n > avail) n = avail;
  if (n == 0) return 0;
  size_t at = (size_t)(t & (r->cap - 1)), first = r->cap - at;
  if (first >= n) {
    memcpy(p, r->data + at, n);
  } else {
    memcpy(p, r->data + at, first);
    memcpy((char *)p + first, r->data, n - first);
  }
  atomic_store_explicit(&r->tail, t + n, memory_order_release);
  return n;
}

void pcr__ring_write_frame(pcr_ring *r, const void *hdr, size_t hn,
                           const void *p, size_t n) {
  uint64_t h = atomic_load_explicit(&r->head, memory_order_relaxed);
  size_t mask = r->cap - 1, at = (size_t)(h & mask);
  if (at + hn + n <= r->cap) {  /* common: no wrap */
    memcpy(r->data + at, hdr, hn);
    memcpy(r->data + at + hn, p, n);
  } else {
    for (size_t i = 0; i < hn; i++)
      r->data[(at + i) & mask] = ((const char *)hdr)[i];
    at = (at + hn) & mask;
    size_t first = r->cap - at < n ? r->cap - at : n;
    memcpy(r->data + at, p, first);
    memcpy(r->data, (const char *)p + first, n - first);
  }
  atomic_store_explicit(&r->head, h + hn + n, memory_order_release);
}
