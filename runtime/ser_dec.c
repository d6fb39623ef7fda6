/* ser_dec.c -- the decoder: bytes of docs/format.md back into Lua values,
   checking every length and tag, so that corrupt input raises an error.
   pcr__ser_decode() in ser.h is its entry point. */
#include <stdarg.h>
#include <stdint.h>
#include <string.h>

#include <lua.h>
#include <lauxlib.h>

#include "ser_int.h"

typedef struct dec {
  lua_State *L;
  const unsigned char *p, *s, *e;
  const unsigned char *root;  /* the root value: error paths walk from it */
  int flags, depth;
  int refs;          /* stack slot of the objects table; 0 without */
  const flayout *fl; /* NULL until a packed array needs it */
  uint32_t nobj, maxobj;
  size_t entries;    /* table entries the input can still hold */
  size_t budget;     /* what max_bytes still allows */
  size_t maxbytes;   /* 0: no cap */
} dec;

#define TRUSTED(d) ((d)->flags & PCR_SER_TRUSTED)

static void dfail(dec *d, const char *msg)
{
  luaL_error(d->L, "pcrun.decode: %s", msg);
}

static void need(dec *d, size_t n)
{
  if ((size_t)(d->e - d->p) < n) dfail(d, "truncated input");
}

static unsigned rd1(dec *d)
{
  need(d, 1);
  return *d->p++;
}

static uint64_t rdvarslow(dec *d)
{
  uint64_t v = 0;
  for (int sh = 0; sh < 64; sh += 7) {
    unsigned c = rd1(d);
    v |= (uint64_t)(c & 0x7f) << sh;
    if (!(c & 0x80)) return v;
  }
  dfail(d, "corrupt input (bad varint)");
  return 0;
}

static inline uint64_t rdvar(dec *d)
{
  if (d->p < d->e && *d->p < 0x80) return *d->p++;
  return rdvarslow(d);
}

/* Reads a length that must fit in what is left, divided by per. */
static size_t rdlen(dec *d, size_t per)
{
  uint64_t n = rdvar(d);
  if (n > (uint64_t)(d->e - d->p) / per) dfail(d, "truncated input");
  return (size_t)n;
}

static const char *rdstr(dec *d, size_t *n)
{
  *n = rdlen(d, 1);
  const char *s = (const char *)d->p;
  d->p += *n;
  return s;
}

/* Pushes a name read from input, cut for an error message. */
static const char *dname(lua_State *L, const char *s, size_t n)
{
  lua_pushlstring(L, s, n > 60 ? 60 : n);
  return lua_tostring(L, -1);
}

/* -- Error paths ---------------------------------------------------------- */

/* The decoder keeps no path while it works (pipes and pools would pay for
   it on every value): an error that names one walks the input again from
   the root to the value at fault, over bytes the decoder already read. */

enum { S_ARR, S_KEY, S_KEYOF, S_MT, S_UPV, S_SER };

typedef struct pstep {
  int kind;
  uint32_t idx;             /* S_ARR: the index; S_UPV: the upvalue */
  const unsigned char *key; /* S_KEY: the key's encoding */
} pstep;

typedef struct walk {
  const unsigned char *p, *e, *target;
  pstep *st;
  int n;
} walk;

static int wval(walk *w);

static int wvar(walk *w, uint64_t *v)
{
  uint64_t x = 0;
  for (int sh = 0; sh < 64; sh += 7) {
    if (w->p >= w->e) return -1;
    unsigned c = *w->p++;
    x |= (uint64_t)(c & 0x7f) << sh;
    if (!(c & 0x80)) {
      if (v) *v = x;
      return 0;
    }
  }
  return -1;
}

static int wskip(walk *w, uint64_t n)
{
  if (n > (uint64_t)(w->e - w->p)) return -1;
  w->p += n;
  return 0;
}

static int wstr(walk *w)
{
  uint64_t n;
  return wvar(w, &n) ? -1 : wskip(w, n);
}

/* Walks one value reached by step (kind, idx, key): 1 when the target
   is in it (the steps to it stay), 0 past it, -1 on bytes not understood. */
static int wsub(walk *w, int kind, uint64_t idx, const unsigned char *key)
{
  if (w->n > PCR_SER_MAXDEPTH + 1) return -1;
  w->st[w->n++] = (pstep){ kind, (uint32_t)idx, key };
  int r = wval(w);
  if (r == 0) w->n--;
  return r;
}

