/* Dicts in the arena. A slot of a stripe's index holds the top 24 bits of
** the key's hash and the 40-bit arena offset of its entry (0 empty, 1 a
** tombstone), so that a probe rarely touches an entry that is not the
** one. Writers hold the stripe's lock, note what they are about to do in
** the stripe (op, a, b), store one word, bump the version before anything
** readers may still look at is freed, and clear the note. Readers never
** lock: they read the version, look, copy, and retry if the version moved;
** every pointer they follow is bounds-checked, since what they look at may
** be freed under them (the version check then discards it). */
#include "dict.h"
#include "frame.h"
#include "pcrdef.h"

#include <stdlib.h>
#include <string.h>

#define NS PCR_DICT_STRIPES
#define TOMB 1u
#define OFFBITS 40
#define OFFMASK (((uint64_t)1 << OFFBITS) - 1)
#define MINCAP 8

enum { OP_NONE, OP_PUT, OP_GROW, OP_CLEAR };

typedef struct dtab {
  uint64_t mask;
  _Atomic uint64_t slot[];
} dtab;

static uint64_t mix(uint64_t x) {
  x ^= x >> 33;
  x *= 0xff51afd7ed558ccdULL;
  x ^= x >> 33;
  x *= 0xc4ceb9fe1a85ec53ULL;
  x ^= x >> 33;
  return x;
}

void pcr__dict_key(pcr_dkey *k) {
  const unsigned char *p = k->p;
  size_t n = k->n;
  uint64_t h = 0x9e3779b97f4a7c15ULL * (k->kind + 1) ^ n, w;
  for (; n >= 8; p += 8, n -= 8) {
    memcpy(&w, p, 8);
    h = (h ^ mix(w)) * 0x9e3779b97f4a7c15ULL;
  }
  if (n) {
    w = 0;
    memcpy(&w, p, n);
    h = (h ^ mix(w)) * 0x9e3779b97f4a7c15ULL;
  }
  k->hash = mix(h);
}

/* Pointer to n bytes at off, or NULL if they do not lie in the arena. */
/* A lock-free reader may load an offset from memory being freed or reused:
** it must lie in the arena and be aligned as every block is. */
static inline void *at(uint64_t off, size_t n) {
  size_t sz = pcr__shm_size();
  return off && !(off & 7) && off < sz && n <= sz - off ? pcr__shm_base() + off
                                                         : NULL;
}

static inline uint64_t offof(const void *p) { return pcr__shm_offset(p); }

static inline pcr_dstripe *stripeof(pcr_dict *d, const pcr_dkey *k) {
  return &d->s[k->hash & (NS - 1)];
}

/* The stripe's index and its mask, checked; NULL if none. */
static dtab *tabof(pcr_dstripe *s, uint64_t *mask) {
  uint64_t off = atomic_load_explicit(&s->tab, memory_order_acquire);
  dtab *t = at(off, sizeof(dtab));
  if (!t) return NULL;
  uint64_t m = t->mask;
  if ((m & (m + 1)) || m > ((uint64_t)1 << 36) ||
      !at(off, sizeof(dtab) + 8 * (m + 1)))
    return NULL;
  *mask = m;
  return t;
}

/* The slot holding k, or -1 with *ins (if asked) where it would go: the
** first tombstone on its path or the empty slot that ends it. A lock-free
** reader passes its stripe's version as read (ver, v): it gives up (-1)
** once the version moves, since an index freed under it may hold
** anything. */
static int64_t find(dtab *t, uint64_t mask, const pcr_dkey *k, int64_t *ins,
                    _Atomic uint32_t *ver, uint32_t v) {
  uint64_t i = (k->hash >> 6) & mask, tag = k->hash & ~OFFMASK;
  int64_t tomb = -1;
  for (uint64_t n = 0; n <= mask; n++, i = (i + 1) & mask) {
    if (ver && (n & 255) == 255 &&
        atomic_load_explicit(ver, memory_order_acquire) != v)
      return -1;
    uint64_t sl = atomic_load_explicit(&t->slot[i], memory_order_acquire);
    if (sl == 0) {
      if (ins) *ins = tomb >= 0 ? tomb : (int64_t)i;
      return -1;
    }
    if (sl == TOMB) {
      if (tomb < 0) tomb = (int64_t)i;
      continue;
    }
    if ((sl & ~OFFMASK) != tag) continue;
    pcr_dent *e = at(sl & OFFMASK, sizeof *e);
    if (!e || e->hash != k->hash || e->kkind != k->kind || e->klen != k->n ||
        !at(sl & OFFMASK, sizeof *e + k->n))
      continue;
    if (memcmp(e->data, k->p, k->n) == 0) return (int64_t)i;
  }
  if (ins) *ins = tomb;
  return -1;
}

