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

#endif
