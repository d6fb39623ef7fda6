/* The shared arena and its allocator: a buddy system. Blocks are powers of
** two (32 B up), each at a multiple of its size from the origin; a freed
** block merges with its buddy whenever that is free too, so what small
** blocks gave back serves large requests again. Doubly linked free lists
** per class, a mask of the non-empty ones, one robust lock. Large freed
** blocks give their pages back to the kernel (MADV_REMOVE).
**
** A process killed holding the lock: every block header is written in
** one store, in an order that keeps the headers a valid partition of the
** space at each step (a split writes the upper halves before the block
** it splits, a merge the lower header before it clears the upper). The
** free lists, the mask and `used` are derived from the headers, and the
** next owner, told by the robust lock, rebuilds them (repair).
**
** Stores that must land together (a block's header and the record that
** owns it; an object's reference count and the ledger entry of the
** reference) go through a redo journal under the lock: the words and
** their values, then the count (the commit), then the stores. A death
** before the commit did nothing; one after it is finished by the next
** owner. Every change of a reference count is made under the lock, so
** the value a journal holds is still the right one when it is redone. */
#include "shm.h"
#include "futex.h"
#include "pcrdef.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <unistd.h>

#define ARENA_MAGIC 0x41524350u   /* "PCRA" */
#define ARENA_VERSION 4
#define MIN_SHIFT 5               /* smallest block: 32 bytes */
#define NCLASS 48
#define BLOCK_HDR 16
#define NINFLIGHT 64
#define NLEDGER 1024
/* Freed blocks keep their pages for reuse (refaulting shared memory costs
** more than copying it) unless they are this large. */
#define RELEASE_MIN ((size_t)1 << 28)

typedef struct block {
  _Atomic uint64_t tag; /* BLOCK_LIVE or BLOCK_FREE | class << 32: one store.
                           The block spans 1 << (class + MIN_SHIFT) */
  uint64_t next;        /* free: list links (offsets), 0 = none; prev */
  uint64_t prev;        /* lies in the payload, unused while live */
} block;
_Static_assert(offsetof(block, prev) == BLOCK_HDR, "header is 16 bytes");

#define BLOCK_LIVE 0x4c424350u
#define BLOCK_FREE 0x46424350u
#define TAG(magic, cls) ((uint64_t)(magic) | (uint64_t)(cls) << 32)

typedef struct arena {
  uint32_t magic, version;   /* written once by the creator */
  uint64_t size;             /* mapping size; constant */
  uint64_t origin;           /* offset of the buddy space; constant */
  uint64_t limit;            /* its length, a multiple of 32; constant */
  pcr_lock lock;             /* guards everything below */
  uint64_t used;             /* bytes in live blocks */
  uint64_t nonempty;         /* bit c: freelist[c] is not empty */
  uint64_t repairs;          /* times repair ran (tests, diagnosis) */
  uint64_t freelist[NCLASS]; /* offsets of free blocks, 0 = empty */
  /* Large-message blocks between their allocation and their frame: the
  ** sender's pid and the block, so that whoever reaps a sender killed
  ** meanwhile frees it. */
  _Atomic uint32_t ninflight;
  struct { uint32_t pid; uint64_t off; } inflight[NINFLIGHT];
  /* Per process (not the root): the arena offset of its ledger of the
  ** references it owns, for whoever reaps it (frame.c). */
  struct { _Atomic uint32_t pid; _Atomic uint64_t off; } ledger[NLEDGER];
  /* The redo journal: n stores of val[i] at offset at[i] (8 bytes wide
  ** where bit i of wide is set, else 4), n set last. */
  _Atomic uint32_t jn;
  uint32_t jwide;
  uint64_t jat[PCR_JOURNAL], jval[PCR_JOURNAL];
} arena;

static char *base;
static size_t mapsize;

char *pcr__shm_base(void) { return base; }
size_t pcr__shm_size(void) { return mapsize; }

