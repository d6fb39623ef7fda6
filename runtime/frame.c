/* References carried by frames (frame.h). */
#include "frame.h"
#include "ring.h"

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
