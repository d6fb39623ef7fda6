/* References carried by frames (frame.h). */
#include "frame.h"
#include "ring.h"
#include "futex.h"

#include <stdlib.h>
#include <string.h>

/* The ring counter a role changes with the reference, or NULL. */
static _Atomic uint32_t *rolecount(pcr_obj *o, unsigned role) {
  pcr_ring *r = (pcr_ring *)o;
  if (!role || o->type != PCR_OBJ_RING) return NULL;
  return role == PCR_REF_READER ? &r->readers : &r->writers;
}

uint64_t pcr__frame_take(pcr_obj *o, unsigned role) {
  pcr__obj_refop(o, 1, rolecount(o, role), NULL, 0, 0);
  return pcr__shm_offset(o) | role;
}

static pcr_obj *refobj(uint64_t ref) {
  pcr_obj *o = pcr__shm_at(ref & ~(uint64_t)15, sizeof(pcr_obj));
  return o && o->magic == PCR_OBJ_MAGIC ? o : NULL;
}

/* Drop reference ref of o, and clear entry e (NULL: none) with it; the
** last one leaves e DYING while the dtor runs, cleared with the free. */
static void unref(pcr_obj *o, uint64_t ref, _Atomic uint64_t *e) {
  unsigned role = (unsigned)(ref & PCR_REF_ROLES);
  uint64_t dying = (ref & ~(uint64_t)15) | PCR_REF_DYING;
  if (!pcr__obj_refop(o, -1, rolecount(o, role), e, 0, dying))
    pcr__obj_finish(o, (void *)e);
}

void pcr__frame_drop(uint64_t ref) {
  pcr_obj *o = refobj(ref);
  if (o) unref(o, ref, NULL);
}

/* -- Frames ------------------------------------------------------------ */

int pcr__frame_peek(const char *data, uint64_t cap, unsigned align,
                    uint64_t t, uint64_t h, pcr_frame *f) {
  uint64_t at = t + PCR_FRAME_HDR;
  if (h - t < PCR_FRAME_HDR) return -1;
  pcr__wrap_out(data, cap, t, &f->head, 8);
  f->nrefs = f->block = 0;
  f->whole = 1;
  if (f->head & PCR_FRAME_REFS) {
    if (h - at < 8) return -1;
    pcr__wrap_out(data, cap, at, &f->nrefs, 8);
    at += 8;
    if (f->nrefs > (h - at) / 8) return -1;
  }
  f->refs = at;
  at += 8 * f->nrefs;
  f->body = at;
  if (f->head & PCR_FRAME_STREAM) {
    uint64_t left = f->head >> 8, seg;
    while (left) {
      if (h - at < 8) return -1;
      pcr__wrap_out(data, cap, at, &seg, 8);
      at += 8;
      if (seg == PCR_FRAME_ABORT) {
        f->whole = 0;
        break;
      }
      if (seg > left || h - at < seg) return -1;
      at += seg;
      left -= seg;
    }
  } else {
    uint64_t len = (f->head & PCR_FRAME_INDIRECT) ? 8 : f->head >> 8;
    len = (len + align - 1) & ~(uint64_t)(align - 1);
    if (h - at < len) return -1;
    if (f->head & PCR_FRAME_INDIRECT)
      pcr__wrap_out(data, cap, at, &f->block, 8);
    at += len;
  }
  f->end = at;
  return 0;
}

void pcr__frame_release(const char *data, uint64_t cap, unsigned align,
                        _Atomic uint64_t *tail, uint64_t h) {
  pcr_frame f;
  while (pcr__frame_peek(data, cap, align, atomic_load(tail), h, &f) == 0) {
    atomic_store(tail, f.end);
    if (f.block) pcr__shm_free(pcr__shm_at(f.block, (size_t)(f.head >> 8)));
    for (uint64_t i = 0; f.whole && i < f.nrefs; i++) {
      uint64_t ref;
      pcr__wrap_out(data, cap, f.refs + 8 * i, &ref, 8);
      pcr__frame_drop(ref);
    }
  }
}

/* -- The ledger ---------------------------------------------------------
** A forked process records what it owns (references of handles it made
** or received, blocks it allocated) in a chain of arena chunks named in
** the arena's ledger table under its pid, so that whoever reaps it drops
** them when it was killed. An entry never moves: its index is the
** owner's (a handle's lidx). An object is recorded from its allocation
** on (pcr__shm_alloc_into stores the raw block's entry under the arena
** lock; once the object is set up, one store makes it a reference). A
** reference taken later is taken and recorded with one journal commit
** (pcr__ledger_take), and dropped and unrecorded with one (endentry); one
** recorded after it was taken (pcr__ledger_add) leaks on a death in
** between, never frees twice. A chunk is linked (as not ready) when it is
** allocated and marked ready once zeroed, so a reaper never reads a
** chunk's old bytes. */