/* PCRUN_ARENA: <n>[K|M|G] (binary units, either case), from 1M to 1T.
** Returns the size, or 0 with *why set when the value is refused. */
static size_t envparse(const char *s, const char **why) {
  uint64_t v = 0;
  const char *p = s;
  *why = NULL;
  if (*p < '0' || *p > '9') goto bad;
  for (; *p >= '0' && *p <= '9'; p++) {
    if (v > (UINT64_MAX - 9) / 10) goto big;
    v = v * 10 + (uint64_t)(*p - '0');
  }
  unsigned shift = 0;
  switch (*p) {
  case 'k': case 'K': shift = 10; p++; break;
  case 'm': case 'M': shift = 20; p++; break;
  case 'g': case 'G': shift = 30; p++; break;
  case '\0': break;
  default: goto bad;
  }
  if (*p) goto bad;
  if (v > (PCR_ARENA_MAX >> shift)) goto big;
  v <<= shift;
  if (v < PCR_ARENA_MIN) {
    *why = "is below the minimum, 1M";
    return 0;
  }
  return (size_t)v;
big:
  *why = "is above the maximum, 1024G";
  return 0;
bad:
  *why = "is not a size";
  return 0;
}

const char *pcr__shm_env_error(void) {
  static char msg[256];
  const char *s = getenv("PCRUN_ARENA"), *why;
  if (!s || !*s || envparse(s, &why)) return NULL;
  snprintf(msg, sizeof msg, "PCRUN_ARENA='%.64s' %s: give the shared arena's "
           "size as <n>[K|M|G] from 1M to 1024G, e.g. PCRUN_ARENA=512M or "
           "PCRUN_ARENA=4G", s, why);
  return msg;
}

static size_t envsize(void) {
  const char *s = getenv("PCRUN_ARENA"), *why;
  if (!s || !*s) return PCR_ARENA_DEFAULT;
  return envparse(s, &why);
}

/* -- Blocks and free lists (callers hold the lock) --------------------- */

#define BSIZE(cls) ((uint64_t)1 << ((cls) + MIN_SHIFT))

static inline block *blk(uint64_t off) { return (block *)(base + off); }

/* Release: a header store never moves before the stores it follows. */
static inline void settag(block *b, uint32_t magic, unsigned cls) {
  atomic_store_explicit(&b->tag, TAG(magic, cls), memory_order_release);
}

static inline uint64_t gettag(const block *b) {
  return atomic_load_explicit(&((block *)b)->tag, memory_order_relaxed);
}

static void push(arena *a, uint64_t off, unsigned cls) {
  block *b = blk(off);
  uint64_t head = a->freelist[cls];
  b->next = head;
  b->prev = 0;
  if (head) blk(head)->prev = off;
  a->freelist[cls] = off;
  a->nonempty |= (uint64_t)1 << cls;
}

static void unlink_(arena *a, uint64_t off, unsigned cls) {
  block *b = blk(off);
  if (b->prev) blk(b->prev)->next = b->next;
  else a->freelist[cls] = b->next;
  if (b->next) blk(b->next)->prev = b->prev;
  if (!a->freelist[cls]) a->nonempty &= ~((uint64_t)1 << cls);
}

/* The buddy of the block at rel (from the origin) of class cls, as an
** offset from the origin, or UINT64_MAX when the pair would not fit. */
static inline uint64_t buddy(const arena *a, uint64_t rel, unsigned cls) {
  uint64_t s = BSIZE(cls);
  if (cls + 1 >= NCLASS || (rel & ~s) + 2 * s > a->limit) return UINT64_MAX;
  return rel ^ s;
}

/* Whether a header at rel can start a block of the partition. */
static int tagok(const arena *a, uint64_t rel, uint64_t t) {
  uint32_t magic = (uint32_t)t;
  uint64_t cls = t >> 32;
  return (magic == BLOCK_LIVE || magic == BLOCK_FREE) && cls < NCLASS &&
         rel % BSIZE(cls) == 0 && rel + BSIZE(cls) <= a->limit;
}

/* -- The journal (callers hold the lock) ------------------------------ */

static struct { uint32_t n, wide; uint64_t at[PCR_JOURNAL], val[PCR_JOURNAL];
} jr;  /* this process's stores, until the commit */

static int inarena(const void *p) {
  return (const char *)p >= base && (const char *)p < base + mapsize;
}

