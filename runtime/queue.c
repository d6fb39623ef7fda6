/* Queues in the arena: frames (frame.h) in a chain of ring segments, each
** padded to 8 bytes so that a header never wraps; a frame never spans two
** segments. Writers publish a frame by moving head after copying it,
** readers consume one by moving tail after copying it out, so a process
** killed mid-put or mid-get leaves no half frame behind. */
#include "queue.h"
#include "frame.h"
#include "pcrdef.h"

#include <sched.h>
#include <stdlib.h>
#include <string.h>

#define HDR PCR_FRAME_HDR
#define PAD8(n) (((n) + 7) & ~(size_t)7)
#define BIG ((size_t)1 << 16)          /* payloads from here on go apart */
#define SEG_FIRST ((size_t)1 << 14)
#define SEG_MAX ((size_t)1 << 24)

struct pcr_qseg {
  _Atomic(pcr_qseg *) next;   /* set once, after the last write here */
  uint64_t cap;               /* power of two */
  _Alignas(64) _Atomic uint64_t head;
  _Alignas(64) _Atomic uint64_t tail;
  _Alignas(64) char data[];
};

/* A segment, named in q->wnew from its allocation on (see wrepair). */
static pcr_qseg *segnew(pcr_queue *q, size_t cap) {
  pcr_qseg *s = pcr__shm_alloc_into(sizeof(pcr_qseg) + cap, &q->wnew, 0);
  if (!s) return NULL;
  memset(s, 0, sizeof *s);  /* not the data: a fresh queue stays cheap */
  s->cap = cap;
  return s;
}

/* The two hot cases inline: a header, and an 8-byte payload. */
static inline void put8(pcr_qseg *s, uint64_t at, const void *p) {
  memcpy(s->data + (at & (s->cap - 1)), p, 8);
}

static inline void get8(pcr_qseg *s, uint64_t at, void *p) {
  memcpy(p, s->data + (at & (s->cap - 1)), 8);
}

/* Free q's segments, with what unread frames hold. Each segment is
** unlinked with its free (pcr__shm_free_set): run again after a death in
** it (pcr__obj_finish), it goes on from where it was. */
static void segfree_all(pcr_queue *q) {
  pcr_qseg *s;
  while ((s = q->rseg)) {  /* a dead writer published nothing half */
    pcr__frame_release(s->data, s->cap, 8, &s->tail, atomic_load(&s->head));
    pcr__shm_free_set(s, &q->rseg, (uint64_t)(uintptr_t)atomic_load(&s->next));
  }
}

static void linkrepair(pcr_queue *q);

static void queuedtor(pcr_obj *o) {
  pcr_queue *q = (pcr_queue *)o;
  pcr_qseg *nw = q->wnew ? pcr__shm_at(q->wnew, sizeof(pcr_qseg)) : NULL;
  if (q->wseg) linkrepair(q);  /* a writer died linking a segment */
  for (pcr_qseg *s = q->rseg; s && nw; s = atomic_load(&s->next))
    if (s == nw) nw = NULL;  /* linked: freed with the others */
  q->wnew = 0;
  if (nw) pcr__shm_free(nw);  /* a writer died before linking it */
  segfree_all(q);
  q->rseg = q->wseg = NULL;
}

void pcr__queue_init(void) { pcr__obj_set_dtor(PCR_OBJ_QUEUE, queuedtor); }

pcr_queue *pcr__queue_new(int64_t maxsize, long *idx) {
  pcr_queue *q = (pcr_queue *)pcr__frame_obj_new(sizeof *q, PCR_OBJ_QUEUE,
                                                 idx);
  if (!q) return NULL;
  q->maxsize = maxsize > 0 ? maxsize : 0;
  pcr_qseg *s = segnew(q, SEG_FIRST);  /* the dtor frees it from here on */
  if (!s) {
    pcr__frame_obj_drop(&q->hdr, idx);
    return NULL;
  }
  q->rseg = s;
  atomic_store(&q->wseg, s);
  q->wnew = 0;
  return q;
}

