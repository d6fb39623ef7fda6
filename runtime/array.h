/* Shared arrays: n elements of one ctype in an arena block, at the same
** address in every process. The Lua side indexes them through ffi. */
#ifndef PCR_ARRAY_H
#define PCR_ARRAY_H

#include "shm.h"

#define PCR_CTYPE_MAX 120

typedef struct pcr_array {
  pcr_obj hdr;
  uint64_t n;                    /* elements */
  uint64_t esize;                /* bytes per element */
  char ctype[PCR_CTYPE_MAX];     /* element type, as ffi.typeof reads it */
  _Alignas(64) char data[];
} pcr_array;

/* A zero-filled array; NULL when the arena is full or n * esize
** overflows. Its reference is recorded in the ledger at *idx
** (pcr__frame_obj_new). */
pcr_array *pcr__array_new(const char *ctype, size_t esize, uint64_t n,
                          long *idx);

#endif