static void jput(void *p, uint64_t v, int wide) {
  if (!inarena(p)) {  /* this process's memory: nobody else redoes it */
    if (wide) memcpy(p, &v, 8);
    else *(uint32_t *)p = (uint32_t)v;
    return;
  }
  if (jr.n == PCR_JOURNAL) abort();  /* a caller's bug */
  jr.at[jr.n] = (uint64_t)((char *)p - base);
  jr.val[jr.n] = v;
  jr.wide = wide ? jr.wide | 1u << jr.n : jr.wide & ~(1u << jr.n);
  jr.n++;
}

static void jstores(uint32_t n, uint32_t wide, const uint64_t *at,
                    const uint64_t *val) {
  for (uint32_t i = 0; i < n; i++) {
    char *p = base + at[i];
    if (wide >> i & 1) atomic_store((_Atomic uint64_t *)(void *)p, val[i]);
    else atomic_store((_Atomic uint32_t *)(void *)p, (uint32_t)val[i]);
  }
}

static void jcommit(arena *a) {
  if (!jr.n) return;
  memcpy(a->jat, jr.at, 8 * jr.n);
  memcpy(a->jval, jr.val, 8 * jr.n);
  a->jwide = jr.wide;
  atomic_store_explicit(&a->jn, jr.n, memory_order_release);  /* commit */
  jstores(jr.n, jr.wide, jr.at, jr.val);
  atomic_store_explicit(&a->jn, 0, memory_order_release);
  jr.n = 0;
}

/* Rebuild what the headers imply after an owner died holding the lock:
** the free lists, the mask, `used`, merged buddies, the in-flight count.
** The headers form a valid partition at every step (see the top). */
static void repair(arena *a) {
  uint64_t o = a->origin, used = 0, rel;
  uint32_t jn = atomic_load(&a->jn);
  if (jn) {  /* committed: finish it (the same values again) */
    jstores(jn < PCR_JOURNAL ? jn : PCR_JOURNAL, a->jwide, a->jat, a->jval);
    atomic_store(&a->jn, 0);
  }
  jr.n = 0;
  for (rel = 0; rel < a->limit; rel += BSIZE(gettag(blk(o + rel)) >> 32)) {
    uint64_t t = gettag(blk(o + rel));
    if (!tagok(a, rel, t)) {
      fprintf(stderr, "pcrun: shared arena corrupt at offset %llu\n",
              (unsigned long long)(o + rel));
      abort();
    }
    if ((uint32_t)t == BLOCK_LIVE) used += BSIZE(t >> 32);
  }
  /* Merge free buddies, a pass at a time, until a pass merges none (a
  ** merge can make a pair with a block the pass has left behind). */
  for (int merged = 1; merged;) {
    merged = 0;
    for (rel = 0; rel < a->limit;) {
      uint64_t t = gettag(blk(o + rel));
      unsigned cls = (unsigned)(t >> 32);
      uint64_t s = BSIZE(cls), bud = buddy(a, rel, cls);
      if ((uint32_t)t == BLOCK_FREE && bud > rel && bud != UINT64_MAX &&
          gettag(blk(o + bud)) == TAG(BLOCK_FREE, cls)) {
        settag(blk(o + rel), BLOCK_FREE, cls + 1);
        settag(blk(o + bud), 0, 0);
        merged = 1;
        continue;  /* the bigger block may merge again */
      }
      rel += s;
    }
  }
  memset(a->freelist, 0, sizeof a->freelist);
  a->nonempty = 0;
  for (rel = 0; rel < a->limit; rel += BSIZE(gettag(blk(o + rel)) >> 32)) {
    uint64_t t = gettag(blk(o + rel));
    if ((uint32_t)t == BLOCK_FREE) push(a, o + rel, (unsigned)(t >> 32));
  }
  atomic_store((_Atomic uint64_t *)&a->used, used);
  uint32_t n = 0;
  for (int i = 0; i < NINFLIGHT; i++) n += a->inflight[i].pid != 0;
  atomic_store(&a->ninflight, n);
  a->repairs++;
}