static int wval(walk *w)
{
  uint64_t n, m;
  int r;
  if (w->p == w->target) return 1;
  if (w->p > w->target || w->p >= w->e) return -1;
  unsigned tag = *w->p++;
  if (tag >= SINT) return 0;
  if (tag >= SSTR) return wskip(w, tag - SSTR);
  switch (tag) {
  case T_NIL: case T_FALSE: case T_TRUE: return 0;
  case T_NUM: case T_I64: case T_U64: return wskip(w, 8);
  case T_INT: case T_REF: return wvar(w, NULL);
  case T_UPREF: return wvar(w, NULL) ? -1 : wvar(w, NULL);
  case T_STR: case T_MOD: case T_TYPE: return wstr(w);
  case T_FIELD: return wstr(w) ? -1 : wstr(w);
  case T_EXT: return wstr(w) ? -1 : wsub(w, S_SER, 0, NULL);
  case T_CDATA: return wstr(w) || wvar(w, NULL) ? -1 : wstr(w);
  case T_AI32: case T_ANUM:
    if (wvar(w, &n) || n > (uint64_t)(w->e - w->p) / 4) return -1;
    return wskip(w, n * (tag == T_AI32 ? 4 : 8));
  case T_FUNC:
    if (w->e - w->p < 4) return -1;
    n = w->p[0] | (uint64_t)w->p[1] << 8 | (uint64_t)w->p[2] << 16 |
        (uint64_t)w->p[3] << 24;
    w->p += 4;
    if (wskip(w, n) || wvar(w, &m)) return -1;
    for (uint64_t u = 1; u <= m; u++)
      if ((r = wsub(w, S_UPV, u, NULL))) return r;
    return 0;
  case T_TAB: case T_TABMT:
    if (wvar(w, &n) || wvar(w, &m)) return -1;
    for (uint64_t i = 1; i <= n; i++)
      if ((r = wsub(w, S_ARR, i, NULL))) return r;
    for (uint64_t i = 0; i < m; i++) {
      const unsigned char *k = w->p;
      if ((r = wsub(w, S_KEYOF, 0, NULL))) return r;
      if ((r = wsub(w, S_KEY, 0, k))) return r;
    }
    return tag == T_TABMT ? wsub(w, S_MT, 0, NULL) : 0;
  }
  return -1;
}

/* Adds a key as the encoder's paths write it: .name, ["odd key"], [3]. */
static void addkey(lua_State *L, luaL_Buffer *lb, const unsigned char *k,
                   const unsigned char *e, int first)
{
  walk w = { .p = k + 1, .e = e };
  uint64_t n = 0;
  if (k >= e) n = 0;
  else if (*k >= SSTR && *k < SINT) n = *k - SSTR;
  else if (*k == T_STR && wvar(&w, &n)) n = UINT64_MAX;
  if (k < e && ((*k >= SSTR && *k < SINT) || *k == T_STR) &&
      n <= (uint64_t)(e - w.p)) {
    const char *s = (const char *)w.p;
    size_t j = 0;
    while (j < n && (s[j] == '_' || (unsigned)((s[j] | 32) - 'a') < 26 ||
                     (j > 0 && (unsigned)(s[j] - '0') < 10)))
      j++;
    if (n > 0 && j == n && n <= 40) {
      if (!first) luaL_addchar(lb, '.');
      luaL_addlstring(lb, s, n);
    } else {
      luaL_addstring(lb, "[\"");
      luaL_addlstring(lb, s, n > 40 ? 40 : n);
      luaL_addstring(lb, n > 40 ? "...\"]" : "\"]");
    }
    return;
  }
  luaL_addchar(lb, '[');
  unsigned tag = k < e ? *k : 0xff;
  if (tag >= SINT) {
    lua_pushinteger(L, tag - SINT);
    luaL_addvalue(lb);
  } else if (tag == T_INT && !wvar(&w, &n)) {
    lua_pushnumber(L, (double)(int32_t)((uint32_t)(n >> 1) ^
                                        (uint32_t)-(int64_t)(n & 1)));
    luaL_addvalue(lb);
  } else if (tag == T_NUM && e - k >= 9) {
    double x;
    memcpy(&x, k + 1, 8);
    lua_pushnumber(L, x);
    luaL_addvalue(lb);
  } else if (tag == T_TRUE || tag == T_FALSE) {
    luaL_addstring(lb, tag == T_TRUE ? "true" : "false");
  } else if (tag == T_TAB || tag == T_TABMT || tag == T_AI32 ||
             tag == T_ANUM) {
    luaL_addstring(lb, "table");
  } else {
    luaL_addchar(lb, '?');
  }
  luaL_addchar(lb, ']');
}

