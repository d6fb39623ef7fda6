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
#include "shm.h"

enum { PCR_REF_PLAIN = 0, PCR_REF_READER = 1, PCR_REF_WRITER = 2 };
#define PCR_REF_ROLES 3u

/* Take one reference of o in role; returns its tagged offset. */
uint64_t pcr__frame_take(pcr_obj *o, unsigned role);
/* Drop a reference taken by pcr__frame_take (by its tagged offset);
** one that names no live object is ignored. */
void pcr__frame_drop(uint64_t ref);

/* The ledger of the references a forked process owns (not inherited
** ones: its parent holds those for it). add records ref (already taken)
** and keeps its index in *idx (-1: not recorded), which remove updates
** when entries move; remove unrecords it (before it is dropped). forked
** starts a child's own ledger; exit frees this process's ledger (its
** references were dropped). frame_reap(pid), run by whoever reaps pid:
** drops what pid's ledger still lists and frees its in-flight blocks. */
void pcr__ledger_forked(void);
void pcr__ledger_add(uint64_t ref, long *idx);
void pcr__ledger_remove(long *idx);
void pcr__ledger_exit(void);
void pcr__frame_reap(uint32_t pid);

/* The references of the message being encoded (pcr__msg_ref) are the
** sender's until its frame is published: pend records one in the ledger;
** unpend unrecords them all, right before the store that publishes the
** frame (or before a rolled-back message drops them). A death between
** the two leaks them, never frees twice. */
void pcr__ledger_pend(uint64_t ref);
void pcr__ledger_unpend(void);

#endif