static void lock(arena *a) {
  int r;
  while ((r = pcr__lock_lock(&a->lock, -1)) == -EINTR) {}
  if (PCR_UNLIKELY(r == PCR_LOCK_OWNERDEAD)) repair(a);
}

int pcr__shm_attach(size_t size) {
  if (base) return 0;
  if (size == 0 && (size = envsize()) == 0) return -EINVAL;
  size = PCR_ALIGN_UP(size, 1 << 21);
  int fd = memfd_create("pcrun-arena", MFD_CLOEXEC);
  if (fd < 0) return -errno;
  if (ftruncate(fd, (off_t)size) < 0) {
    int e = errno;
    close(fd);
    return -e;
  }
  void *p = mmap(NULL, size, PROT_READ | PROT_WRITE,
                 MAP_SHARED | MAP_NORESERVE, fd, 0);
  close(fd);  /* the mapping keeps the memfd alive */
  if (p == MAP_FAILED) return -errno;
  arena *a = p;
  a->magic = ARENA_MAGIC;
  a->version = ARENA_VERSION;
  a->size = size;
  /* The origin lies 16 bytes before a page: blocks of a page or more have
  ** page-aligned payloads (released by page), smaller ones payloads
  ** aligned to their size. */
  a->origin = PCR_ALIGN_UP(sizeof(arena) + BLOCK_HDR, 4096) - BLOCK_HDR;
  a->limit = (size - a->origin) & ~(BSIZE(0) - 1);
  base = p;
  mapsize = size;
  /* The space as the fewest blocks: each the largest that fits, which
  ** keeps every one at a multiple of its size. */
  for (uint64_t rel = 0; a->limit - rel >= BSIZE(0);) {
    unsigned cls = NCLASS - 1;
    while (BSIZE(cls) > a->limit - rel) cls--;
    settag(blk(a->origin + rel), BLOCK_FREE, cls);
    push(a, a->origin + rel, cls);
    rel += BSIZE(cls);
  }
  return 0;
}

size_t pcr__shm_used(void) {
  return base ? (size_t)atomic_load((_Atomic uint64_t *)&((arena *)base)->used)
              : 0;
}

static unsigned classof(size_t n) {
  if (n > ((size_t)1 << 62)) return NCLASS;
  size_t need = n + BLOCK_HDR;
  if (need <= BSIZE(0)) return 0;
  return (unsigned)(64 - __builtin_clzll((unsigned long long)(need - 1))) -
         MIN_SHIFT;
}

/* slot: see pcr__shm_alloc_into; NULL for none. */
static void *alloc(size_t n, void *slot, uint64_t tag) {
  if (!base && pcr__shm_attach(0) < 0) return NULL;
  arena *a = (arena *)base;
  unsigned c = classof(n);
  if (c >= NCLASS) return NULL;
  lock(a);
  uint64_t fits = a->nonempty & ~(((uint64_t)1 << c) - 1);
  if (!fits) {
    pcr__lock_unlock(&a->lock);
    return NULL;
  }
  /* The smallest free block that fits, halved down to class c: the upper
  ** halves, largest first, go on their lists before the block's own header
  ** says it is live (one store: the last). */
  unsigned from = (unsigned)__builtin_ctzll(fits);
  uint64_t off = a->freelist[from];
  unlink_(a, off, from);
  while (from > c) {
    from--;
    uint64_t half = off + BSIZE(from);
    settag(blk(half), BLOCK_FREE, from);
    push(a, half, from);
  }
  if (slot) {  /* live and recorded as one (the journal) */
    uint64_t v = tag == PCR_SHM_ADDR
                     ? (uint64_t)(uintptr_t)(base + off + BLOCK_HDR)
                     : (off + BLOCK_HDR) | tag;
    jput(slot, v, 1);
  }
  jput(&blk(off)->tag, TAG(BLOCK_LIVE, c), 1);
  jcommit(a);
  a->used += BSIZE(c);
  pcr__lock_unlock(&a->lock);
  return base + off + BLOCK_HDR;
}

void *pcr__shm_alloc(size_t n) { return alloc(n, NULL, 0); }

void *pcr__shm_alloc_into(size_t n, void *slot, uint64_t tag) {
  return alloc(n, slot, tag);
}

