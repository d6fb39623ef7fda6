/* What pipes and queues share about frames: the references a frame
** carries. A frame that holds handles lists them (count, then tagged
** offsets) so that a ring or queue destroyed with the frame unread drops
** them; the receiver's decode adopts them instead. A tagged offset is an
** object's arena offset (16-aligned) with its role in the low bits: a
** ring's reader or writer counts as one more end of that ring. Free of
** Lua. */
#ifndef PCR_FRAME_H
#define PCR_FRAME_H

#include <stddef.h>
#include <stdint.h>
#include <string.h>
#include "shm.h"

/* -- Frames --------------------------------------------------------------
** Pipes' rings and queues' segments hold the same frames (docs/format.md,
** "Frames"): an 8-byte header word (payload length << 8 | flags | kind),
** then with REFS the count and the tagged offsets of the references the
** frame carries, then the payload: its bytes, the 8-byte offset of an arena
** block holding them (INDIRECT), or segments, each an 8-byte length and
** that many bytes, ended early by ABORT (STREAM, rings only). A queue pads
** each frame to 8 bytes (align 8), a ring packs them (align 1). */
#define PCR_FRAME_HDR 8
#define PCR_FRAME_INDIRECT 0x80u
#define PCR_FRAME_STREAM 0x40u
#define PCR_FRAME_REFS 0x20u
#define PCR_FRAME_KIND(h) ((unsigned)((h) & 0x1f))
#define PCR_FRAME_ABORT UINT64_MAX  /* a segment length: the sender gave up */

/* Copy n bytes in or out at counter at of a circular area of cap bytes (a
** power of two). */
static inline void pcr__wrap_in(char *data, uint64_t cap, uint64_t at,
                                const void *p, size_t n) {
  size_t i = (size_t)(at & (cap - 1)), first = (size_t)cap - i;
  if (first >= n) {
    memcpy(data + i, p, n);
  } else {
    memcpy(data + i, p, first);
    memcpy(data, (const char *)p + first, n - first);
  }
}

static inline void pcr__wrap_out(const char *data, uint64_t cap,
                                 uint64_t at, void *p, size_t n) {
  size_t i = (size_t)(at & (cap - 1)), first = (size_t)cap - i;
  if (first >= n) {
    memcpy(p, data + i, n);
  } else {
    memcpy(p, data + i, first);
    memcpy((char *)p + first, data, n - first);
  }
}

/* Where a frame's parts lie (counters in its area). */
typedef struct pcr_frame {
  uint64_t head;    /* the header word */
  uint64_t nrefs;   /* references listed, at refs, refs + 8, ... */
  uint64_t refs;
  uint64_t body;    /* the payload (STREAM: the first segment) */
  uint64_t end;     /* past the frame (STREAM: past its last segment) */
  uint64_t block;   /* INDIRECT: the block's offset */
  int whole;        /* STREAM: every segment is there (no ABORT) */
} pcr_frame;

/* The frame at counter t of data, of whose bytes those before h are
** published: 0, or -1 when it is not all there (a writer died in it). */
int pcr__frame_peek(const char *data, uint64_t cap, unsigned align,
                    uint64_t t, uint64_t h, pcr_frame *f);

/* Release the frames from *tail to h nobody read: free their blocks and
** drop their references (not those of a stream its writer aborted or did
** not finish: they were still the writer's). Each frame is consumed
** (*tail) before what it holds goes: run again after a death in it, it
** leaks rather than frees twice. */
void pcr__frame_release(const char *data, uint64_t cap, unsigned align,
                        _Atomic uint64_t *tail, uint64_t h);

enum { PCR_REF_PLAIN = 0, PCR_REF_READER = 1, PCR_REF_WRITER = 2 };
#define PCR_REF_ROLES 3u

/* Take one reference of o in role; returns its tagged offset. */
uint64_t pcr__frame_take(pcr_obj *o, unsigned role);
/* Drop a reference taken by pcr__frame_take (by its tagged offset);
** one that names no live object is ignored. */
void pcr__frame_drop(uint64_t ref);