/* Pushes the path from the root to the value whose tag is at (""
   for the root, or when it cannot be found). */
static void pushpath(dec *d, const unsigned char *at)
{
  lua_State *L = d->L;
  walk w = { .p = d->root, .e = d->e, .target = at };
  w.st = lua_newuserdata(L, sizeof(pstep) * (PCR_SER_MAXDEPTH + 2));
  if (!d->root || wval(&w) != 1) w.n = 0;
  luaL_Buffer lb;
  luaL_buffinit(L, &lb);
  for (int j = 0; j < w.n; j++) {
    if (w.n > 16 && j == 8) {
      luaL_addstring(&lb, "...");
      j = w.n - 8;
    }
    const pstep *s = &w.st[j];
    switch (s->kind) {
    case S_ARR:
      lua_pushfstring(L, "[%d]", (int)s->idx);
      luaL_addvalue(&lb);
      break;
    case S_KEY: addkey(L, &lb, s->key, d->e, j == 0); break;
    case S_KEYOF: luaL_addstring(&lb, "<key>"); break;
    case S_MT: luaL_addstring(&lb, "<metatable>"); break;
    case S_SER: luaL_addstring(&lb, "<__serialize>"); break;
    case S_UPV:
      lua_pushfstring(L, "<upvalue %d>", (int)s->idx);
      luaL_addvalue(&lb);
      break;
    }
  }
  luaL_pushresult(&lb);
  lua_remove(L, -2);
}

/* Raises "pcrun.decode: <path>: <msg>" for the value whose tag is at. */
static void pfail(dec *d, const unsigned char *at, const char *fmt, ...)
{
  lua_State *L = d->L;
  va_list ap;
  lua_checkstack(L, 8);
  va_start(ap, fmt);
  lua_pushvfstring(L, fmt, ap);
  va_end(ap);
  pushpath(d, at);
  const char *path = lua_tostring(L, -1);
  lua_pushfstring(L, "pcrun.decode: %s%s%s", path, *path ? ": " : "",
                  lua_tostring(L, -2));
  lua_error(L);
}

static void refuse(dec *d, const unsigned char *at, const char *what)
{
  pfail(d, at, "%s needs {trusted = true}", what);
}

/* Counts n bytes the decode is about to allocate against max_bytes. */
static void charge(dec *d, const unsigned char *at, size_t n)
{
  if (n > d->budget)
    pfail(d, at, "over the max_bytes budget (%f bytes)",
          (double)d->maxbytes);
  d->budget -= n;
}

/* Without a cap, one test: pipes and pools never pay for the count. */
#define CHARGE(d, at, n) do { if ((d)->maxbytes) charge(d, at, n); } while (0)

/* Pushes the state's environment table (rare paths only: a decode that
   keeps no slot for it costs less). */
static int pushenv(dec *d)
{
  pcr__ser_getstate(d->L);
  lua_getfenv(d->L, -1);
  lua_remove(d->L, -2);
  return lua_gettop(d->L);
}

static void decval(dec *d);

/* Registers the object on top as shareable object number ord. */
static void reg(dec *d, uint32_t ord)
{
  if (d->refs) {
    lua_pushvalue(d->L, -1);
    lua_rawseti(d->L, d->refs, (int)ord);
  }
}

static uint32_t newobj(dec *d)
{
  if (d->nobj >= d->maxobj) dfail(d, "corrupt input (too many objects)");
  return ++d->nobj;
}

static void denter(dec *d)
{
  if (++d->depth > PCR_SER_MAXDEPTH)
    luaL_error(d->L, "pcrun.decode: nesting deeper than %d",
               PCR_SER_MAXDEPTH);
  /* A level holds at most 8 slots: check room for 8 levels at a time. */
  if ((d->depth & 7) == 1 && !lua_checkstack(d->L, 64))
    dfail(d, "Lua stack overflow");
}