#define NOTREADY 1u  /* in a link: the chunk is not set up yet */
#define MAXCHUNKS 40

typedef struct chunk {
  _Atomic uint64_t next;  /* the next chunk's offset, 0 */
  uint64_t cap;
  _Atomic uint64_t e[];   /* tagged references, 0 for none */
} chunk;

static int recording;           /* a forked process: its parent reaps it */
static uint32_t me;
static _Atomic uint64_t *slot;  /* the first chunk's link, in the arena */
static chunk *chunks[MAXCHUNKS];
static int nchunks;
static uint64_t total;          /* entries in all chunks */
static long *freeidx;           /* entries not in use */
static size_t nfree;
static long *pidx;              /* the pending references' entries */
static size_t npidx, cappidx;

static size_t ntk;

static void forget(void) {
  slot = NULL;
  nchunks = 0;  /* the parent's, and the parent's to free */
  total = nfree = npidx = ntk = 0;  /* the arrays are our copies: reused */
}

void pcr__ledger_forked(void) {
  recording = 1;
  me = 0;
  forget();
}

/* A process forked by other means (an embedding's zygote) holds a copy
** of its parent's ledger state: it records nothing. */
static int stale(void) {
  if (slot && me != pcr__self()) {
    recording = 0;
    forget();
  }
  return !recording;
}

static _Atomic uint64_t *entry(long i) {
  for (int k = 0; k < nchunks; k++) {
    if ((uint64_t)i < chunks[k]->cap) return &chunks[k]->e[i];
    i -= (long)chunks[k]->cap;
  }
  return NULL;
}

static int grow(void) {
  if (!slot) {
    me = pcr__self();
    if (!(slot = pcr__shm_ledger(me, 1))) return -1;
  }
  if (nchunks == MAXCHUNKS) return -1;
  uint64_t cap = nchunks ? 2 * chunks[nchunks - 1]->cap : 64;
  long *f = realloc(freeidx, sizeof *f * (size_t)(total + cap));
  if (!f) return -1;
  freeidx = f;
  _Atomic uint64_t *link = nchunks ? &chunks[nchunks - 1]->next : slot;
  chunk *c = pcr__shm_alloc_into(sizeof *c + 8 * cap, (void *)link, NOTREADY);
  if (!c) return -1;
  atomic_store(&c->next, 0);
  c->cap = cap;
  memset((void *)c->e, 0, 8 * cap);
  atomic_store(link, pcr__shm_offset(c));  /* ready */
  chunks[nchunks++] = c;
  for (uint64_t j = cap; j-- > 0;) freeidx[nfree++] = (long)(total + j);
  total += cap;
  return 0;
}

/* A free entry's index, or -1 (this process records nothing). */
static long reserve(void) {
  if (stale() || (!nfree && grow() < 0)) return -1;
  return freeidx[nfree - 1];
}

uint64_t pcr__ledger_take(pcr_obj *o, unsigned role, long *idx) {
  long i = reserve();  /* before the reference: growing may wait */
  uint64_t ref = pcr__shm_offset(o) | role;
  *idx = i;
  if (i < 0) return pcr__frame_take(o, role);
  nfree--;
  pcr__obj_refop(o, 1, rolecount(o, role), entry(i), ref, ref);  /* as one */
  return ref;
}

void pcr__ledger_add(uint64_t ref, long *idx) {
  long i = reserve();
  *idx = i;
  if (i < 0) return;
  nfree--;
  atomic_store(entry(i), ref);  /* recorded from here on */
}

void pcr__ledger_remove(long *idx) {
  long i = *idx;
  *idx = -1;
  if (i < 0 || stale() || (uint64_t)i >= total) return;
  atomic_store(entry(i), 0);
  freeidx[nfree++] = i;
}