static inline pcr_dent *entat(dtab *t, int64_t i) {
  if (i < 0) return NULL;
  return at(atomic_load_explicit(&t->slot[i], memory_order_acquire) & OFFMASK,
            sizeof(pcr_dent));
}

/* Free an entry and drop the references it holds. */
static void entfree(pcr_dent *e) {
  if (!e) return;
  uint64_t *r = PCR_DENT_REFS(e);
  for (unsigned i = 0; i < e->nrefs; i++) pcr__frame_drop(r[i]);
  pcr__shm_free(e);
}

static pcr_dent *entnew(const pcr_dkey *k, const pcr_dval *v) {
  int bytes = v->kind == PCR_DV_STRING || v->kind == PCR_DV_VALUE;
  size_t vn = bytes ? v->n : 0;
  size_t sz = sizeof(pcr_dent) + PCR_ALIGN_UP(k->n, 8) + 8 * v->nrefs + vn;
  pcr_dent *e = pcr__shm_alloc(sz);
  if (!e) return NULL;
  e->hash = k->hash;
  e->kkind = (uint8_t)k->kind;
  e->vkind = (uint8_t)v->kind;
  e->nrefs = (uint16_t)v->nrefs;
  e->klen = (uint32_t)k->n;
  e->vlen = vn;
  uint64_t bits;
  memcpy(&bits, &v->num, 8);
  atomic_init(&e->num, v->kind == PCR_DV_NUMBER ? bits : 0);
  memcpy(e->data, k->p, k->n);
  if (v->nrefs) memcpy(PCR_DENT_REFS(e), v->refs, 8 * v->nrefs);
  if (vn) memcpy(PCR_DENT_VAL(e), v->p, vn);
  return e;
}

static inline double numof(pcr_dent *e) {
  uint64_t bits = atomic_load_explicit(&e->num, memory_order_relaxed);
  double x;
  memcpy(&x, &bits, 8);
  return x;
}

static inline void setnum(pcr_dent *e, double x) {
  uint64_t bits;
  memcpy(&bits, &x, 8);
  atomic_store_explicit(&e->num, bits, memory_order_release);
}

static inline void bump(pcr_dstripe *s) {
  atomic_fetch_add_explicit(&s->ver, 1, memory_order_acq_rel);
}

/* What names the entry e (NULL: absent) of stripe s as read now: its
** offset and the low bits of the version, which moves whenever an entry is
** freed, so that a block reused for the same key is not taken for the
** one read. */
static inline uint64_t tokof(pcr_dstripe *s, pcr_dent *e) {
  return (e ? offof(e) : 0) |
         ((uint64_t)(atomic_load(&s->ver) & 0xffffff) << OFFBITS);
}

static int present(dtab *t, uint64_t mask, uint64_t off) {
  if (!t) return 0;
  for (uint64_t i = 0; i <= mask; i++)
    if ((atomic_load(&t->slot[i]) & OFFMASK) == off) return 1;
  return 0;
}

/* Free a private index and every entry it holds, each slot cleared
** before its entry goes so that a second recovery frees nothing twice. */
static void tabfree_all(dtab *t) {
  for (uint64_t i = 0; i <= t->mask; i++) {
    uint64_t sl = atomic_load(&t->slot[i]);
    if (sl <= TOMB) continue;
    atomic_store(&t->slot[i], 0);
    entfree(at(sl & OFFMASK, sizeof(pcr_dent)));
  }
  pcr__shm_free(t);
}