static const flayout *getlayout(dec *d);

/* Reads a nil, boolean or number into the fresh array slot *slot and
   returns 1, else 0 with nothing read. Such values need no write barrier
   and no trip through the Lua stack. */
static inline int decleaf(dec *d, const flayout *fl, uint64_t *slot)
{
  if (d->p >= d->e) return 0;
  unsigned tag = *d->p;
  double x;
  if (tag >= SINT) {
    x = (double)(tag - SINT);
    d->p++;
  } else if (tag == T_NIL) {
    d->p++;  /* the slot is nil already */
    return 1;
  } else if (tag == T_TRUE || tag == T_FALSE) {
    *slot = tag == T_TRUE ? fl->vtrue : fl->vfalse;
    d->p++;
    return 1;
  } else if (tag == T_NUM && d->e - d->p >= 9) {
    uint64_t u;
    memcpy(&u, d->p + 1, 8);
#if __BYTE_ORDER__ == __ORDER_BIG_ENDIAN__
    u = __builtin_bswap64(u);
#endif
    d->p += 9;
    *slot = f_num(u) == f_num(u) ? u : fl->nan;
    return 1;
  } else if (tag == T_INT && d->e - d->p >= 6) {
    uint32_t z = 0;
    int k = 1;
    for (int sh = 0; sh < 35; sh += 7, k++) {
      z |= (uint32_t)(d->p[k] & 0x7f) << sh;
      if (!(d->p[k] & 0x80)) break;
    }
    if (k > 5 || (k == 5 && d->p[5] > 0x0f)) return 0;  /* decval fails */
    d->p += k + 1;
    x = (double)(int32_t)((z >> 1) ^ (uint32_t)-(int32_t)(z & 1));
  } else {
    return 0;  /* the rest go through decval */
  }
  memcpy(slot, &x, 8);
  return 1;
}

static void untrusted_mt(dec *d, const unsigned char *at);

/* The array part of table T, when it has exactly na + 1 slots. */
static inline uint64_t *tabarray(const flayout *fl, const void *T, size_t na)
{
  int g = fl->gc64;
  return f_tasize(g, T) == na + 1 ? (uint64_t *)(uintptr_t)f_tarray(g, T)
                                  : NULL;
}

/* LuaJIT's size of a table from lua_createtable(na, nh): the GCtab, na + 1
   array slots, nh rounded up to a power of two 24-byte nodes. */
static size_t tabcost(size_t na, size_t nh)
{
  size_t h = 0;
  if (nh) for (h = 1; h < nh; h <<= 1) {}
  return 64 + (na ? 8 * (na + 1) : 0) + 24 * h;
}

static void dectab(dec *d, int hasmt)
{
  lua_State *L = d->L;
  const unsigned char *at = d->p - 1;
  uint64_t na = rdvar(d), nh = rdvar(d);
  /* Every entry is a value of its own (a pair two), and every value has a
     tag byte of its own: all the tables of an input together declare at
     most as many entries as it has bytes. Counted before anything is
     allocated, so nested tables cannot each claim the bytes left. */
  size_t room = (size_t)(d->e - d->p);
  if (na > room || nh > (room - na) / 2 || na + 2 * nh > d->entries)
    pfail(d, at, "truncated input (a table of %f + %f entries, room for "
          "%f)", (double)na, (double)nh,
          (double)(room < d->entries ? room : d->entries));
  d->entries -= na + 2 * nh;
  denter(d);
  CHARGE(d, at, tabcost((size_t)na, (size_t)nh));
  lua_createtable(L, (int)(na < 0x3ffffff ? na : 0x3ffffff),
                  (int)(nh < 0x3ffffff ? nh : 0x3ffffff));
  reg(d, newobj(d));
  int t = lua_gettop(L);
  const void *T = na ? lua_topointer(L, t) : NULL;
  const flayout *fl = na ? getlayout(d) : NULL;
  uint64_t *a = fl ? tabarray(fl, T, na) : NULL;
  for (size_t i = 1; i <= na; i++) {
    if (a && decleaf(d, fl, &a[i])) continue;
    decval(d);
    lua_rawseti(L, t, (int)i);
    /* A __deserialize hook handed this table (a cycle) may resize it. */
    if (a) a = tabarray(fl, T, na);
  }
  for (size_t i = 0; i < nh; i++) {
    unsigned tag = d->p < d->e ? *d->p : 0;
    if (tag >= SSTR && tag < SINT) {  /* a short string key: no checks */
      size_t n = tag - SSTR;
      CHARGE(d, d->p, n + 25);
      d->p++;
      need(d, n);
      lua_pushlstring(L, (const char *)d->p, n);
      d->p += n;
    } else {
      decval(d);
      if (lua_isnil(L, -1) || (lua_type(L, -1) == LUA_TNUMBER &&
                               lua_tonumber(L, -1) != lua_tonumber(L, -1)))
        dfail(d, "corrupt input (nil or NaN key)");
    }
    decval(d);
    lua_rawset(L, t);
  }
  if (hasmt) {
    if (!TRUSTED(d)) untrusted_mt(d, at);
    decval(d);
    if (!lua_istable(L, -1)) dfail(d, "corrupt input (bad metatable)");
    lua_setmetatable(L, t);
  }
  d->depth--;
}