/* End what entry e records, e cleared with it (one journal commit): a
** reference goes (unref), a raw block or a DYING object is freed. A death
** anywhere leaves e naming what is left to do, for the reaper. */
static void endentry(_Atomic uint64_t *e) {
  uint64_t ref = atomic_load(e);
  if (!ref) return;
  pcr_obj *o = pcr__shm_at(ref & ~(uint64_t)15, sizeof(pcr_obj));
  if (o && (ref & PCR_REF_RAW)) {  /* a block whose object was not set up */
    pcr__shm_free_from(o, (void *)e);
  } else if (o && (ref & PCR_REF_DYING)) {  /* it died ending an object */
    pcr__obj_finish(o, (void *)e);
  } else if (o && o->magic == PCR_OBJ_MAGIC) {
    unref(o, ref, e);
  } else {  /* nothing live: only the entry */
    atomic_store(e, 0);
  }
}

void pcr__ledger_drop(long *idx) {
  long i = *idx;
  *idx = -1;
  if (i < 0 || stale() || (uint64_t)i >= total) return;
  endentry(entry(i));
  freeidx[nfree++] = i;
}

pcr_obj *pcr__frame_obj_new(size_t size, uint32_t type, long *idx) {
  long i = idx ? reserve() : -1;
  if (idx) *idx = -1;
  if (i < 0) return pcr__obj_new(size, type);
  _Atomic uint64_t *e = entry(i);
  pcr_obj *o = pcr__shm_alloc_into(size, (void *)e, PCR_REF_RAW);
  if (!o) return NULL;
  nfree--;
  memset(o, 0, size);
  o->type = type;
  atomic_init(&o->refs, 1);
  o->magic = PCR_OBJ_MAGIC;
  atomic_store(e, pcr__shm_offset(o) | PCR_REF_PLAIN);  /* an object now */
  *idx = i;
  return o;
}

void pcr__frame_obj_drop(pcr_obj *o, long *idx) {
  if (idx && *idx >= 0) pcr__ledger_drop(idx);
  else if (o) pcr__obj_unref(o);
}

int pcr__ledger_pend(pcr_obj *o, unsigned role, uint64_t *ref) {
  if (npidx == cappidx) {  /* one entry per pending reference, always */
    size_t cap = cappidx ? 2 * cappidx : 16;
    long *p = realloc(pidx, sizeof *p * cap);
    if (!p) return -1;
    pidx = p;
    cappidx = cap;
  }
  long *idx = &pidx[npidx++];
  *idx = -1;
  *ref = stale() ? pcr__frame_take(o, role)
                 : pcr__ledger_take(o, role, idx);
  return 0;
}

void pcr__ledger_unpend(size_t n) {
  for (size_t j = npidx - (n < npidx ? n : npidx); j < npidx; j++)
    pcr__ledger_remove(&pidx[j]);
}

void pcr__frame_publish(_Atomic uint64_t *head, uint64_t h, void *blk,
                        size_t n) {
  size_t from = npidx - (n < npidx ? n : npidx);
  if (!blk && from == npidx) {
    atomic_store_explicit(head, h, memory_order_release);
    return;
  }
  if (npidx - from + 2 > PCR_JOURNAL) {  /* too many for one commit */
    pcr__shm_handoff(blk);
    pcr__ledger_unpend(n);
    atomic_store_explicit(head, h, memory_order_release);
    return;
  }
  int rec = !stale();
  pcr__shm_jbegin();
  pcr__shm_jhandoff(blk);
  for (size_t j = from; rec && j < npidx; j++)
    if (pidx[j] >= 0 && (uint64_t)pidx[j] < total)
      pcr__shm_jput((void *)entry(pidx[j]), 0, 1);
  pcr__shm_jput((void *)head, h, 1);
  pcr__shm_jend();
  for (size_t j = from; j < npidx; j++) {
    if (rec && pidx[j] >= 0 && (uint64_t)pidx[j] < total)
      freeidx[nfree++] = pidx[j];
    pidx[j] = -1;
  }
}

void pcr__ledger_unpend_to(size_t mark) {
  if (mark > npidx) return;
  pcr__ledger_unpend(npidx - mark);
  npidx = mark;
}

/* -- Taken frames -------------------------------------------------------
** The references of frames this process took and has not decoded yet:
** recorded in the ledger from the consuming store on (a receiver killed
** before it decoded them leaves them to its reaper), handed to the
** handles the decoder makes, the rest dropped once the decode is over. */

typedef struct taken { uint64_t ref; long idx; } taken;
static taken *tk;
static size_t captk;

int pcr__ledger_ensure(size_t n) {
  if (ntk + n > captk) {
    size_t cap = captk ? captk : 16;
    while (cap < ntk + n) cap *= 2;
    taken *p = realloc(tk, sizeof *p * cap);
    if (!p) return -1;
    tk = p;
    captk = cap;
  }
  while (!stale() && nfree < n)
    if (grow() < 0) return -1;
  return 0;
}

