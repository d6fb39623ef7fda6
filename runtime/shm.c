/* The shared arena and its allocator: power-of-two size classes with free
** lists, a bump pointer for fresh space, one robust lock. Large freed
** blocks give their pages back to the kernel (MADV_REMOVE). */
#include "shm.h"
#include "futex.h"
#include "pcrdef.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <unistd.h>

#define ARENA_MAGIC 0x41524350u   /* "PCRA" */
#define ARENA_VERSION 2
#define MIN_SHIFT 5               /* smallest block: 32 bytes */
#define NCLASS 48
#define BLOCK_HDR 16
#define NINFLIGHT 64
#define NLEDGER 1024
/* Freed blocks keep their pages for reuse (refaulting shared memory costs
** more than copying it) unless they are this large. */
#define RELEASE_MIN ((size_t)1 << 28)

typedef struct block {
  uint32_t magic;      /* BLOCK_LIVE or BLOCK_FREE */
  uint32_t cls;        /* size class: block spans 1 << (cls + MIN_SHIFT) */
  uint64_t next;       /* free list link (offset), when free */
} block;
_Static_assert(sizeof(block) == BLOCK_HDR, "block header is 16 bytes");

#define BLOCK_LIVE 0x4c424350u
#define BLOCK_FREE 0x46424350u

typedef struct arena {
  uint32_t magic, version;   /* written once by the creator */
  uint64_t size;             /* mapping size; constant */
  pcr_lock lock;             /* guards everything below */
  uint64_t bump;             /* offset of never-used space */
  uint64_t used;             /* bytes in live blocks */
  uint64_t freelist[NCLASS]; /* offsets of free blocks, 0 = empty */
  /* Large-message blocks between their allocation and their frame: the
  ** sender's pid and the block, so that whoever reaps a sender killed
  ** meanwhile frees it. */
  _Atomic uint32_t ninflight;
  struct { uint32_t pid; uint64_t off; } inflight[NINFLIGHT];
  /* Per process (not the root): the arena offset of its ledger of the
  ** references it owns, for whoever reaps it (frame.c). */
  struct { _Atomic uint32_t pid; _Atomic uint64_t off; } ledger[NLEDGER];
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
  a->bump = PCR_ALIGN_UP(sizeof(arena), 64);
  base = p;
  mapsize = size;
  return 0;
}

size_t pcr__shm_used(void) {
  return base ? (size_t)atomic_load((_Atomic uint64_t *)&((arena *)base)->used)
              : 0;
}

static void lock(arena *a) {
  /* A dead owner may have left one free list half-updated; the blocks it
  ** was moving are lost, the lists stay valid because links are written
  ** before heads. */
  while (pcr__lock_lock(&a->lock, -1) == -EINTR) {}
}

static unsigned classof(size_t n) {
  size_t need = n + BLOCK_HDR;
  unsigned c = 0;
  while (((size_t)1 << (c + MIN_SHIFT)) < need) c++;
  return c;
}

/* slot: see pcr__shm_alloc_into; NULL for none. */
static void *alloc(size_t n, void *slot, uint64_t tag) {
  if (!base && pcr__shm_attach(0) < 0) return NULL;
  arena *a = (arena *)base;
  unsigned c = classof(n);
  if (c >= NCLASS) return NULL;
  size_t bsize = (size_t)1 << (c + MIN_SHIFT);
  block *b = NULL;
  lock(a);
  unsigned from = c;
  while (from < NCLASS && !a->freelist[from]) from++;
  if (from < NCLASS) {
    /* Take the smallest free block that fits; halve it down to class c,
    ** leaving the upper halves on their free lists. */
    b = (block *)(base + a->freelist[from]);
    a->freelist[from] = b->next;
    while (from > c) {
      from--;
      block *half = (block *)((char *)b + ((size_t)1 << (from + MIN_SHIFT)));
      half->magic = BLOCK_FREE;
      half->cls = from;
      half->next = a->freelist[from];
      a->freelist[from] = (uint64_t)((char *)half - base);
    }
  } else {
    /* Align big blocks so their payload can be page-released. */
    size_t align = bsize >= 4096 ? 4096 : 64;
    uint64_t off = PCR_ALIGN_UP(a->bump + BLOCK_HDR, align) - BLOCK_HDR;
    if (off + bsize <= a->size) {
      b = (block *)(base + off);
      a->bump = off + bsize;
    }
  }
  if (b) a->used += bsize;
  if (b && slot) {  /* recorded before the lock goes (issue 9: a hook) */
    uint64_t off = (uint64_t)((char *)b - base) + BLOCK_HDR;
    uint64_t v = tag == PCR_SHM_ADDR ? (uint64_t)(uintptr_t)(base + off)
                                     : off | tag;
    b->magic = BLOCK_LIVE;
    b->cls = c;
    memcpy(slot, &v, sizeof v);
  }
  pcr__lock_unlock(&a->lock);
  if (!b) return NULL;
  b->magic = BLOCK_LIVE;
  b->cls = c;
  return (char *)b + BLOCK_HDR;
}