/* The layout of the state, for writing numbers in place; looked up on
   first use so that a decode without packed arrays does not pay for it. */
static const flayout *getlayout(dec *d)
{
  if (!d->fl) {
    sstate *S = pcr__ser_getstate(d->L);
    lua_pop(d->L, 1);  /* the registry keeps it */
    d->fl = &S->fl;
  }
  return d->fl->ok ? d->fl : NULL;
}

/* Decodes T_AI32 (w = 4) or T_ANUM (w = 8): n numbers for keys 1..n. A
   fresh table's array part is written in place: numbers need no write
   barrier, but a NaN must be the canonical one, as any other NaN could
   read as a tagged value. */
static void decpacked(dec *d, int w)
{
  lua_State *L = d->L;
  const unsigned char *at = d->p - 1;
  size_t n = rdlen(d, (size_t)w);
  const unsigned char *p = d->p;
  int big = n >= 0x3ffffff;
  CHARGE(d, at, tabcost(n, 0));
  lua_createtable(L, big ? 0x3ffffff : (int)n, 0);
  reg(d, newobj(d));
  d->p += n * (size_t)w;
  const void *T = n ? lua_topointer(L, -1) : NULL;
  const flayout *fl = n ? getlayout(d) : NULL;
  uint64_t *a = fl && !big ? tabarray(fl, T, n) : NULL;
  if (a) {
    if (w == 4) {
      for (size_t i = 1; i <= n; i++, p += 4) {
        int32_t v = (int32_t)((uint32_t)p[0] | (uint32_t)p[1] << 8 |
                              (uint32_t)p[2] << 16 | (uint32_t)p[3] << 24);
        double x = v;
        memcpy(&a[i], &x, 8);
      }
    } else {
      for (size_t i = 1; i <= n; i++, p += 8) {
        uint64_t u;
        memcpy(&u, p, 8);
#if __BYTE_ORDER__ == __ORDER_BIG_ENDIAN__
        u = __builtin_bswap64(u);
#endif
        a[i] = f_num(u) == f_num(u) ? u : fl->nan;
      }
    }
    return;
  }
  for (size_t i = 1; i <= n; i++, p += w) {
    double x;
    if (w == 4) {
      x = (int32_t)((uint32_t)p[0] | (uint32_t)p[1] << 8 |
                    (uint32_t)p[2] << 16 | (uint32_t)p[3] << 24);
    } else {
      uint64_t u;
      memcpy(&u, p, 8);
#if __BYTE_ORDER__ == __ORDER_BIG_ENDIAN__
      u = __builtin_bswap64(u);
#endif
      x = f_num(u);
    }
    lua_pushnumber(L, x);
    lua_rawseti(L, -2, (int)i);
  }
}

/* Whether the metatable at stack slot mt is a capability: pcrun's
   processes, connections and shared objects, and types registered with
   {capability = true}. Stack-neutral. */
static int iscap(dec *d, int mt)
{
  lua_State *L = d->L;
  int top = lua_gettop(L);
  lua_rawgeti(L, pushenv(d), E_CAPS);
  lua_pushvalue(L, mt);
  lua_rawget(L, -2);
  int r = lua_toboolean(L, -1);
  lua_settop(L, top);
  return r;
}