/* A writer died holding the stripe's lock: finish or undo what its note
** says, then recount. Things it published are kept, things it allocated
** but never published are freed; readers may still look at what is freed,
** hence the version bump first. */
static void recover(pcr_dstripe *s) {
  uint32_t op = atomic_load(&s->op);
  uint64_t a = s->a, b = s->b, mask = 0;
  dtab *t = tabof(s, &mask);
  bump(s);
  atomic_store(&s->op, OP_NONE);
  switch (op) {
  case OP_PUT:
    if (a && !present(t, mask, a)) entfree(at(a, sizeof(pcr_dent)));
    if (b && !present(t, mask, b)) entfree(at(b, sizeof(pcr_dent)));
    break;
  case OP_GROW:  /* a is 0 when the stripe was being emptied */
    if (atomic_load(&s->tab) == a) pcr__shm_free(at(b, sizeof(dtab)));
    else pcr__shm_free(at(a, sizeof(dtab)));
    break;
  case OP_CLEAR:
    if (b && atomic_load(&s->tab) != b) tabfree_all(at(b, sizeof(dtab)));
    break;
  }
  uint64_t live = 0, used = 0;
  if (t)
    for (uint64_t i = 0; i <= mask; i++) {
      uint64_t sl = atomic_load(&t->slot[i]);
      if (sl) used++;
      if (sl > TOMB) live++;
    }
  atomic_store_explicit(&s->count, live, memory_order_relaxed);
  s->used = used;
}

static int slock(pcr_dstripe *s) {
  int r;
  while ((r = pcr__lock_lock(&s->lock, -1)) == -EINTR) {}
  if (r == PCR_LOCK_OWNERDEAD) recover(s);
  return r < 0 ? r : 0;
}

static void sunlock(pcr_dstripe *s) { pcr__lock_unlock(&s->lock); }

static uint64_t capfor(uint64_t n) {
  uint64_t cap = MINCAP;
  while (cap < 2 * n) cap *= 2;
  return cap;
}

/* Rebuild the stripe's index at cap slots (0: none), dropping
** tombstones. Under the lock; the old index stays whole (readers go on
** using it) until the new one is published. Returns 0 or -ENOSPC. */
static int resize(pcr_dstripe *s, uint64_t cap) {
  uint64_t omask = 0;
  dtab *ot = tabof(s, &omask), *nt = NULL;
  if (cap) {
    if (!(nt = pcr__shm_alloc(sizeof(dtab) + 8 * cap))) return -ENOSPC;
    memset(nt, 0, sizeof(dtab) + 8 * cap);
    nt->mask = cap - 1;
  }
  s->a = nt ? offof(nt) : 0;
  s->b = ot ? offof(ot) : 0;
  atomic_store(&s->op, OP_GROW);
  uint64_t n = 0;
  if (ot && nt)
    for (uint64_t j = 0; j <= omask; j++) {
      uint64_t sl = atomic_load_explicit(&ot->slot[j], memory_order_relaxed);
      if (sl <= TOMB) continue;
      pcr_dent *e = (pcr_dent *)(pcr__shm_base() + (sl & OFFMASK));
      uint64_t i = (e->hash >> 6) & (cap - 1);
      while (atomic_load_explicit(&nt->slot[i], memory_order_relaxed))
        i = (i + 1) & (cap - 1);
      atomic_store_explicit(&nt->slot[i], sl, memory_order_relaxed);
      n++;
    }
  atomic_store_explicit(&s->tab, s->a, memory_order_release);
  atomic_store_explicit(&s->count, n, memory_order_relaxed);
  s->used = n;
  bump(s);
  atomic_store(&s->op, OP_NONE);
  pcr__shm_free(ot);
  return 0;
}

pcr_dict *pcr__dict_new(long *idx) {
  return (pcr_dict *)pcr__frame_obj_new(sizeof(pcr_dict), PCR_OBJ_DICT, idx);
}

static void dictdtor(pcr_obj *o) {
  pcr_dict *d = (pcr_dict *)o;
  for (int i = 0; i < NS; i++) {
    pcr_dstripe *s = &d->s[i];
    uint64_t mask;
    if (atomic_load(&s->op) != OP_NONE) recover(s);  /* its writer died */
    dtab *t = tabof(s, &mask);
    atomic_store(&s->tab, 0);
    if (t) tabfree_all(t);
  }
}

void pcr__dict_init(void) { pcr__obj_set_dtor(PCR_OBJ_DICT, dictdtor); }

static int grow(size_t *cap, char **buf, size_t n) {
  if (n <= *cap) return 0;
  size_t c = *cap ? *cap : 64;
  while (c < n) c *= 2;
  char *p = realloc(*buf, c);
  if (!p) return -ENOMEM;
  *buf = p;
  *cap = c;
  return 0;
}