void *pcr__shm_alloc(size_t n) { return alloc(n, NULL, 0); }

void *pcr__shm_alloc_into(size_t n, void *slot, uint64_t tag) {
  return alloc(n, slot, tag);
}

void *pcr__shm_alloc_inflight(size_t n) {
  void *p = pcr__shm_alloc(n);
  if (!p) return NULL;
  arena *a = (arena *)base;
  uint64_t off = pcr__shm_offset(p);
  lock(a);
  for (int i = 0; i < NINFLIGHT; i++)
    if (!a->inflight[i].pid) {  /* all taken: unrecorded, as before */
      a->inflight[i].off = off;
      a->inflight[i].pid = pcr__self();
      atomic_fetch_add(&a->ninflight, 1);
      break;
    }
  pcr__lock_unlock(&a->lock);
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

void pcr__shm_handoff(void *p) {
  arena *a = (arena *)base;
  if (!p || !atomic_load(&a->ninflight)) return;
  lock(a);
  unrecord(a, pcr__shm_offset(p));
  pcr__lock_unlock(&a->lock);
}

void pcr__shm_reap(uint32_t pid) {
  arena *a = (arena *)base;
  if (!a || !atomic_load(&a->ninflight)) return;
  for (int i = 0; i < NINFLIGHT; i++) {
    lock(a);
    uint64_t off = a->inflight[i].pid == pid ? a->inflight[i].off : 0;
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

/* slot: see pcr__shm_free_from; NULL for none. */
static void freeb(void *p, void *slot) {
  if (!p) return;
  arena *a = (arena *)base;
  block *b = (block *)((char *)p - BLOCK_HDR);
  if (b->magic != BLOCK_LIVE) abort();  /* double free: corrupt arena */
  size_t bsize = (size_t)1 << (b->cls + MIN_SHIFT);
  if (bsize >= RELEASE_MIN) {
    char *from = (char *)PCR_ALIGN_UP((uintptr_t)p, 4096);
    madvise(from, (size_t)((char *)b + bsize - from), MADV_REMOVE);
  }
  lock(a);
  b->magic = BLOCK_FREE;  /* under the lock: see pcr__shm_free_from */
  if (atomic_load(&a->ninflight)) unrecord(a, pcr__shm_offset(p));
  b->next = a->freelist[b->cls];
  a->freelist[b->cls] = (uint64_t)((char *)b - base);
  a->used -= bsize;
  if (slot) memset(slot, 0, 8);  /* unrecorded with the free (issue 9) */
  pcr__lock_unlock(&a->lock);
}

void pcr__shm_free(void *p) { freeb(p, NULL); }

void pcr__shm_free_from(void *p, void *slot) { freeb(p, slot); }

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
  if (b->magic != BLOCK_LIVE) return NULL;
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

void pcr__obj_ref(pcr_obj *o) {
  atomic_fetch_add_explicit(&o->refs, 1, memory_order_relaxed);
}

void pcr__obj_finish(pcr_obj *o, void *slot) {
  if (o->magic == PCR_OBJ_MAGIC && o->type < 8 && dtors[o->type])
    dtors[o->type](o);
  o->magic = 0;
  pcr__shm_free_from(o, slot);
}

int pcr__obj_unref(pcr_obj *o) {
  if (atomic_fetch_sub_explicit(&o->refs, 1, memory_order_acq_rel) != 1)
    return 0;
  if (o->type < 8 && dtors[o->type]) dtors[o->type](o);
  o->magic = 0;
  pcr__shm_free(o);
  return 1;
}