/* The record is taken first (pid, no block yet) and the block allocated
** into it (pcr__shm_alloc_into): a sender killed at any instant after the
** allocation leaves it to its reaper. */
void *pcr__shm_alloc_inflight(size_t n) {
  if (!base && pcr__shm_attach(0) < 0) return NULL;
  arena *a = (arena *)base;
  int slot = -1;
  lock(a);
  for (int i = 0; i < NINFLIGHT && slot < 0; i++)
    if (!a->inflight[i].pid) {
      a->inflight[i].off = 0;
      a->inflight[i].pid = pcr__self();
      atomic_fetch_add(&a->ninflight, 1);
      slot = i;
    }
  pcr__lock_unlock(&a->lock);
  if (slot < 0) return pcr__shm_alloc(n);  /* all taken: unrecorded */
  void *p = alloc(n, &a->inflight[slot].off, 0);
  if (!p) {
    lock(a);
    a->inflight[slot].pid = 0;
    atomic_fetch_sub(&a->ninflight, 1);
    pcr__lock_unlock(&a->lock);
  }
  return p;
}

/* Forget p's in-flight record, if any. Caller holds the arena lock. */
static void unrecord(arena *a, uint64_t off) {
  for (int i = 0; i < NINFLIGHT; i++)
    if (a->inflight[i].pid && a->inflight[i].off == off) {
      a->inflight[i].pid = 0;
      atomic_fetch_sub(&a->ninflight, 1);
      return;
    }
}

/* This process's in-flight record of p: its index, or -1. */
static int mine(arena *a, void *p) {
  if (!p || !atomic_load(&a->ninflight)) return -1;
  uint64_t off = pcr__shm_offset(p);
  uint32_t me = pcr__self();
  for (int i = 0; i < NINFLIGHT; i++)
    if (__atomic_load_n(&a->inflight[i].pid, __ATOMIC_ACQUIRE) == me &&
        a->inflight[i].off == off)
      return i;
  return -1;
}

/* Without the lock: one store ends the record, right before the frame
** is published (a death inside the lock between the two would leave the
** block to nobody; the repair keeps it live). */
void pcr__shm_handoff(void *p) {
  arena *a = (arena *)base;
  int i = mine(a, p);
  if (i < 0) return;
  __atomic_store_n(&a->inflight[i].pid, 0, __ATOMIC_RELEASE);
  atomic_fetch_sub(&a->ninflight, 1);
}

void pcr__shm_reap(uint32_t pid) {
  arena *a = (arena *)base;
  if (!a || !atomic_load(&a->ninflight)) return;
  for (int i = 0; i < NINFLIGHT; i++) {
    lock(a);
    uint64_t off = a->inflight[i].pid == pid ? a->inflight[i].off : 0;
    if (a->inflight[i].pid == pid && !off) {  /* died before allocating */
      a->inflight[i].pid = 0;
      atomic_fetch_sub(&a->ninflight, 1);
    }
    pcr__lock_unlock(&a->lock);
    if (off) pcr__shm_free(base + off);  /* unrecords it */
  }
}

_Atomic uint64_t *pcr__shm_ledger(uint32_t pid, int create) {
  arena *a = (arena *)base;
  if (!a) return NULL;
  for (int i = 0; i < NLEDGER; i++)
    if (atomic_load(&a->ledger[i].pid) == pid) return &a->ledger[i].off;
  if (!create) return NULL;
  for (int i = 0; i < NLEDGER; i++) {
    uint32_t free_ = 0;
    if (atomic_compare_exchange_strong(&a->ledger[i].pid, &free_, pid)) {
      atomic_store(&a->ledger[i].off, 0);
      return &a->ledger[i].off;
    }
  }
  return NULL;  /* all taken: this process's references go unrecorded */
}

void pcr__shm_ledger_clear(uint32_t pid) {
  arena *a = (arena *)base;
  for (int i = 0; a && i < NLEDGER; i++)
    if (atomic_load(&a->ledger[i].pid) == pid) {
      atomic_store(&a->ledger[i].off, 0);
      atomic_store(&a->ledger[i].pid, 0);
    }
}