int pcr__dict_get(pcr_dict *d, const pcr_dkey *k, pcr_dout *out) {
  pcr_dstripe *s = stripeof(d, k);
  for (;;) {
    uint32_t v = atomic_load_explicit(&s->ver, memory_order_acquire);
    uint64_t mask, off = 0;
    int r = 0;
    dtab *t = tabof(s, &mask);
    int64_t i = t ? find(t, mask, k, NULL, &s->ver, v) : -1;
    pcr_dent *e = t ? entat(t, i) : NULL;
    if (e) {
      off = offof(e);
      out->kind = e->vkind;
      out->nrefs = e->nrefs;
      out->num = numof(e);
      out->n = 0;
      if (out->kind == PCR_DV_STRING || out->kind == PCR_DV_VALUE) {
        /* The layout read once, trusted only if the entry was still live
        ** after: the entry may be freed and reused while we copy, but the
        ** bytes copied then lie where it was. */
        volatile pcr_dent *ve = e;  /* each field loaded once, here */
        uint64_t klen = ve->klen, nrefs = ve->nrefs, n = ve->vlen;
        atomic_thread_fence(memory_order_acquire);
        if (atomic_load_explicit(&s->ver, memory_order_relaxed) != v)
          continue;
        uint64_t voff = sizeof(pcr_dent) + PCR_ALIGN_UP(klen, 8) + 8 * nrefs;
        if (!at(off, voff + n)) continue;
        if (grow(&out->cap, &out->buf, n ? n : 1) < 0) return -ENOMEM;
        memcpy(out->buf, (char *)e + voff, n);
        out->n = n;
      }
      r = 1;
    }
    atomic_thread_fence(memory_order_acquire);
    if (atomic_load_explicit(&s->ver, memory_order_relaxed) == v) {
      out->tok = off | ((uint64_t)(v & 0xffffff) << OFFBITS);
      return r;
    }
  }
}

int pcr__dict_has(pcr_dict *d, const pcr_dkey *k) {
  pcr_dstripe *s = stripeof(d, k);
  for (;;) {
    uint32_t v = atomic_load_explicit(&s->ver, memory_order_acquire);
    uint64_t mask;
    dtab *t = tabof(s, &mask);
    int r = t && find(t, mask, k, NULL, &s->ver, v) >= 0;
    atomic_thread_fence(memory_order_acquire);
    if (atomic_load_explicit(&s->ver, memory_order_relaxed) == v) return r;
  }
}

static int valeq(pcr_dent *e, const pcr_dval *w) {
  if (!w || !e) return !w && !e;
  if (e->vkind != w->kind) return 0;
  switch (w->kind) {
  case PCR_DV_NUMBER: return numof(e) == w->num;
  case PCR_DV_STRING:
    return e->vlen == w->n && memcmp(PCR_DENT_VAL(e), w->p, w->n) == 0;
  case PCR_DV_TRUE: case PCR_DV_FALSE: return 1;
  default: return 0;  /* encoded values are not compared */
  }
}

/* Publish ne for k, at slot i (replacing cur) or, for a new key, at ins.
** Under the lock; unlocks. Frees what ne replaced. */
static int place(pcr_dict *d, pcr_dstripe *s, const pcr_dkey *k,
                 pcr_dent *ne, int64_t i, int64_t ins) {
  uint64_t mask;
  dtab *t = tabof(s, &mask);
  pcr_dent *ce = t ? entat(t, i) : NULL;
  if (!ce) {
    int grow_ = !t || ins < 0 ||
        (atomic_load(&t->slot[ins]) == 0 && (s->used + 1) * 4 > (mask + 1) * 3);
    if (grow_) {
      uint64_t n = atomic_load_explicit(&s->count, memory_order_relaxed);
      if (resize(s, capfor(n + 1)) < 0) {
        sunlock(s);
        pcr__shm_free(ne);  /* its references were never adopted */
        return -ENOSPC;
      }
      t = tabof(s, &mask);
      find(t, mask, k, &ins, NULL, 0);
    }
  }
  s->a = offof(ne);
  s->b = ce ? offof(ce) : 0;
  atomic_store(&s->op, OP_PUT);
  uint64_t sl = (k->hash & ~OFFMASK) | offof(ne);
  if (ce) {
    atomic_store_explicit(&t->slot[i], sl, memory_order_release);
    bump(s);
  } else {
    uint64_t was = atomic_load(&t->slot[ins]);
    atomic_store_explicit(&t->slot[ins], sl, memory_order_release);
    atomic_fetch_add_explicit(&s->count, 1, memory_order_relaxed);
    if (!was) s->used++;
  }
  atomic_store(&s->op, OP_NONE);
  sunlock(s);
  if (ce) entfree(ce);
  else pcr__wq_wake(&d->wq, INT32_MAX);
  return 1;
}