/* Take a side's lock until the deadline. A dead previous owner may have
** left the side's caches wrong; the callers repair them. */
static int lockq(pcr_lock *l, double deadline) {
  int r = pcr__lock_lock(l, deadline);
  return r == -EDEADLK ? -EINVAL : r;  /* never nested: a corrupt queue */
}

static int expired(double deadline) {
  return deadline >= 0 && (deadline == 0 || pcr__now() >= deadline);
}

/* Wait on wq until ready(q) or the deadline; 0 means "try again". */
static int waiton(pcr_queue *q, pcr_waitq *wq, int (*ready)(pcr_queue *),
                  double deadline) {
  if (expired(deadline)) return -ETIMEDOUT;
  pcr_wqtok t;
  pcr__wq_prepare(wq, &t);
  if (ready(q)) {
    pcr__wq_cancel(wq, &t);
    return 0;
  }
  return pcr__wq_sleep(wq, &t, deadline);
}

static int hasroom(pcr_queue *q) {
  return atomic_load(&q->closed) || pcr__queue_size(q) < q->maxsize;
}

/* A writer may have died linking a segment: wprev is set from before
** wseg moves until after the link is stored. */
static void linkrepair(pcr_queue *q) {
  pcr_qseg *prev = atomic_load(&q->wprev), *cur = atomic_load(&q->wseg);
  if (prev && prev != cur && !atomic_load(&prev->next))
    atomic_store(&prev->next, cur);
  atomic_store(&q->wprev, NULL);
}

/* A writer died holding wlock. A segment it allocated (wnew) but did not
** make wseg was never linked: it is freed. */
static void wrepair(pcr_queue *q) {
  linkrepair(q);
  pcr_qseg *cur = atomic_load(&q->wseg);
  if (q->wnew && pcr__shm_at(q->wnew, sizeof(pcr_qseg)) != cur)
    pcr__shm_free(pcr__shm_at(q->wnew, sizeof(pcr_qseg)));
  q->wnew = 0;
  q->tailseen = atomic_load(&cur->tail);
}

int pcr__queue_put(pcr_queue *q, unsigned kind, const void *p, size_t n,
                   const uint64_t *refs, size_t nrefs, double deadline) {
  void *blk = NULL;
  uint64_t off;
  size_t plen = n;
  if (n >= BIG) {  /* one copy in, one out; the ring carries the offset */
    if (!(blk = pcr__shm_alloc_inflight(n))) return -ENOSPC;
    memcpy(blk, p, n);
    off = pcr__shm_offset(blk);
    p = &off;
    plen = sizeof off;
    kind |= PCR_FRAME_INDIRECT;
  }
  if (nrefs) kind |= PCR_FRAME_REFS;
  uint64_t hdr = ((uint64_t)n << 8) | kind;
  int e;
  for (;;) {
    if (atomic_load_explicit(&q->closed, memory_order_relaxed)) {
      e = -EPIPE;
      goto fail;
    }
    if (q->maxsize && pcr__queue_size(q) >= q->maxsize) {
      if ((e = waiton(q, &q->putq, hasroom, deadline)) < 0) goto fail;
      continue;
    }
    if ((e = lockq(&q->wlock, deadline)) < 0) goto fail;
    if (e == PCR_LOCK_OWNERDEAD) wrepair(q);
    if (q->maxsize && atomic_load(&q->nput) - atomic_load(&q->nget) >=
                          q->maxsize) {
      pcr__lock_unlock(&q->wlock);  /* another writer took the last slot */
      continue;
    }
    break;
  }
  pcr_qseg *s = atomic_load_explicit(&q->wseg, memory_order_relaxed);
  uint64_t h = atomic_load_explicit(&s->head, memory_order_relaxed);
  size_t rn = nrefs ? 8 * (nrefs + 1) : 0;  /* the list of references */
  size_t need = HDR + rn + PAD8(plen);
  if (s->cap - (h - q->tailseen) < need) {
    q->tailseen = atomic_load_explicit(&s->tail, memory_order_acquire);
    if (s->cap - (h - q->tailseen) < need) {
      size_t cap = s->cap < SEG_MAX ? s->cap * 2 : s->cap;
      while (cap < 4 * need) cap *= 2;
      pcr_qseg *ns = segnew(q, cap);
      if (!ns) {
        pcr__lock_unlock(&q->wlock);
        e = -ENOSPC;
        goto fail;
      }
      /* In this order, so that wrepair can finish what a death cut. */
      atomic_store(&q->wprev, s);
      atomic_store(&q->wseg, ns);
      q->tailseen = 0;
      atomic_store_explicit(&s->next, ns, memory_order_release);
      atomic_store(&q->wprev, NULL);
      q->wnew = 0;
      s = ns;
      h = 0;
    }
  }
  put8(s, h, &hdr);
  if (nrefs) {
    uint64_t cnt = nrefs;
    put8(s, h + HDR, &cnt);
    pcr__wrap_in(s->data, s->cap, h + HDR + 8, refs, 8 * nrefs);
  }
  if (plen == 8) put8(s, h + HDR + rn, p);
  else pcr__wrap_in(s->data, s->cap, h + HDR + rn, p, plen);
  /* the frame owns its block and references from the publish on */
  pcr__frame_publish(&s->head, h + need, blk, nrefs);
  /* Counted after the publish: a death in between undercounts by one,
  ** which lets a bounded queue take one item more; the other order would
  ** leave it full of an item that is not there. */
  atomic_store_explicit(&q->nput, atomic_load_explicit(&q->nput,
                        memory_order_relaxed) + 1, memory_order_relaxed);
  if (q->hdr.flags) atomic_fetch_add(&q->unfinished, 1);
  pcr__lock_unlock(&q->wlock);
  pcr__wq_wake(&q->getq, 1);
  return 0;
fail:
  pcr__shm_free(blk);
  return e;
}

