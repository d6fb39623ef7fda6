/* Shared arrays: a header naming the element type, then the elements. */
#include "array.h"

#include <string.h>

pcr_array *pcr__array_new(const char *ctype, size_t esize, uint64_t n) {
  if (esize == 0 || strlen(ctype) >= PCR_CTYPE_MAX ||
      n > (UINT64_MAX / 2 - sizeof(pcr_array)) / esize)
    return NULL;
  /* pcr__obj_new zeroes the whole block: the elements start at 0. */
  pcr_array *a = (pcr_array *)pcr__obj_new(
      sizeof(pcr_array) + (size_t)(n * esize), PCR_OBJ_ARRAY);
  if (!a) return NULL;
  a->n = n;
  a->esize = esize;
  strcpy(a->ctype, ctype);
  return a;
}
