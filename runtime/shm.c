/* The shared arena and its allocator: power-of-two size classes with free
** lists, a bump pointer for fresh space, one robust lock. Large freed
** blocks give their pages back to the kernel (MADV_REMOVE). */
#include "shm.h"
#include "futex.h"
#include "pcrdef.h"

#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <unistd.h>

#define ARENA_MAGIC 0x41524350u   /* "PCRA" */
#define ARENA_VERSION 1
#define MIN_SHIFT 5               /* smallest block: 32 bytes */
#define NCLASS 48
#define BLOCK_HDR 16
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
} arena;

static char *base;
static size_t mapsize;

char *pcr__shm_base(void) { return base; }
size_t pcr__shm_size(void) { return mapsize; }

static size_t envsize(void) {
  const char *s = getenv("PCRUN_ARENA");
  if (!s || !*s) return PCR_ARENA_DEFAULT;
  char *end;
  double v = strtod(s, &end);
  switch (*end) {
  case 'k': case 'K': v *= 1024; break;
  case 'm': case 'M': v *= 1024 * 1024; break;
  case 'g': case 'G': v *= 1024.0 * 1024 * 1024; break;
  }
  return v < (1 << 20) ? ((size_t)1 << 20) : (size_t)v;
}

int pcr__shm_attach(size_t size) {
  if (base) return 0;
  if (size == 0) size = envsize();
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

void *pcr__shm_alloc(size_t n) {
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
  pcr__lock_unlock(&a->lock);
  if (!b) return NULL;
  b->magic = BLOCK_LIVE;
  b->cls = c;
  return (char *)b + BLOCK_HDR;
}

void pcr__shm_free(void *p) {
  if (!p) return;
  arena *a = (arena *)base;
  block *b = (block *)((char *)p - BLOCK_HDR);
  if (b->magic != BLOCK_LIVE) abort();  /* double free: corrupt arena */
  size_t bsize = (size_t)1 << (b->cls + MIN_SHIFT);
  if (bsize >= RELEASE_MIN) {
    char *from = (char *)PCR_ALIGN_UP((uintptr_t)p, 4096);
    madvise(from, (size_t)((char *)b + bsize - from), MADV_REMOVE);
  }
  b->magic = BLOCK_FREE;
  lock(a);
  b->next = a->freelist[b->cls];
  a->freelist[b->cls] = (uint64_t)((char *)b - base);
  a->used -= bsize;
  pcr__lock_unlock(&a->lock);
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

int pcr__obj_unref(pcr_obj *o) {
  if (atomic_fetch_sub_explicit(&o->refs, 1, memory_order_acq_rel) != 1)
    return 0;
  if (o->type < 8 && dtors[o->type]) dtors[o->type](o);
  o->magic = 0;
  pcr__shm_free(o);
  return 1;
}