/* Take one frame if there is one: 1, 0 (none) or a negative errno. */
static int tryget(pcr_queue *q, pcr_qmsg *m, double deadline, int number) {
  int e = lockq(&q->rlock, deadline);
  if (e < 0) return e;
  pcr_qseg *s = q->rseg;
  if (e == PCR_LOCK_OWNERDEAD)  /* its headseen may belong to another seg */
    q->headseen = atomic_load(&s->tail);
  uint64_t t = atomic_load_explicit(&s->tail, memory_order_relaxed);
  if (t == q->headseen) {
    q->headseen = atomic_load_explicit(&s->head, memory_order_acquire);
    while (t == q->headseen) {
      pcr_qseg *next = atomic_load_explicit(&s->next, memory_order_acquire);
      if (!next) {
        pcr__lock_unlock(&q->rlock);
        return 0;
      }
      q->headseen = atomic_load_explicit(&s->head, memory_order_acquire);
      if (t != q->headseen) break;  /* written before the link: read it */
      q->rseg = next;
      q->headseen = t = 0;  /* next's own, before anything can fail */
      /* A writer that died linking may still name s in wprev: then the
      ** segment is left to the arena rather than freed under it. */
      if (atomic_load(&q->wprev) != s) pcr__shm_free(s);
      s = next;
      t = atomic_load_explicit(&s->tail, memory_order_relaxed);
      q->headseen = atomic_load_explicit(&s->head, memory_order_acquire);
    }
  }
  uint64_t hdr;
  get8(s, t, &hdr);
  if (number && (hdr & 0xff) != PCR_QF_NUMBER) {  /* left for the full get */
    pcr__lock_unlock(&q->rlock);
    return -EAGAIN;
  }
  size_t n = (size_t)(hdr >> 8);
  m->kind = PCR_FRAME_KIND(hdr);  /* the references go to the decoder */
  m->blk = NULL;
  /* The references the frame carries, copied out before it is consumed
  ** (writers may reuse its space from then on) and recorded right after. */
  uint64_t nrefs = 0, local[16], *refs = local, body = t + HDR;
  if (hdr & PCR_FRAME_REFS) {
    get8(s, body, &nrefs);
    if (nrefs > 16 && !(refs = malloc(8 * (size_t)nrefs))) {
      pcr__lock_unlock(&q->rlock);
      return -ENOMEM;
    }
    pcr__wrap_out(s->data, s->cap, body + 8, refs, 8 * (size_t)nrefs);
    body += 8 * (nrefs + 1);
  }
  if (hdr & PCR_FRAME_INDIRECT) {
    uint64_t off;
    get8(s, body, &off);
    m->blk = pcr__shm_at(off, n);
    m->p = m->blk;
  } else {
    if (m->bufcap < n + 1) {
      size_t cap = m->bufcap ? m->bufcap : 256;
      while (cap < n + 1) cap *= 2;
      char *b = realloc(m->buf, cap);
      if (!b) {
        if (refs != local) free(refs);
        pcr__lock_unlock(&q->rlock);
        return -ENOMEM;
      }
      m->buf = b;
      m->bufcap = cap;
    }
    if (n == 8) get8(s, body, m->buf);
    else pcr__wrap_out(s->data, s->cap, body, m->buf, n);
    m->p = m->buf;
  }
  m->n = n;
  pcr__ledger_ensure((size_t)nrefs + 1);  /* else they go unrecorded */
  atomic_store_explicit(&q->nget, atomic_load_explicit(&q->nget,
                        memory_order_relaxed) + 1, memory_order_relaxed);
  uint64_t end = body + PAD8((hdr & PCR_FRAME_INDIRECT) ? 8 : n);
  pcr__frame_consume(&s->tail, end, refs, (size_t)nrefs, m->blk,
                     &m->blkidx);
  if (refs != local) free(refs);
  pcr__lock_unlock(&q->rlock);
  if (q->maxsize) pcr__wq_wake(&q->putq, 1);
  return 1;
}

