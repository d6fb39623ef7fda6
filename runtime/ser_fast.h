/* ser_fast.h -- direct reads of LuaJIT 2.1 (GC64) tables and strings for
   the serializer's hot loops; included by ser_int.h. Nothing here is
   trusted until fast_check() in ser.c has compared it with the API. */
#ifndef PCR_SER_FAST_H
#define PCR_SER_FAST_H

#include <math.h>
#include <stdint.h>
#include <string.h>

#include <lua.h>

/* Why: through the API a table element costs lua_next, lua_type and
   lua_tonumber (or lua_rawgeti, which cannot tell where the array part
   ends), about 10 ns; read in place it costs one load. The mirror below is
   LuaJIT 2.1's GCtab, Node and TValue in GC64 mode (lj_obj.h). A build with
   another layout fails fast_check() and the serializer keeps to the API. */

typedef struct ftab {
  uint64_t nextgc;
  uint8_t marked, gct, nomm;
  int8_t colo;
  uint64_t array;      /* TValue[asize]: keys 0 .. asize - 1 */
  uint64_t gclist;
  uint64_t metatable;  /* GCtab *, 0 without one */
  uint64_t node;       /* Node[hmask + 1] */
  uint32_t asize, hmask;
} ftab;

typedef struct fnode {
  uint64_t val, key, next;
} fnode;

#define F_GCT_TAB 0x0B                /* gct byte of a table: ~LJ_TTAB */
#define F_GCMASK ((1ull << 47) - 1)   /* pointer bits of a GC value */
#define F_STRHDR 24                   /* sizeof(GCstr): the bytes follow */

/* Top 17 bits of a TValue: numbers are below F_TOPNUM, other types are
   tagged ~itype there. */
#define F_TOP(u) ((uint32_t)((u) >> 47))
#define F_TOPNUM 0x1FFF3u
#define F_TOPSTR 0x1FFFBu
#define F_TOPTAB 0x1FFF4u
#define F_NIL (~0ull)
#define F_FALSE (~(1ull << 47))
#define F_TRUE (~(2ull << 47))

/* Set per state by fast_check(); the offset of GCstr.len differs between
   2.1 snapshots (before and after the string hash rework). */
typedef struct flayout {
  int ok;
  int lenoff;
  uint64_t nan;  /* the canonical NaN that lua_pushnumber stores */
} flayout;

static inline int f_isnum(uint64_t u) { return F_TOP(u) < F_TOPNUM; }

static inline const char *f_str(const flayout *f, uint64_t u, size_t *n)
{
  const char *g = (const char *)(uintptr_t)(u & F_GCMASK);
  uint32_t len;
  memcpy(&len, g + f->lenoff, 4);
  *n = len;
  return g + F_STRHDR;
}

static inline double f_num(uint64_t u)
{
  double d;
  memcpy(&d, &u, 8);
  return d;
}

#endif