void pcr__taken_ref(uint64_t ref) {
  if (ntk == captk && pcr__ledger_ensure(1) < 0) return;  /* leaks it */
  tk[ntk].ref = ref;
  tk[ntk].idx = -1;
  if (!stale() && nfree) {
    long i = freeidx[--nfree];
    atomic_store(entry(i), ref);
    tk[ntk].idx = i;
  }
  ntk++;
}

void pcr__taken_block(void *blk, long *idx) {
  *idx = -1;
  if (!blk || stale() || !nfree) return;
  long i = freeidx[--nfree];
  atomic_store(entry(i), pcr__shm_offset(blk) | PCR_REF_RAW);
  *idx = i;
}

void pcr__ledger_free(void *blk, long *idx) {
  long i = *idx;
  *idx = -1;
  if (!blk) return;
  if (i < 0 || stale() || (uint64_t)i >= total) {
    pcr__shm_free(blk);
    return;
  }
  pcr__shm_free_from(blk, (void *)entry(i));  /* unrecorded with it */
  freeidx[nfree++] = i;
}

void pcr__frame_consume(_Atomic uint64_t *tail, uint64_t t,
                        const uint64_t *refs, size_t n, void *blk,
                        long *blkidx) {
  if (blkidx) *blkidx = -1;
  if ((!n && !blk) || stale() || n + 2 > PCR_JOURNAL || nfree < n + 1 ||
      ntk + n > captk) {
    atomic_store_explicit(tail, t, memory_order_release);
    for (size_t i = 0; i < n; i++) pcr__taken_ref(refs[i]);
    if (blk) pcr__taken_block(blk, blkidx);
    return;
  }
  pcr__shm_jbegin();
  for (size_t i = 0; i < n; i++) {
    long k = freeidx[--nfree];
    pcr__shm_jput((void *)entry(k), refs[i], 1);
    tk[ntk].ref = refs[i];
    tk[ntk++].idx = k;
  }
  if (blk) {
    long k = freeidx[--nfree];
    pcr__shm_jput((void *)entry(k), pcr__shm_offset(blk) | PCR_REF_RAW, 1);
    *blkidx = k;
  }
  pcr__shm_jput((void *)tail, t, 1);
  pcr__shm_jend();
}

int pcr__taken_adopt(uint64_t ref, long *idx) {
  for (size_t j = ntk; j-- > 0;)
    if (tk[j].ref == ref) {
      *idx = tk[j].idx;
      tk[j] = tk[--ntk];  /* order does not matter below a mark */
      return 0;
    }
  *idx = -1;
  return -1;
}

size_t pcr__taken_mark(void) { return ntk; }

void pcr__taken_end(size_t mark) {
  while (ntk > mark) {
    taken t = tk[--ntk];
    if (t.idx >= 0) pcr__ledger_drop(&t.idx);
    else pcr__frame_drop(t.ref);
  }
}

/* End what the chain of chunks at *head records and free the chunks, the
** first one each time: each entry is cleared with its end and each chunk
** unlinked with its free (one journal commit each), so a death anywhere
** leaves the rest named at *head for whoever goes on, and nothing goes
** twice. (Named off the table first, a ledger its process was killed
** dropping at exit was nobody's: a pool worker's, 1 KiB.) */
static void dropchain(_Atomic uint64_t *head) {
  uint64_t link;
  while ((link = atomic_load(head))) {
    chunk *c = pcr__shm_at(link & ~(uint64_t)NOTREADY, sizeof(chunk));
    uint64_t next = 0;
    if (!c) {
      atomic_store(head, 0);
      return;
    }
    if (!(link & NOTREADY)) {  /* else allocated, never set up */
      for (uint64_t i = 0; i < c->cap; i++) endentry(&c->e[i]);
      next = atomic_load(&c->next);
    }
    pcr__shm_free_set(c, (void *)head, next);
  }
}

/* What this process still owns at exit (normally nothing: its handles
** were released) goes as it would at its reaping. */
void pcr__ledger_exit(void) {
  if (stale() || !slot) return;
  dropchain(slot);
  pcr__shm_ledger_clear(me);
  forget();
}

void pcr__frame_reap(uint32_t pid) {
  /* pid may have died in a commit: its entries are read once it is done */
  pcr__shm_settle();
  _Atomic uint64_t *s = pcr__shm_ledger(pid, 0);
  if (s) {
    dropchain(s);
    pcr__shm_ledger_clear(pid);
  }
  pcr__shm_reap(pid);
}