static int nups(lua_State *L, int f)
{
  int n = 0;
  while (lua_getupvalue(L, f, n + 1)) {
    lua_pop(L, 1);
    n++;
  }
  return n;
}

static void decupref(dec *d, int f, int u)
{
  lua_State *L = d->L;
  uint64_t ord = rdvar(d), j = rdvar(d);
  if (!d->refs || ord == 0 || ord > d->nobj) dfail(d, "bad back-reference");
  lua_rawgeti(L, d->refs, (int)ord);
  int g = lua_gettop(L);
  if (!lua_isfunction(L, g) || lua_iscfunction(L, g) || j == 0 ||
      j > (uint64_t)nups(L, g))
    dfail(d, "bad upvalue reference");
  lua_upvaluejoin(L, f, u, g, (int)j);
  lua_pop(L, 1);
}

static void decfunc(dec *d)
{
  lua_State *L = d->L;
  const unsigned char *at = d->p - 1;
  if (!TRUSTED(d)) refuse(d, at, "a function (LuaJIT bytecode)");
  need(d, 4);
  size_t n = d->p[0] | (size_t)d->p[1] << 8 | (size_t)d->p[2] << 16 |
             (size_t)d->p[3] << 24;
  d->p += 4;
  need(d, n);
  denter(d);
  CHARGE(d, at, 2 * n + 64);
  if (luaL_loadbufferx(L, (const char *)d->p, n, "=pcrun", "b"))
    luaL_error(L, "pcrun.decode: bad bytecode: %s", lua_tostring(L, -1));
  d->p += n;
  reg(d, newobj(d));
  int f = lua_gettop(L);
  uint64_t nup = rdvar(d);
  if (nup != (uint64_t)nups(L, f)) dfail(d, "corrupt input (upvalues)");
  for (int u = 1; u <= (int)nup; u++) {
    if (d->p < d->e && *d->p == T_UPREF) {
      d->p++;
      decupref(d, f, u);
    } else {
      decval(d);
      lua_setupvalue(L, f, u);
    }
  }
  d->depth--;
}

/* Pushes package.loaded[name], requiring it when trusted. */
static void decmod(dec *d, const unsigned char *at)
{
  lua_State *L = d->L;
  size_t n;
  const char *s = rdstr(d, &n);
  if (!TRUSTED(d))
    refuse(d, at, lua_pushfstring(L, "a module ('%s')", dname(L, s, n)));
  lua_getfield(L, LUA_REGISTRYINDEX, "_LOADED");
  lua_pushlstring(L, s, n);
  lua_rawget(L, -2);
  lua_remove(L, -2);
  if (lua_isnil(L, -1) && (d->flags & PCR_SER_TRUSTED)) {
    lua_pop(L, 1);
    lua_getglobal(L, "require");
    lua_pushlstring(L, s, n);
    lua_call(L, 1, 1);
  }
  if (lua_isnil(L, -1))
    luaL_error(L, "pcrun.decode: module '%s' is not loaded",
               dname(L, s, n));
}

/* Pushes the metatable registered under the name at d->p (a str), then
   the name, which it returns. */
static const char *pushtype(dec *d)
{
  lua_State *L = d->L;
  size_t n;
  const char *s = rdstr(d, &n);
  lua_rawgeti(L, pushenv(d), E_TYPES);
  lua_remove(L, -2);
  lua_pushlstring(L, s, n);
  lua_rawget(L, -2);
  lua_remove(L, -2);
  if (lua_isnil(L, -1))
    luaL_error(L, "pcrun.decode: unknown type '%s' (register it with "
               "pcrun.register_type)", dname(L, s, n));
  return dname(L, s, n);
}

/* Untrusted, a table's metatable must be a type registered with
   register_type that is not a capability. Checked before the metatable
   is decoded, so that the error names the table. */
static void untrusted_mt(dec *d, const unsigned char *at)
{
  lua_State *L = d->L;
  if (d->p >= d->e || *d->p != T_TYPE)
    refuse(d, at, "a table with a metatable not registered with "
           "pcrun.register_type");
  const unsigned char *p = d->p++;
  const char *name = pushtype(d);
  if (iscap(d, lua_gettop(L) - 1))
    refuse(d, at, lua_pushfstring(L, "a %s", name));
  lua_pop(L, 2);
  d->p = p;
}