/* slot: see pcr__shm_free_set; NULL for none. */
static void freeb(void *p, void *slot, uint64_t val) {
  if (!p) return;
  arena *a = (arena *)base;
  block *b = (block *)((char *)p - BLOCK_HDR);
  uint64_t t = gettag(b);
  if ((uint32_t)t != BLOCK_LIVE) abort();  /* double free: corrupt arena */
  unsigned cls = (unsigned)(t >> 32);
  size_t bsize = BSIZE(cls);
  if (bsize >= RELEASE_MIN) {
    /* Whole pages of its own only: the kernel rounds a length up, and the
    ** next block's header lies in this block's last page. */
    uintptr_t from = PCR_ALIGN_UP((uintptr_t)p, 4096);
    uintptr_t to = ((uintptr_t)b + bsize) & ~(uintptr_t)4095;
    madvise((void *)from, to - from, MADV_REMOVE);
  }
  uint64_t o = a->origin, rel = (uint64_t)((char *)b - base) - o, bud;
  lock(a);
  if (atomic_load(&a->ninflight)) unrecord(a, pcr__shm_offset(p));
  a->used -= bsize;
  if (slot) jput(slot, val, 1);  /* unrecorded with the free (issue 9) */
  jput(&b->tag, TAG(BLOCK_FREE, cls), 1);
  jcommit(a);
  /* Merge with the buddy while it is free and whole: the pair's header
  ** (the lower one) first, then the upper one is cleared. */
  while ((bud = buddy(a, rel, cls)) != UINT64_MAX &&
         gettag(blk(o + bud)) == TAG(BLOCK_FREE, cls)) {
    unlink_(a, o + bud, cls);
    uint64_t lo = rel & bud, hi = rel | bud;
    settag(blk(o + lo), BLOCK_FREE, cls + 1);
    settag(blk(o + hi), 0, 0);
    rel = lo;
    cls++;
  }
  push(a, o + rel, cls);
  pcr__lock_unlock(&a->lock);
}

void pcr__shm_jbegin(void) { lock((arena *)base); }

void pcr__shm_jput(void *p, uint64_t v, int wide) { jput(p, v, wide); }

void pcr__shm_jend(void) {
  arena *a = (arena *)base;
  jcommit(a);
  pcr__lock_unlock(&a->lock);
}

void pcr__shm_jhandoff(void *p) {
  arena *a = (arena *)base;
  int i = mine(a, p);
  if (i < 0) return;
  jput(&a->inflight[i].pid, 0, 0);
  atomic_fetch_sub(&a->ninflight, 1);  /* derived: repair recounts */
}

void pcr__shm_settle(void) {
  arena *a = (arena *)base;
  if (!a) return;
  lock(a);
  pcr__lock_unlock(&a->lock);
}

void pcr__shm_free(void *p) { freeb(p, NULL, 0); }

void pcr__shm_free_from(void *p, void *slot) { freeb(p, slot, 0); }

void pcr__shm_free_set(void *p, void *slot, uint64_t val) {
  freeb(p, slot, val);
}

int pcr__shm_check(char *why, size_t n) {
  arena *a = (arena *)base;
  uint64_t o = a->origin, used = 0, nfree[NCLASS] = {0}, rel;
  int bad = 0;
  lock(a);
#define FAIL(...) do { snprintf(why, n, __VA_ARGS__); bad = 1; goto out; } \
  while (0)
  for (rel = 0; rel < a->limit; rel += BSIZE(gettag(blk(o + rel)) >> 32)) {
    uint64_t t = gettag(blk(o + rel));
    unsigned cls = (unsigned)(t >> 32);
    if (!tagok(a, rel, t)) FAIL("bad header at %llu", (unsigned long long)rel);
    if ((uint32_t)t == BLOCK_LIVE) {
      used += BSIZE(cls);
      continue;
    }
    nfree[cls]++;
    uint64_t bud = buddy(a, rel, cls);
    if (bud != UINT64_MAX && bud > rel &&
        gettag(blk(o + bud)) == TAG(BLOCK_FREE, cls))
      FAIL("free buddies not merged at %llu, class %u",
           (unsigned long long)rel, cls);
  }
  if (used != a->used)
    FAIL("used is %llu, the live blocks make %llu",
         (unsigned long long)a->used, (unsigned long long)used);
  for (unsigned c = 0; c < NCLASS; c++) {
    uint64_t k = 0, prev = 0;
    for (uint64_t off = a->freelist[c]; off; off = blk(off)->next, k++) {
      if (k >= nfree[c] || off < o || off - o >= a->limit ||
          gettag(blk(off)) != TAG(BLOCK_FREE, c) || blk(off)->prev != prev)
        FAIL("free list %u broken at its entry %llu", c,
             (unsigned long long)k);
      prev = off;
    }
    if (k != nfree[c])
      FAIL("free list %u holds %llu blocks, the headers %llu", c,
           (unsigned long long)k, (unsigned long long)nfree[c]);
    if (!!(a->nonempty >> c & 1) != (k > 0))
      FAIL("mask bit %u is wrong", c);
  }
#undef FAIL
out:
  pcr__lock_unlock(&a->lock);
  return bad ? -1 : 0;
}