/* The ledger of what a forked process owns (not inherited references:
** its parent holds those for it). add records ref (already taken) and
** keeps the entry's index in *idx (-1: not recorded; an entry never
** moves); remove unrecords it (before it is dropped); drop unrecords it
** and drops the reference. forked starts a child's own ledger; exit
** drops what this process's ledger still lists and frees it. frame_reap
** (pid), run by whoever reaps pid: drops what pid's ledger still lists
** and frees its in-flight blocks. */
void pcr__ledger_forked(void);
void pcr__ledger_add(uint64_t ref, long *idx);
/* Take one reference of o in role (pcr__frame_take) and record it at
** *idx, the entry reserved first (a growing ledger allocates). */
uint64_t pcr__ledger_take(pcr_obj *o, unsigned role, long *idx);
void pcr__ledger_remove(long *idx);
void pcr__ledger_drop(long *idx);
void pcr__ledger_exit(void);
void pcr__frame_reap(uint32_t pid);

/* A ledger entry only: a raw block this process allocated, freed whole
** by its reaper (an object not yet set up). */
#define PCR_REF_RAW 4u
/* A ledger entry only: the last reference of an object its owner was
** ending (pcr__ledger_drop): the reaper finishes it. */
#define PCR_REF_DYING 8u

/* A new object (as pcr__obj_new) whose one reference is recorded in this
** process's ledger from its allocation on, at entry *idx: a death at any
** instant leaves it to the reaper. idx NULL, or a process that records
** nothing (the root): unrecorded, *idx = -1. Free it with
** pcr__ledger_drop(idx), or hand the entry on with the reference. */
pcr_obj *pcr__frame_obj_new(size_t size, uint32_t type, long *idx);
/* Drop the reference pcr__frame_obj_new gave (recorded at *idx or not). */
void pcr__frame_obj_drop(pcr_obj *o, long *idx);

/* The references of the messages being encoded (pcr__msg_ref) are the
** sender's until their frame is published. They form a stack (a message
** encoded inside another's hook goes above it): pend takes one reference
** of o in role (pcr__ledger_take), records it in the ledger, pushes its
** entry and stores its tagged offset in *ref (-1: out of memory, nothing
** taken). pcr__frame_publish (below) ends the top n entries with the store
** that publishes their frame; unpend(n) unrecords them by themselves (a
** frame of more than PCR_JOURNAL - 2: a death between that and the
** publish leaks them, never frees twice); unpend_to(mark) unrecords and
** pops what is above mark (a message ended, sent or rolled back). */
int pcr__ledger_pend(pcr_obj *o, unsigned role, uint64_t *ref);
void pcr__ledger_unpend(size_t n);
void pcr__ledger_unpend_to(size_t mark);

/* Publish a frame: store h at *head (the ring's or segment's, in the
** arena), and with the same commit (shm.h, the journal) end the sender's
** records of what the frame owns from then on: blk's in-flight record and
** the top n pending references. A death at any instant leaves them the
** sender's or the frame's, never neither. */
void pcr__frame_publish(_Atomic uint64_t *head, uint64_t h, void *blk,
                        size_t n);

/* Frames taken by a receiver. ensure(n): room for n more entries, before
** the frame is consumed (growing allocates). After the consuming store:
** taken_ref(ref) records each reference the frame carries, taken_block
** its arena block at *idx (freed by ledger_free, which unrecords it with
** the free). The decoder adopts a reference with taken_adopt (0: the
** entry's index, or -1 where nothing records, is now the handle's; -1: the
** frame does not list it); taken_end(mark), after the decode (or its
** failure), drops those not adopted since taken_mark() was read. A
** process that records nothing still drops them. */
int pcr__ledger_ensure(size_t n);
void pcr__taken_ref(uint64_t ref);
void pcr__taken_block(void *blk, long *idx);
void pcr__ledger_free(void *blk, long *idx);
/* Consume a frame: store t at *tail and, with the same commit, record its
** n references and its block (at *blkidx) as this process's taken ones
** (taken_ref, taken_block), so that a receiver killed at any instant
** leaves them to the frame or to its reaper. pcr__ledger_ensure(n + 1)
** first. */
void pcr__frame_consume(_Atomic uint64_t *tail, uint64_t t,
                        const uint64_t *refs, size_t n, void *blk,
                        long *blkidx);
int pcr__taken_adopt(uint64_t ref, long *idx);
size_t pcr__taken_mark(void);
void pcr__taken_end(size_t mark);

#endif