static void decname(dec *d, int tag)
{
  lua_State *L = d->L;
  const unsigned char *at = d->p - 1;
  size_t n;
  const char *s;
  if (tag == T_TYPE) {
    const char *name = pushtype(d);
    if (!TRUSTED(d) && iscap(d, lua_gettop(L) - 1))
      refuse(d, at, lua_pushfstring(L, "a %s", name));
    lua_pop(L, 1);
    return;
  }
  if (tag == T_FIELD && !TRUSTED(d)) {
    s = rdstr(d, &n);
    const char *mod = dname(L, s, n);
    s = rdstr(d, &n);
    const char *key = dname(L, s, n);
    refuse(d, at, lua_pushfstring(L, "a module field ('%s.%s')", mod, key));
  }
  decmod(d, at);
  if (tag == T_FIELD) {
    s = rdstr(d, &n);
    if (!lua_istable(L, -1)) dfail(d, "corrupt input (module field)");
    lua_pushlstring(L, s, n);
    lua_rawget(L, -2);
    lua_remove(L, -2);
    if (lua_isnil(L, -1))
      luaL_error(L, "pcrun.decode: module field '%s' not found",
                 dname(L, s, n));
  }
}

static void decext(dec *d)
{
  lua_State *L = d->L;
  const unsigned char *at = d->p - 1;
  size_t n;
  const char *s = rdstr(d, &n);
  uint32_t ord = newobj(d);
  denter(d);
  lua_rawgeti(L, pushenv(d), E_TYPES);
  lua_remove(L, -2);
  lua_pushlstring(L, s, n);
  lua_rawget(L, -2);
  if (!lua_istable(L, -1))
    luaL_error(L, "pcrun.decode: unknown type '%s' (register it with "
               "pcrun.register_type)", dname(L, s, n));
  if (!TRUSTED(d) && iscap(d, lua_gettop(L)))
    refuse(d, at, lua_pushfstring(L, "a %s", dname(L, s, n)));
  lua_getfield(L, -1, "__deserialize");
  if (!lua_isfunction(L, -1))
    luaL_error(L, "pcrun.decode: type '%s' has no __deserialize",
               dname(L, s, n));
  lua_replace(L, -3);
  lua_pop(L, 1);
  decval(d);
  lua_call(L, 1 + pcr__ser_pushflags(L, -2, d->flags), 1);
  reg(d, ord);
  d->depth--;
}

static void deccdata(dec *d, int tag)
{
  lua_State *L = d->L;
  const unsigned char *at = d->p - 1;
  size_t n = 0, size = 8;
  const char *s = NULL;
  uint64_t nelem = 0;
  uint32_t ord = 0;
  if (tag == T_CDATA) {
    s = rdstr(d, &n);
    nelem = rdvar(d);
    size = rdlen(d, 1);
    ord = newobj(d);
  }
  need(d, size);
  CHARGE(d, at, size + 32);
  pcr__ser_cdhelper(L, pushenv(d), E_CMAKE);
  lua_remove(L, -2);
  lua_pushinteger(L, tag == T_I64 ? 1 : tag == T_U64 ? 2 : 3);
  if (s) lua_pushlstring(L, s, n);
  else lua_pushnil(L);
  lua_pushnumber(L, (double)nelem);
  lua_pushnumber(L, (double)size);
  lua_call(L, 4, 2);
  if (lua_type(L, -2) != TCDATA)
    luaL_error(L, "pcrun.decode: %s '%s'", lua_tostring(L, -1),
               dname(L, s, n));
  lua_pop(L, 1);
  void *p = (void *)lua_topointer(L, -1);
  memcpy(p, d->p, size);
#if __BYTE_ORDER__ == __ORDER_BIG_ENDIAN__
  if (tag != T_CDATA) *(uint64_t *)p = __builtin_bswap64(*(uint64_t *)p);
#endif
  d->p += size;
  if (ord) reg(d, ord);
}

