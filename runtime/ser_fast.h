/* ser_fast.h -- direct reads of LuaJIT 2.1 (GC64) tables and strings for
   the serializer's hot loops; included only by ser.c. Nothing here is
   trusted until fast_check() has compared it with the public API. */
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

/* -- Start-up self-test --------------------------------------------------- */

/* The checks build sample tables with the API and read them back through
   the mirror: any disagreement leaves f->ok at 0. Stack-neutral. */

static int fcheck_tab(lua_State *L, flayout *f)
{
  static const double nums[] = { 1.5, -0.0, 1e300, -1e-300, -2147483648.0 };
  lua_createtable(L, 8, 0);
  const ftab *t = lua_topointer(L, -1);
  /* A small array is colocated right after the GCtab (64 bytes): check
     that before following any pointer. */
  if (t->gct != F_GCT_TAB || t->asize != 9 || t->metatable ||
      t->array != (uint64_t)(uintptr_t)t + 64)
    return 0;
  for (int i = 0; i < 5; i++) {
    lua_pushnumber(L, nums[i]);
    lua_rawseti(L, -2, i + 1);
  }
  lua_pushnumber(L, (double)NAN);
  lua_rawseti(L, -2, 6);
  lua_pushboolean(L, 0);
  lua_rawseti(L, -2, 7);
  lua_pushboolean(L, 1);
  lua_rawseti(L, -2, 8);
  const uint64_t *a = (const uint64_t *)(uintptr_t)t->array;
  for (int i = 0; i < 5; i++) {
    uint64_t u;
    memcpy(&u, &nums[i], 8);
    if (a[i + 1] != u || !f_isnum(u)) return 0;
  }
  f->nan = a[6];
  if (f_num(f->nan) == f_num(f->nan) || !f_isnum(f->nan)) return 0;
  if (a[7] != F_FALSE || a[8] != F_TRUE || a[0] != F_NIL) return 0;
  lua_newtable(L);
  lua_pushvalue(L, -1);
  lua_setmetatable(L, -3);
  if (t->metatable != (uint64_t)(uintptr_t)lua_topointer(L, -1)) return 0;
  lua_rawseti(L, -2, 1);  /* table in slot 1 */
  if (F_TOP(a[1]) != F_TOPTAB || (a[1] & F_GCMASK) != t->metatable)
    return 0;
  lua_pushlstring(L, "sample", 6);
  lua_rawseti(L, -2, 2);
  lua_rawgeti(L, -1, 2);
  const char *want = lua_tostring(L, -1);
  if (F_TOP(a[2]) != F_TOPSTR ||
      (a[2] & F_GCMASK) + F_STRHDR != (uint64_t)(uintptr_t)want)
    return 0;
  size_t n;
  const char *s = f_str(f, a[2], &n);
  lua_pop(L, 2);
  return n == 6 && s == want;
}

/* Every live node of a table with string keys k1..k9 -> i is found once. */
static int fcheck_node(lua_State *L, const flayout *f)
{
  char key[4] = "k0";
  lua_createtable(L, 0, 9);
  const ftab *t = lua_topointer(L, -1);
  if (t->hmask != 15 || t->asize != 0) return 0;
  for (int i = 1; i <= 9; i++) {
    key[1] = (char)('0' + i);
    lua_pushnumber(L, i);
    lua_setfield(L, -2, key);
  }
  const fnode *nd = (const fnode *)(uintptr_t)t->node;
  unsigned seen = 0;
  for (uint32_t i = 0; i <= t->hmask; i++) {
    if (nd[i].val == F_NIL) continue;
    size_t n;
    const char *s;
    if (F_TOP(nd[i].key) != F_TOPSTR || !f_isnum(nd[i].val)) return 0;
    s = f_str(f, nd[i].key, &n);
    int v = (int)f_num(nd[i].val);
    if (n != 2 || s[0] != 'k' || s[1] != '0' + v || (seen & 1u << v))
      return 0;
    seen |= 1u << v;
  }
  lua_pop(L, 1);
  return seen == 0x3FE;
}

static void fast_check(lua_State *L, flayout *f)
{
  memset(f, 0, sizeof *f);
#if UINTPTR_MAX == UINT64_MAX && __BYTE_ORDER__ == __ORDER_LITTLE_ENDIAN__
  int top = lua_gettop(L);
  if (!lua_checkstack(L, 8)) return;
  for (int off = 20; off >= 16 && !f->ok; off -= 4) {
    f->lenoff = off;
    f->ok = fcheck_tab(L, f) && fcheck_node(L, f);
    lua_settop(L, top);
  }
  if (!f->ok) f->lenoff = 0;
#else
  (void)L;
#endif
}

#endif
