/* References carried by frames (frame.h). */
#include "frame.h"
#include "ring.h"
#include "futex.h"

#include <stdlib.h>
#include <string.h>

uint64_t pcr__frame_take(pcr_obj *o, unsigned role) {
  pcr_ring *r = (pcr_ring *)o;
  if (role == PCR_REF_READER) atomic_fetch_add(&r->readers, 1);
  if (role == PCR_REF_WRITER) atomic_fetch_add(&r->writers, 1);
  pcr__obj_ref(o);
  return pcr__shm_offset(o) | role;
}

void pcr__frame_drop(uint64_t ref) {
  unsigned role = (unsigned)(ref & PCR_REF_ROLES);
  pcr_obj *o = pcr__shm_at(ref & ~(uint64_t)PCR_REF_ROLES, sizeof(pcr_obj));
  if (!o || o->magic != PCR_OBJ_MAGIC) return;
  if (role && o->type == PCR_OBJ_RING) {
    pcr_ring *r = (pcr_ring *)o;
    atomic_fetch_sub(role == PCR_REF_READER ? &r->readers : &r->writers, 1);
  }
  pcr__obj_unref(o);
}

/* -- The ledger ---------------------------------------------------------
** A forked process records the references it owns (handles it made or
** received) in an arena block named in the arena's ledger table under
** its pid, so that whoever reaps it drops them when it was killed. The
** reference is taken before it is recorded and unrecorded before it is
** dropped: a death in between leaks one reference, never frees twice. */

typedef struct ledger {
  uint64_t cap, n;
  uint64_t refs[];
} ledger;

static int recording;           /* a forked process: its parent reaps it */
static uint32_t me;
static _Atomic uint64_t *slot;  /* our ledger's offset, in the arena */
static ledger *mine;
static long **back;             /* back[i]: where entry i's index lives */
static long *pidx;              /* the pending references' ledger indices */
static size_t npidx, cappidx;

void pcr__ledger_forked(void) {
  recording = 1;
  me = 0;
  slot = NULL;
  mine = NULL;  /* the parent's, and the parent's to free */
  back = NULL;  /* a copy of the parent's heap: leave it */
  npidx = 0;    /* the parent's pending message is the parent's */
}

/* A process forked by other means (an embedding's zygote) holds a copy
** of its parent's ledger state: it records nothing. */
static int stale(void) {
  if (slot && me != pcr__self()) {
    recording = 0;
    slot = NULL;
    mine = NULL;
    back = NULL;
  }
  return !recording;
}

static int grow(void) {
  if (!slot) {
    me = pcr__self();
    if (!(slot = pcr__shm_ledger(me, 1))) return -1;
  }
  uint64_t cap = mine ? 2 * mine->cap : 64;
  ledger *l = pcr__shm_alloc(sizeof *l + 8 * cap);
  long **b = realloc(back, sizeof *b * cap);
  if (!l || !b) {
    pcr__shm_free(l);
    if (b) back = b;
    return -1;
  }
  back = b;
  l->cap = cap;
  l->n = mine ? mine->n : 0;
  if (mine) memcpy(l->refs, mine->refs, 8 * mine->n);
  atomic_store(slot, pcr__shm_offset(l));
  pcr__shm_free(mine);
  mine = l;
  return 0;
}

void pcr__ledger_add(uint64_t ref, long *idx) {
  *idx = -1;
  if (stale() || (mine && mine->n == mine->cap && grow() < 0) ||
      (!mine && grow() < 0))
    return;
  back[mine->n] = idx;
  *idx = (long)mine->n;
  mine->refs[mine->n] = ref;
  mine->n++;  /* recorded from here on */
}

void pcr__ledger_remove(long *idx) {
  long i = *idx;
  if (i < 0 || stale() || !mine || (uint64_t)i >= mine->n) return;
  uint64_t last = mine->n - 1;
  if ((uint64_t)i != last) {  /* the last entry moves into i */
    mine->refs[i] = mine->refs[last];
    back[i] = back[last];
    *back[i] = i;
  }
  mine->n = last;
  *idx = -1;
}

void pcr__ledger_pend(uint64_t ref) {
  if (stale()) return;
  if (npidx == cappidx) {
    size_t cap = cappidx ? 2 * cappidx : 16;
    long *p = realloc(pidx, sizeof *p * cap);
    if (!p) return;  /* unrecorded: a death before the publish leaks it */
    pidx = p;
    cappidx = cap;
    for (size_t j = 0; j < npidx; j++)  /* back[] points into pidx */
      if (pidx[j] >= 0) back[pidx[j]] = &pidx[j];
  }
  pcr__ledger_add(ref, &pidx[npidx]);
  npidx++;
}

void pcr__ledger_unpend(void) {
  for (size_t j = 0; j < npidx; j++) pcr__ledger_remove(&pidx[j]);
  npidx = 0;
}

void pcr__ledger_exit(void) {
  if (stale() || !slot) return;
  pcr__shm_ledger_clear(me);
  pcr__shm_free(mine);
  mine = NULL;
  slot = NULL;
}

void pcr__frame_reap(uint32_t pid) {
  _Atomic uint64_t *s = pcr__shm_ledger(pid, 0);
  if (s) {
    uint64_t off = atomic_load(s);
    ledger *l = off ? pcr__shm_at(off, sizeof(ledger)) : NULL;
    pcr__shm_ledger_clear(pid);
    if (l) {
      for (uint64_t i = 0; i < l->n && i < l->cap; i++)
        pcr__frame_drop(l->refs[i]);
      pcr__shm_free(l);
    }
  }
  pcr__shm_reap(pid);
}
