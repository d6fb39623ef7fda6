/* The shared arena: one memfd mapping created before any fork, so it lies
** at the same address in every process of the tree, plus its allocator and
** reference-counted object headers. Free of Lua. */
#ifndef PCR_SHM_H
#define PCR_SHM_H

#include <stdatomic.h>
#include <stddef.h>
#include <stdint.h>

#define PCR_ARENA_DEFAULT ((size_t)1 << 30)
#define PCR_ARENA_MIN ((uint64_t)1 << 20)   /* PCRUN_ARENA's bounds */
#define PCR_ARENA_MAX ((uint64_t)1 << 40)

/* Map the arena of `size` bytes (0: $PCRUN_ARENA, else 1 GiB) if this
** process has none yet. Returns 0 or a negative errno. Parent only, before
** forking the processes that are to share it; idempotent. */
int pcr__shm_attach(size_t size);

/* Why $PCRUN_ARENA is refused (a message naming the variable, its value
** and the accepted forms), or NULL when it is unset or valid. */
const char *pcr__shm_env_error(void);

/* Base address and size of the arena, or NULL/0 before attach. */
char *pcr__shm_base(void);
size_t pcr__shm_size(void);
/* Bytes currently handed out by the allocator (all processes together). */
size_t pcr__shm_used(void);

/* Allocate n bytes aligned to 16 (64 for n >= 64, 4096 for n >= 4080).
** Returns NULL when no free block is large enough. Any process; takes the
** arena lock. The largest possible block is half the arena or more. */
void *pcr__shm_alloc(size_t n);
/* As pcr__shm_alloc, and the block is recorded before the arena lock is
** released: the 8 bytes at slot get its offset | tag (tag below 16), or
** its address when tag is PCR_SHM_ADDR. So whoever owns slot owns the
** block from the allocation on, whenever the allocating process dies. */
#define PCR_SHM_ADDR UINT64_MAX
void *pcr__shm_alloc_into(size_t n, void *slot, uint64_t tag);
/* Return a block from pcr__shm_alloc. NULL is a no-op. */
void pcr__shm_free(void *p);
/* As pcr__shm_free, and the 8 bytes at slot (the block's record, see
** pcr__shm_alloc_into) are zeroed before the arena lock is released. */
void pcr__shm_free_from(void *p, void *slot);
/* As pcr__shm_free_from, storing val at slot (8 bytes, in the arena)
** instead of zero: the free and the store land together. */
void pcr__shm_free_set(void *p, void *slot, uint64_t val);
/* Take and release the arena lock: a commit a dead process left half
** done is finished (see shm.c), so its records may be read. */
void pcr__shm_settle(void);
/* A commit of the journal (see shm.c) for stores of the caller's: begin
** takes the arena lock; put adds a store (p in the arena; 8 bytes wide,
** else 4), at most PCR_JOURNAL in all; end makes them land together and
** releases the lock. jhandoff adds the end of p's in-flight record
** (pcr__shm_handoff) to the commit. */
void pcr__shm_jbegin(void);
void pcr__shm_jput(void *p, uint64_t v, int wide);
void pcr__shm_jend(void);
void pcr__shm_jhandoff(void *p);
/* Stores one journal commit may hold (see shm.c). */
#define PCR_JOURNAL 32

/* Tests and diagnosis: the largest n pcr__shm_alloc could serve now, and a
** check of the allocator's whole state (headers, free lists, `used`, no
** free buddies left unmerged). Check returns 0, or -1 with why set. */
size_t pcr__shm_largest_free(void);
int pcr__shm_check(char *why, size_t n);
/* How many times a process found the lock's owner dead and rebuilt the
** allocator's lists and counts from the block headers. */
uint64_t pcr__shm_repairs(void);

/* A large message's block: allocated as pcr__shm_alloc, and recorded as
** in flight with this process's pid until pcr__shm_handoff (the frame
** that carries it is about to be published) or pcr__shm_free. Whoever
** reaps a process calls pcr__shm_reap(pid): the blocks it left in flight
** (killed while copying a message in) are freed. */
void *pcr__shm_alloc_inflight(size_t n);
void pcr__shm_handoff(void *p);
void pcr__shm_reap(uint32_t pid);

/* The slot holding the arena offset of pid's ledger (frame.c), made if
** create; NULL if there is none (or no room). Clear drops the slot. */
_Atomic uint64_t *pcr__shm_ledger(uint32_t pid, int create);
void pcr__shm_ledger_clear(uint32_t pid);

/* Offsets let a pointer cross a process boundary in encoded form. */
uint64_t pcr__shm_offset(const void *p);
/* Pointer for an offset, or NULL if it does not name a live object of
** `size` bytes inside the arena. */
void *pcr__shm_at(uint64_t off, size_t size);

/* Every shared object starts with this header. refs counts the handles
** that hold it in all processes; the last unref frees it. */
typedef struct pcr_obj {
  uint32_t magic;           /* PCR_OBJ_MAGIC while live; written once */
  uint32_t type;            /* PCR_OBJ_* */
  _Atomic uint32_t refs;    /* atomic inc/dec by any holder */
  uint32_t flags;
} pcr_obj;

#define PCR_OBJ_MAGIC 0x6f524350u  /* "PCRo" */
enum { PCR_OBJ_RING = 1, PCR_OBJ_QUEUE, PCR_OBJ_ARRAY, PCR_OBJ_SYNC,
       PCR_OBJ_DICT, PCR_OBJ_LEND };

/* Allocate an object of `size` bytes (header included) with refs = 1 and
** the rest zeroed. NULL when the arena is full. */
pcr_obj *pcr__obj_new(size_t size, uint32_t type);
void pcr__obj_ref(pcr_obj *o);
/* Change o's references by delta, and the counter *also (a ring's
** readers or writers; NULL: none) by delta too, and store at *e (a ledger
** entry; NULL: none) ev, or evlast when no reference is left: all as one
** under the arena lock, so a death at any instant leaves all or none
** done. Every change of refs goes through here. Returns the references
** left. */
uint32_t pcr__obj_refop(pcr_obj *o, int delta, _Atomic uint32_t *also,
                        _Atomic uint64_t *e, uint64_t ev, uint64_t evlast);
/* A reference count's companion (a ring's readers or writers) changed
** alone, under the arena lock as pcr__obj_refop's changes are. */
void pcr__shm_count(_Atomic uint32_t *c, int delta);
/* Run dtor on an object of this type when its last reference goes, before
** its memory is freed. Set once per type, before any fork. */
void pcr__obj_set_dtor(uint32_t type, void (*dtor)(pcr_obj *));
/* Drop one reference; frees the object when it was the last. Returns 1 if
** freed. Types with sub-allocations free them before the last unref. */
int pcr__obj_unref(pcr_obj *o);
/* The end of an object nobody else references (refs 0): its dtor, then
** its block freed as by pcr__shm_free_from(o, slot). A dtor may run
** again on an object whose owner died inside it: each gives up what it
** releases before releasing it (a death in between leaks, never frees
** twice). */
void pcr__obj_finish(pcr_obj *o, void *slot);

#endif