int pcr__queue_ready(pcr_queue *q) {
  /* Unlocked peek: rseg may be freed under us, which only reads stale
  ** arena bytes; callers confirm under the lock. */
  pcr_qseg *s = *(pcr_qseg *volatile *)&q->rseg;
  return atomic_load(&s->head) != atomic_load(&s->tail) ||
         atomic_load(&s->next) != NULL || atomic_load(&q->closed);
}

int pcr__queue_get_number(pcr_queue *q, double *v) {
  pcr_qmsg m = { .buf = (char *)v, .bufcap = 9 };
  int r = tryget(q, &m, 0, 1);
  return r > 0 ? 0 : r == 0 ? -ETIMEDOUT : r;
}

int pcr__queue_get(pcr_queue *q, pcr_qmsg *m, double deadline, double spin) {
  double spinto = -1;
  for (;;) {
    int r = tryget(q, m, deadline, 0);
    if (r) return r > 0 ? 0 : r;
    if (atomic_load(&q->closed)) {
      r = tryget(q, m, deadline, 0);  /* a put landed before the close */
      return r > 0 ? 0 : r < 0 ? r : -EPIPE;
    }
    if (spin > 0) {
      if (spinto < 0) spinto = pcr__now() + spin;
      int i = 0;
      while (!pcr__queue_ready(q)) {
        /* Look rarely: every look pulls the writer's head line away from
        ** it, and its next put must fetch the line back. */
        for (int k = 0; k < 16; k++) pcr__cpu_relax();
        if ((++i & 63) == 0) {
          if (pcr__now() >= spinto) break;
          sched_yield();
        }
      }
      if (pcr__queue_ready(q)) continue;
      spin = 0;
    }
    if ((r = waiton(q, &q->getq, pcr__queue_ready, deadline)) < 0) return r;
  }
}

void pcr__queue_close(pcr_queue *q) {
  atomic_store(&q->closed, 1);
  pcr__wq_wake(&q->getq, INT32_MAX);
  pcr__wq_wake(&q->putq, INT32_MAX);
}

int pcr__queue_task_done(pcr_queue *q) {
  int64_t u = atomic_load(&q->unfinished);
  do {
    if (u <= 0) return -EINVAL;
  } while (!atomic_compare_exchange_weak(&q->unfinished, &u, u - 1));
  if (u == 1) pcr__wq_wake(&q->joinq, INT32_MAX);
  return 0;
}

static int alldone(pcr_queue *q) { return atomic_load(&q->unfinished) <= 0; }

int pcr__queue_join(pcr_queue *q, double deadline) {
  for (;;) {
    if (alldone(q)) return 0;
    int r = waiton(q, &q->joinq, alldone, deadline);
    if (r < 0) return r;
  }
}