uint64_t pcr__shm_repairs(void) {
  return base ? ((arena *)base)->repairs : 0;
}

size_t pcr__shm_largest_free(void) {
  arena *a = (arena *)base;
  if (!a) return 0;
  lock(a);
  uint64_t m = a->nonempty;
  pcr__lock_unlock(&a->lock);
  return m ? (size_t)BSIZE(63 - __builtin_clzll(m)) - BLOCK_HDR : 0;
}

uint64_t pcr__shm_offset(const void *p) {
  return (uint64_t)((const char *)p - base);
}

void *pcr__shm_at(uint64_t off, size_t size) {
  /* off may come from a message: every payload is 16-byte aligned, and a
  ** header is read only once the offset is known to be one. */
  if (!base || off < sizeof(arena) + BLOCK_HDR || off >= mapsize ||
      size > mapsize - off || off % BLOCK_HDR != 0)
    return NULL;
  block *b = (block *)(base + off - BLOCK_HDR);
  if ((uint32_t)gettag(b) != BLOCK_LIVE) return NULL;
  return base + off;
}

static void (*dtors[8])(pcr_obj *);

void pcr__obj_set_dtor(uint32_t type, void (*dtor)(pcr_obj *)) {
  if (type < 8) dtors[type] = dtor;
}

pcr_obj *pcr__obj_new(size_t size, uint32_t type) {
  pcr_obj *o = pcr__shm_alloc(size);
  if (!o) return NULL;
  memset(o, 0, size);
  o->type = type;
  atomic_init(&o->refs, 1);
  o->magic = PCR_OBJ_MAGIC;
  return o;
}

uint32_t pcr__obj_refop(pcr_obj *o, int delta, _Atomic uint32_t *also,
                        _Atomic uint64_t *e, uint64_t ev, uint64_t evlast) {
  arena *a = (arena *)base;
  lock(a);
  uint32_t n = atomic_load_explicit(&o->refs, memory_order_relaxed) +
               (uint32_t)delta;
  jput(&o->refs, n, 0);
  if (also) jput(also, atomic_load(also) + (uint32_t)delta, 0);
  if (e) jput(e, n ? ev : evlast, 1);
  jcommit(a);
  pcr__lock_unlock(&a->lock);
  return n;
}

void pcr__obj_ref(pcr_obj *o) { pcr__obj_refop(o, 1, NULL, NULL, 0, 0); }

void pcr__shm_count(_Atomic uint32_t *c, int delta) {
  arena *a = (arena *)base;
  lock(a);
  atomic_store(c, atomic_load(c) + (uint32_t)delta);
  pcr__lock_unlock(&a->lock);
}

void pcr__obj_finish(pcr_obj *o, void *slot) {
  if (o->magic == PCR_OBJ_MAGIC && o->type < 8 && dtors[o->type])
    dtors[o->type](o);
  o->magic = 0;
  pcr__shm_free_from(o, slot);
}

int pcr__obj_unref(pcr_obj *o) {
  if (pcr__obj_refop(o, -1, NULL, NULL, 0, 0)) return 0;
  pcr__obj_finish(o, NULL);
  return 1;
}
