/* ser_fast.h -- direct reads of LuaJIT 2.1 tables and strings for the
   serializer's hot loops, in both object layouts (GC64 and 32-bit
   references); included by ser_int.h. Nothing here is trusted until
   fast_check() in ser.c has compared it with the API. */
#ifndef PCR_SER_FAST_H
#define PCR_SER_FAST_H

#include <math.h>
#include <stdint.h>
#include <string.h>

#include <lua.h>

/* Why: through the API a table element costs lua_next, lua_type and
   lua_tonumber (or lua_rawgeti, which cannot tell where the array part
   ends), about 10 ns; read in place it costs one load. The mirrors below
   are LuaJIT 2.1's GCtab, Node and TValue (lj_obj.h). Which layout a
   library uses is not in its headers (LUAJIT_DISABLE_GC64 is a build flag
   of LuaJIT's), so fast_check() finds it at start-up; a library matching
   neither fails it and the serializer keeps to the API.

   The hot functions take the layout as a constant argument `g` (1: GC64,
   0: 32-bit references) and are inlined twice, once per layout, so
   neither pays for the other's tests. */

#define FI static inline __attribute__((always_inline))

/* GC64: 64-bit references. sizeof 64 (a freetop MRef follows). */
typedef struct ftab64 {
  uint64_t nextgc;
  uint8_t marked, gct, nomm;
  int8_t colo;
  uint64_t array;      /* TValue[asize]: keys 0 .. asize - 1 */
  uint64_t gclist;
  uint64_t metatable;  /* GCtab *, 0 without one */
  uint64_t node;       /* Node[hmask + 1] */
  uint32_t asize, hmask;
} ftab64;

/* Without GC64 (LUAJIT_DISABLE_GC64 on x64): GCRef and MRef are 32 bits,
   GC objects live in the low 4 GB. sizeof 32. */
typedef struct ftab32 {
  uint32_t nextgc;
  uint8_t marked, gct, nomm;
  int8_t colo;
  uint32_t array, gclist, metatable, node;
  uint32_t asize, hmask;
} ftab32;

/* The same 24 bytes in both: val, key, then next (GC64) or next and
   freetop (32-bit MRefs), which the serializer never reads. */
typedef struct fnode {
  uint64_t val, key, next;
} fnode;

#define F_GCT_TAB 0x0B                /* gct byte of a table: ~LJ_TTAB */
#define F_GCMASK ((1ull << 47) - 1)   /* GC64: pointer bits of a GC value */

/* A TValue's type tag (itype) is its top 17 bits in GC64, its top 32
   bits without; numbers are below LJ_TISNUM there, other types are tagged
   ~t (t = F_T*). In GC64, nil, false and true are whole patterns; without
   GC64 only their tag word is written and the low word is garbage. */
enum { F_TNIL = 0, F_TFALSE = 1, F_TTRUE = 2, F_TSTR = 4, F_TTAB = 11 };
#define F_NIL (~0ull)                 /* GC64 patterns */
#define F_FALSE (~(1ull << 47))
#define F_TRUE (~(2ull << 47))

FI uint32_t f_top(int g, uint64_t u)
{
  return g ? (uint32_t)(u >> 47) : (uint32_t)(u >> 32);
}

FI int f_is(int g, uint64_t u, unsigned t)
{
  return f_top(g, u) == (g ? ~t & 0x1FFFFu : ~t);
}

FI int f_isnum(int g, uint64_t u)
{
  return f_top(g, u) < (g ? 0x1FFF3u : 0xFFFEFFFFu);  /* LJ_TISNUM */
}

FI int f_isnil(int g, uint64_t u)
{
  return g ? u == F_NIL : (uint32_t)(u >> 32) == ~0u;
}

/* Whether u is false or true; *b says which. */
FI int f_isbool(int g, uint64_t u, int *b)
{
  if (g) {
    *b = u == F_TRUE;
    return u == F_TRUE || u == F_FALSE;
  }
  uint32_t t = (uint32_t)(u >> 32);
  *b = t == ~2u;
  return t == ~1u || t == ~2u;
}

/* The object a GC value points to. */
FI uintptr_t f_gc(int g, uint64_t u)
{
  return (uintptr_t)(g ? u & F_GCMASK : (uint32_t)u);
}

/* Table fields, t a GCtab. */
FI uint64_t f_tarray(int g, const void *t)
{
  return g ? ((const ftab64 *)t)->array : ((const ftab32 *)t)->array;
}

FI uint64_t f_tnode(int g, const void *t)
{
  return g ? ((const ftab64 *)t)->node : ((const ftab32 *)t)->node;
}

FI uint64_t f_tmeta(int g, const void *t)
{
  return g ? ((const ftab64 *)t)->metatable
           : ((const ftab32 *)t)->metatable;
}

FI uint32_t f_tasize(int g, const void *t)
{
  return g ? ((const ftab64 *)t)->asize : ((const ftab32 *)t)->asize;
}

FI uint32_t f_thmask(int g, const void *t)
{
  return g ? ((const ftab64 *)t)->hmask : ((const ftab32 *)t)->hmask;
}

/* What the encoder compares before and after Lua code may have run. */
typedef struct fshape {
  uint64_t array, node;
  uint32_t asize, hmask;
} fshape;

FI fshape f_shape(int g, const void *t)
{
  return (fshape){ f_tarray(g, t), f_tnode(g, t), f_tasize(g, t),
                   f_thmask(g, t) };
}

/* Set per state by fast_check(). GCstr grew a field in 2.1's string hash
   rework (2020): where its len is, and so its size, depends on the
   snapshot. */
typedef struct flayout {
  int ok;
  int gc64;
  int lenoff;    /* offset of GCstr.len */
  int strhdr;    /* sizeof(GCstr): the bytes follow */
  int tshift;    /* log2 sizeof(GCtab): 6, or 5 without GC64 */
  uint64_t nan;  /* the canonical NaN that lua_pushnumber stores */
  uint64_t vfalse, vtrue;  /* what the decoder writes for booleans */
} flayout;

FI const char *f_str(int g, const flayout *f, uint64_t u, size_t *n)
{
  const char *s = (const char *)f_gc(g, u);
  uint32_t len;
  memcpy(&len, s + f->lenoff, 4);
  *n = len;
  return s + (g ? 24 : f->strhdr);
}

static inline double f_num(uint64_t u)
{
  double d;
  memcpy(&d, &u, 8);
  return d;
}

#endif