int pcr__dict_put(pcr_dict *d, const pcr_dkey *k, const pcr_dval *v,
                  int cond, const pcr_dval *want, uint64_t tok, double num) {
  pcr_dstripe *s = stripeof(d, k);
  pcr_dent *ne = NULL;
  if (v && v->kind != PCR_DV_NUMBER && !(ne = entnew(k, v))) return -ENOSPC;
  for (;;) {
    int e = slock(s);
    if (e < 0) {
      pcr__shm_free(ne);
      return e;
    }
    uint64_t mask;
    int64_t ins = -1;
    dtab *t = tabof(s, &mask);
    int64_t i = t ? find(t, mask, k, &ins, NULL, 0) : -1;
    pcr_dent *ce = t ? entat(t, i) : NULL;
    int ok = 1;
    if (cond == PCR_DC_VALUE) ok = valeq(ce, want);
    else if (cond == PCR_DC_TOKEN) {
      uint64_t bits;
      memcpy(&bits, &num, 8);
      ok = tokof(s, ce) == tok &&
           (!ce || ce->vkind != PCR_DV_NUMBER || atomic_load(&ce->num) == bits);
    }
    if (!ok) {
      sunlock(s);
      pcr__shm_free(ne);
      return 0;
    }
    if (!v) {  /* delete */
      if (!ce) {
        sunlock(s);
        return cond != PCR_DC_ANY;
      }
      s->a = 0;
      s->b = offof(ce);
      atomic_store(&s->op, OP_PUT);
      atomic_store_explicit(&t->slot[i], TOMB, memory_order_release);
      uint64_t n = atomic_fetch_sub_explicit(&s->count, 1,
                                             memory_order_relaxed) - 1;
      bump(s);
      atomic_store(&s->op, OP_NONE);
      if (n == 0) resize(s, 0);  /* an empty stripe keeps nothing */
      else if (mask + 1 > MINCAP && n * 8 < mask + 1)
        resize(s, capfor(n));  /* on failure the big index stays */
      sunlock(s);
      entfree(ce);
      return 1;
    }
    if (ce && v->kind == PCR_DV_NUMBER && ce->vkind == PCR_DV_NUMBER) {
      setnum(ce, v->num);  /* one atomic store: no entry to replace */
      sunlock(s);
      pcr__shm_free(ne);
      return 1;
    }
    if (!ne) {  /* a number where none was: allocate outside the lock */
      sunlock(s);
      if (!(ne = entnew(k, v))) return -ENOSPC;
      continue;
    }
    return place(d, s, k, ne, i, ins);
  }
}

int pcr__dict_add(pcr_dict *d, const pcr_dkey *k, double delta, double *res,
                  unsigned *kind) {
  pcr_dstripe *s = stripeof(d, k);
  pcr_dent *ne = NULL;
  for (;;) {
    int e = slock(s);
    if (e < 0) {
      pcr__shm_free(ne);
      return e;
    }
    uint64_t mask;
    int64_t ins = -1;
    dtab *t = tabof(s, &mask);
    int64_t i = t ? find(t, mask, k, &ins, NULL, 0) : -1;
    pcr_dent *ce = t ? entat(t, i) : NULL;
    if (ce) {
      if (ce->vkind != PCR_DV_NUMBER) {
        *kind = ce->vkind;
        sunlock(s);
        pcr__shm_free(ne);
        return -EINVAL;
      }
      double x = numof(ce) + delta;
      setnum(ce, x);
      sunlock(s);
      pcr__shm_free(ne);
      *res = x;
      return 0;
    }
    if (!ne) {
      sunlock(s);
      pcr_dval v = { PCR_DV_NUMBER, delta, NULL, 0, NULL, 0 };
      if (!(ne = entnew(k, &v))) return -ENOSPC;
      continue;
    }
    *res = delta;
    int r = place(d, s, k, ne, i, ins);
    return r < 0 ? r : 0;
  }
}

int64_t pcr__dict_len(pcr_dict *d) {
  int64_t n = 0;
  for (int i = 0; i < NS; i++)
    n += (int64_t)atomic_load_explicit(&d->s[i].count, memory_order_relaxed);
  return n;
}

