/* Shared arrays: a header naming the element type, then the elements. */
#include "array.h"
#include "frame.h"

#include <string.h>

pcr_array *pcr__array_new(const char *ctype, size_t esize, uint64_t n,
                          long *idx) {
  if (esize == 0 || strlen(ctype) >= PCR_CTYPE_MAX ||
      n > (UINT64_MAX / 2 - sizeof(pcr_array)) / esize)
    return NULL;
  /* The whole block is zeroed: the elements start at 0. */
  pcr_array *a = (pcr_array *)pcr__frame_obj_new(
      sizeof(pcr_array) + (size_t)(n * esize), PCR_OBJ_ARRAY, idx);
  if (!a) return NULL;
  a->n = n;
  a->esize = esize;
  strcpy(a->ctype, ctype);
  return a;
}