static void decval(dec *d)
{
  lua_State *L = d->L;
  unsigned tag = rd1(d);
  if (tag >= SINT) {
    lua_pushnumber(L, (double)(tag - SINT));
    return;
  }
  if (tag >= SSTR) {
    size_t n = tag - SSTR;
    CHARGE(d, d->p - 1, n + 25);
    need(d, n);
    lua_pushlstring(L, (const char *)d->p, n);
    d->p += n;
    return;
  }
  switch (tag) {
  case T_NIL: lua_pushnil(L); break;
  case T_FALSE: lua_pushboolean(L, 0); break;
  case T_TRUE: lua_pushboolean(L, 1); break;
  case T_NUM: {
    uint64_t u;
    double x;
    need(d, 8);
    memcpy(&u, d->p, 8);
#if __BYTE_ORDER__ == __ORDER_BIG_ENDIAN__
    u = __builtin_bswap64(u);
#endif
    memcpy(&x, &u, 8);
    d->p += 8;
    lua_pushnumber(L, x);
    break;
  }
  case T_INT: {
    uint64_t z = rdvar(d);
    if (z > 0xffffffffu) dfail(d, "corrupt input (bad integer)");
    int32_t i = (int32_t)((uint32_t)(z >> 1) ^ (uint32_t)-(int64_t)(z & 1));
    lua_pushnumber(L, (double)i);
    break;
  }
  case T_STR: {
    const unsigned char *at = d->p - 1;
    size_t n;
    const char *s = rdstr(d, &n);
    uint32_t ord = newobj(d);
    CHARGE(d, at, n + 25);
    lua_pushlstring(L, s, n);
    reg(d, ord);
    break;
  }
  case T_TAB: case T_TABMT: dectab(d, tag == T_TABMT); break;
  case T_FUNC: decfunc(d); break;
  case T_REF: {
    uint64_t ord = rdvar(d);
    if (!d->refs || ord == 0 || ord > d->nobj) dfail(d, "bad back-reference");
    lua_rawgeti(L, d->refs, (int)ord);
    if (lua_isnil(L, -1)) dfail(d, "bad back-reference");
    break;
  }
  case T_MOD: case T_FIELD: case T_TYPE: decname(d, (int)tag); break;
  case T_EXT: decext(d); break;
  case T_I64: case T_U64: case T_CDATA: deccdata(d, (int)tag); break;
  case T_AI32: decpacked(d, 4); break;
  case T_ANUM: decpacked(d, 8); break;
  default:
    luaL_error(L, "pcrun.decode: corrupt input (bad tag 0x%s at offset %d)",
               lua_pushfstring(L, "%c%c", "0123456789abcdef"[tag >> 4],
                               "0123456789abcdef"[tag & 15]),
               (int)(d->p - d->s - 1));
  }
}

void pcr__ser_decode_state(lua_State *L, const flayout *fl,
                           const char *buf, size_t len, int flags,
                           size_t maxbytes)
{
  dec d = { .L = L, .p = (const unsigned char *)buf,
            .s = (const unsigned char *)buf,
            .e = (const unsigned char *)buf + len, .flags = flags, .fl = fl,
            .entries = len, .budget = maxbytes, .maxbytes = maxbytes };
  luaL_checkstack(L, 8, "pcrun.decode");  /* denter checks for tables */
  if (len < 3 || d.p[0] != MAGIC)
    luaL_error(L, "pcrun.decode: not a pcrun encoding (bad header)");
  if (d.p[1] != PCR_SER_VERSION)
    luaL_error(L, "pcrun.decode: unsupported format version %d (this build "
               "reads %d)", (int)d.p[1], PCR_SER_VERSION);
  if (d.p[2] & ~F_REFS) dfail(&d, "corrupt input (bad header flags)");
  int refs = d.p[2] & F_REFS, base = lua_gettop(L);
  d.p += 3;
  d.maxobj = (uint32_t)(len > 0x7fffffff ? 0x7fffffff : len);
  if (refs) {
    uint64_t n = rdvar(&d);
    if (n > (uint64_t)(d.e - d.p)) dfail(&d, "corrupt input (bad count)");
    CHARGE(&d, NULL, tabcost((size_t)n, 0));
    lua_createtable(L, (int)(n < 0x3ffffff ? n : 0x3ffffff), 0);
    d.refs = base + 1;
  }
  d.root = d.p;
  decval(&d);
  if (d.p != d.e) dfail(&d, "corrupt input (trailing bytes)");
  if (refs) lua_remove(L, base + 1);
}


void pcr__ser_decode(lua_State *L, const char *buf, size_t len, int flags)
{
  pcr__ser_decode_state(L, NULL, buf, len,
                        flags & (PCR_SER_TRUSTED | PCR_SER_MSG), 0);
}