int pcr__dict_clear(pcr_dict *d) {
  for (int i = 0; i < NS; i++) {
    pcr_dstripe *s = &d->s[i];
    if (!atomic_load_explicit(&s->tab, memory_order_relaxed)) continue;
    int e = slock(s);
    if (e < 0) return e;
    uint64_t mask;
    dtab *t = tabof(s, &mask);
    if (t) {
      s->a = 0;
      s->b = offof(t);
      atomic_store(&s->op, OP_CLEAR);
      atomic_store_explicit(&s->tab, 0, memory_order_release);
      atomic_store_explicit(&s->count, 0, memory_order_relaxed);
      s->used = 0;
      bump(s);
      /* Freed under the lock, the note kept: a writer killed meanwhile
      ** leaves the rest to whoever recovers the lock. */
      for (uint64_t j = 0; j <= mask; j++) {
        uint64_t sl = atomic_load(&t->slot[j]);
        if (sl <= TOMB) continue;
        atomic_store(&t->slot[j], 0);
        entfree(at(sl & OFFMASK, sizeof(pcr_dent)));
      }
      atomic_store(&s->op, OP_NONE);
      pcr__shm_free(t);
    }
    sunlock(s);
  }
  return 0;
}

/* Append the entries of stripe s (locked) to snap, taking a reference to
** each object they name. */
static int snapcopy(pcr_dstripe *s, const pcr_dkey *k, pcr_dsnap *snap,
                    size_t *cap) {
  uint64_t mask;
  dtab *t = tabof(s, &mask);
  if (!t) return 0;
  uint64_t lo = 0, hi = mask;
  if (k) {
    int64_t i = find(t, mask, k, NULL, NULL, 0);
    snap->tok = tokof(s, entat(t, i));
    if (i < 0) return 0;
    lo = hi = (uint64_t)i;
  }
  for (uint64_t j = lo; j <= hi; j++) {
    uint64_t sl = atomic_load(&t->slot[j]);
    if (sl <= TOMB) continue;
    pcr_dent *e = (pcr_dent *)(pcr__shm_base() + (sl & OFFMASK));
    size_t sz = PCR_ALIGN_UP(PCR_DENT_SIZE(e), 8);
    if (grow(cap, &snap->buf, snap->n + sz) < 0) return -ENOMEM;
    pcr_dent *c = (pcr_dent *)(snap->buf + snap->n);
    memcpy(c, e, PCR_DENT_SIZE(e));
    uint64_t *r = PCR_DENT_REFS(c);
    for (unsigned x = 0; x < c->nrefs; x++) {  /* tagged (frame.h) */
      pcr_obj *o = pcr__shm_at(r[x] & ~(uint64_t)PCR_REF_ROLES,
                               sizeof(pcr_obj));
      if (o && o->magic == PCR_OBJ_MAGIC)
        r[x] = pcr__frame_take(o, (unsigned)(r[x] & PCR_REF_ROLES));
      else
        r[x] = 0;
    }
    snap->n += sz;
    snap->count++;
  }
  return 0;
}

int pcr__dict_snapshot(pcr_dict *d, pcr_dsnap *snap) {
  size_t cap = 0;
  int e = 0, locked = 0;
  memset(snap, 0, sizeof *snap);
  for (; locked < NS; locked++)  /* in order: no two snapshots deadlock */
    if ((e = slock(&d->s[locked])) < 0) break;
  for (int i = 0; i < locked && e == 0; i++)
    e = snapcopy(&d->s[i], NULL, snap, &cap);
  for (int i = 0; i < locked; i++) sunlock(&d->s[i]);
  if (e < 0) pcr__dict_snapshot_free(snap);
  return e;
}

int pcr__dict_snapshot_key(pcr_dict *d, const pcr_dkey *k, pcr_dsnap *snap) {
  size_t cap = 0;
  pcr_dstripe *s = stripeof(d, k);
  memset(snap, 0, sizeof *snap);
  int e = slock(s);
  if (e < 0) return e;
  snap->tok = tokof(s, NULL);
  e = snapcopy(s, k, snap, &cap);
  sunlock(s);
  if (e < 0) pcr__dict_snapshot_free(snap);
  return e;
}

void pcr__dict_snapshot_free(pcr_dsnap *snap) {
  for (size_t at_ = 0; at_ < snap->n;) {
    pcr_dent *e = (pcr_dent *)(snap->buf + at_);
    uint64_t *r = PCR_DENT_REFS(e);
    for (unsigned x = 0; x < e->nrefs; x++)
      if (r[x]) pcr__frame_drop(r[x]);
    at_ += PCR_ALIGN_UP(PCR_DENT_SIZE(e), 8);
  }
  free(snap->buf);
  memset(snap, 0, sizeof *snap);
}
