/* ser.c -- encodes Lua values into the tagged byte format of docs/format.md
   and decodes them back: sharing and cycles, loaded modules by name, hooks,
   bytecode with upvalues, plain-data cdata. Moving the bytes is not its job. */
#include <math.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <lua.h>
#include <lauxlib.h>

#include "ser.h"
#include "ser_fast.h"

/* -- Format --------------------------------------------------------------- */

#define MAGIC 0xB7
#define F_REFS 0x01        /* header flag: back-references occur */
#define TCDATA 10          /* lua_type() of LuaJIT cdata */
#define SSTR 0x80          /* 0x80..0xBF: string of 0..63 bytes */
#define SINT 0xC0          /* 0xC0..0xFF: integer 0..63 */
#define SHORT 64           /* strings this long or longer may be shared */
#define MAXNEST 8          /* encodes running inside __serialize hooks */
#define NFILTER 65536      /* bits in the names filter (8 KB) */

enum {
  T_NIL, T_FALSE, T_TRUE, T_NUM, T_INT, T_STR, T_TAB, T_TABMT, T_FUNC,
  T_REF, T_UPREF, T_MOD, T_FIELD, T_TYPE, T_EXT, T_I64, T_U64, T_CDATA,
  T_AI32, T_ANUM
};

#define PACKMIN 4          /* shortest array written as T_AI32/T_ANUM */
#define KCACHE 16          /* string keys kept on hand by the encoder */

/* Slots of the state's environment table. */
enum { E_NM = 1, E_TYPES, E_CDESC, E_CMAKE };

/* Kinds of names (low 2 bits of a names-map value). */
enum { K_MOD, K_FIELD, K_TYPE };

#define INPROG (1u << 31)  /* seen-map flag: __serialize result pending */

static const char statekey = 0;

/* -- Pointer map (open addressing, cleared in O(1) by generation) --------- */

typedef struct pslot {
  const void *k;
  uint32_t v, gen;
} pslot;

typedef struct pmap {
  pslot *s;
  uint32_t mask, n, gen;
  int mix;  /* scramble keys: for maps where lookups mostly miss */
} pmap;

/* Objects allocated together are usually visited together: keep nearby
   addresses in nearby slots rather than scattering them. */
static uint32_t phash(const pmap *m, const void *k)
{
  uint64_t x = (uint64_t)(uintptr_t)k;
  if (m->mix) {
    x *= 0x9e3779b97f4a7c15ull;
    return (uint32_t)(x >> 32);
  }
  return (uint32_t)((x >> 4) ^ (x >> 21) ^ (x >> 39));
}

static void pclear(pmap *m)
{
  if (m->s && m->mask > 65535 && m->n < m->mask / 16) {
    free(m->s);  /* a big encode left it; the last one was small */
    m->s = NULL;
    m->mask = 0;
  }
  m->n = 0;
  if (++m->gen == 0) {  /* wrapped: old stamps would look live */
    if (m->s) memset(m->s, 0, ((size_t)m->mask + 1) * sizeof(pslot));
    m->gen = 1;
  }
}

static pslot *pfind(pmap *m, const void *k)
{
  if (!m->s) return NULL;
  for (uint32_t i = phash(m, k) & m->mask;; i = (i + 1) & m->mask) {
    pslot *s = &m->s[i];
    if (s->gen != m->gen) return NULL;
    if (s->k == k) return s;
  }
}

static void pgrow(lua_State *L, pmap *m)
{
  uint32_t cap = m->s ? (m->mask + 1) * 2 : 64;
  pslot *ns = calloc(cap, sizeof(pslot));
  if (!ns) luaL_error(L, "not enough memory");
  if (m->gen == 0) m->gen = 1;
  for (uint32_t i = 0; m->s && i <= m->mask; i++) {
    if (m->s[i].gen != m->gen) continue;
    uint32_t j = phash(m, m->s[i].k) & (cap - 1);
    while (ns[j].gen == m->gen) j = (j + 1) & (cap - 1);
    ns[j] = m->s[i];
  }
  free(m->s);
  m->s = ns;
  m->mask = cap - 1;
}

/* Returns the slot holding k, or inserts k -> v and returns NULL. */
static pslot *plook(lua_State *L, pmap *m, const void *k, uint32_t v)
{
  if (!m->s || (m->n + 1) * 2 > m->mask + 1) pgrow(L, m);
  uint32_t i = phash(m, k) & m->mask;
  for (;; i = (i + 1) & m->mask) {
    pslot *s = &m->s[i];
    if (s->gen != m->gen) break;
    if (s->k == k) return s;
  }
  m->s[i] = (pslot){ .k = k, .v = v, .gen = m->gen };
  m->n++;
  return NULL;
}

/* -- Tables met by one encode -------------------------------------------- */

/* Every table must be recorded (a second visit is a back-reference), but
   most are visited once, and a hash map over tens of thousands of tables
   misses the cache on every insert. So a table first sets one bit in a
   bitmap of the address space: a GCtab is 64 bytes, so one bit per 64
   bytes is exact, and 2 KB cover a megabyte of heap. Tables are also
   appended to a list; only when a bit is found set already does the list
   go into the seen map, which then gives the number to refer to. */

#define CSHIFT 20                          /* 1 MB of addresses per chunk */
#define CBITS (1u << (CSHIFT - 6))         /* bits per chunk */

typedef struct tent {
  const void *p;
  uint32_t id;
  uint32_t loc;  /* chunk index << (CSHIFT - 6) | bit: to clear it */
} tent;

typedef struct tseen {
  pmap dir;              /* chunk number -> chunk index + 1 */
  uint64_t **chunk;      /* CBITS / 64 words each, kept across encodes */
  uint32_t nchunk, used; /* chunks allocated; assigned in this encode */
  uintptr_t lastkey;     /* chunk number of last, a one-entry cache */
  uint64_t *last;
  uint32_t lastidx;
  tent *list;
  size_t n, cap, flushed;  /* list[0 .. flushed) are in the seen map */
} tseen;

typedef struct level {  /* what one encode (nested or not) writes into */
  char *p;
  size_t n, cap;
  pmap seen;
  tseen tabs;
  uintptr_t frame;  /* C frame of the encode using it; 0: free */
} level;

/* Forgets the tables of the last encode on this level, even one that
   raised an error: clears exactly the bits it set. */
static void tclear(tseen *t)
{
  for (size_t i = 0; i < t->n; i++) {
    uint32_t loc = t->list[i].loc, c = loc >> (CSHIFT - 6), b = loc % CBITS;
    t->chunk[c][b >> 6] &= ~(1ull << (b & 63));
  }
  if (t->cap > 65536 && t->n < t->cap / 16) {  /* a big encode left it */
    free(t->list);
    t->list = NULL;
    t->cap = 0;
  }
  t->n = t->flushed = 0;
  t->used = 0;
  t->last = NULL;
  pclear(&t->dir);
}

static void tfree(tseen *t)
{
  for (uint32_t i = 0; i < t->nchunk; i++) free(t->chunk[i]);
  free(t->chunk);
  free(t->list);
  free(t->dir.s);
}

/* Returns the bitmap of the chunk holding address a (setting *idx). */
static uint64_t *tchunk(lua_State *L, tseen *t, uintptr_t a, uint32_t *idx)
{
  uintptr_t key = a >> CSHIFT;
  if (t->last && t->lastkey == key) {
    *idx = t->lastidx;
    return t->last;
  }
  const void *k = (const void *)((key << 4) | 8);  /* never 0 */
  pslot *s = pfind(&t->dir, k);
  uint32_t i;
  if (s) {
    i = s->v - 1;
  } else {
    if (t->used == t->nchunk) {
      uint64_t **nc = realloc(t->chunk, (t->nchunk + 1) * sizeof *nc);
      if (!nc) luaL_error(L, "not enough memory");
      t->chunk = nc;
      if (!(nc[t->nchunk] = calloc(CBITS / 64, 8)))
        luaL_error(L, "not enough memory");
      t->nchunk++;
    }
    i = t->used++;
    plook(L, &t->dir, k, i + 1);
  }
  t->lastkey = key;
  t->lastidx = *idx = i;
  return t->last = t->chunk[i];
}

/* Puts the listed tables not yet in the seen map there. */
static void tflush(lua_State *L, tseen *t, pmap *seen)
{
  for (; t->flushed < t->n; t->flushed++)
    plook(L, seen, t->list[t->flushed].p, t->list[t->flushed].id);
}

/* Records table p as object id and returns NULL, or returns its slot in
   the seen map when this encode met it already. */
static pslot *tlook(lua_State *L, level *b, const void *p, uint32_t id)
{
  tseen *t = &b->tabs;
  uintptr_t a = (uintptr_t)p;
  uint32_t ci, bit = (uint32_t)(a >> 6) % CBITS;
  uint64_t *w = tchunk(L, t, a, &ci) + (bit >> 6), m = 1ull << (bit & 63);
  if (*w & m) {
    tflush(L, t, &b->seen);
    return plook(L, &b->seen, p, id);
  }
  if (t->n == t->cap) {
    size_t cap = t->cap ? t->cap * 2 : 256;
    tent *nl = realloc(t->list, cap * sizeof *nl);
    if (!nl) luaL_error(L, "not enough memory");
    t->list = nl;
    t->cap = cap;
  }
  *w |= m;  /* only now: a failed growth leaves no bit behind */
  t->list[t->n++] = (tent){ p, id, ci << (CSHIFT - 6) | bit };
  return NULL;
}

/* -- Per-state data ------------------------------------------------------- */

typedef struct sstate {
  level lv[MAXNEST];
  flayout fl;     /* verified LuaJIT layout, or fl.ok == 0: API only */
  int names_ok;   /* names map matches package.loaded and the types */
  int nloaded;    /* entries of package.loaded when it was built */
  pmap names;     /* module/field/type value -> 4 * index + kind */
  uint64_t nfilter[NFILTER / 64];  /* bit per hash of a names entry */
} sstate;

static int state_gc(lua_State *L)
{
  sstate *S = lua_touserdata(L, 1);
  for (int i = 0; i < MAXNEST; i++) {
    free(S->lv[i].p);
    free(S->lv[i].seen.s);
    tfree(&S->lv[i].tabs);
  }
  free(S->names.s);
  memset(S, 0, sizeof *S);
  return 0;
}

/* Pushes the state of L, creating it on first use. */
static sstate *getstate(lua_State *L)
{
  lua_pushlightuserdata(L, (void *)&statekey);
  lua_rawget(L, LUA_REGISTRYINDEX);
  sstate *S = lua_touserdata(L, -1);
  if (S) return S;
  lua_pop(L, 1);
  S = lua_newuserdata(L, sizeof *S);
  memset(S, 0, sizeof *S);
  S->names.mix = 1;
  if (!getenv("PCRUN_SER_NOFAST")) fast_check(L, &S->fl);  /* for tests */
  lua_createtable(L, 0, 1);
  lua_pushcfunction(L, state_gc);
  lua_setfield(L, -2, "__gc");
  lua_setmetatable(L, -2);
  lua_createtable(L, 4, 0);
  lua_newtable(L);
  lua_rawseti(L, -2, E_TYPES);
  lua_setfenv(L, -2);
  lua_pushlightuserdata(L, (void *)&statekey);
  lua_pushvalue(L, -2);
  lua_rawset(L, LUA_REGISTRYINDEX);
  return S;
}

/* -- Reverse index of package.loaded and registered types ----------------- */

/* Every table goes past the names map, nearly always to miss: a bit
   filter that stays in L1 answers most of those misses with one load. */
static inline uint32_t nfbit(const void *k)
{
  uint64_t x = (uint64_t)(uintptr_t)k * 0x9e3779b97f4a7c15ull;
  return (uint32_t)(x >> 48);  /* NFILTER == 1 << 16 */
}

static inline int nfmaybe(const sstate *S, const void *k)
{
  uint32_t b = nfbit(k);
  return (int)(S->nfilter[b >> 6] >> (b & 63)) & 1;
}

static void nameadd(lua_State *L, sstate *S, int nm, int v, int kind,
                    const char *a, const char *b)
{
  int i = (int)lua_objlen(L, nm) / 3 + 1;
  uint32_t bit = nfbit(lua_topointer(L, v));
  S->nfilter[bit >> 6] |= 1ull << (bit & 63);
  if (kind != K_TYPE && pfind(&S->names, lua_topointer(L, v))) return;
  pslot *s = plook(L, &S->names, lua_topointer(L, v), 4u * i + kind);
  if (s) s->v = 4u * i + kind;  /* a type beats a module */
  lua_pushvalue(L, v);  /* anchors the value the map points at */
  lua_rawseti(L, nm, 3 * i - 2);
  lua_pushstring(L, a);
  lua_rawseti(L, nm, 3 * i - 1);
  if (b) lua_pushstring(L, b);
  else lua_pushboolean(L, 0);
  lua_rawseti(L, nm, 3 * i);
}

static int nameable(lua_State *L, int i, int isg)
{
  int t = lua_type(L, i);
  if (isg) return lua_iscfunction(L, i);  /* _G's data goes by value */
  return t == LUA_TFUNCTION || t == LUA_TUSERDATA;
}

static void fieldsof(lua_State *L, sstate *S, int nm, int mod)
{
  const char *mname = lua_tostring(L, mod - 1);
  int isg = strcmp(mname, "_G") == 0;
  lua_pushnil(L);
  while (lua_next(L, mod)) {
    if (lua_type(L, -2) == LUA_TSTRING && nameable(L, -1, isg))
      nameadd(L, S, nm, lua_gettop(L), K_FIELD, mname, lua_tostring(L, -2));
    lua_pop(L, 1);
  }
}

static int loadedcount(lua_State *L)
{
  int n = 0;
  lua_getfield(L, LUA_REGISTRYINDEX, "_LOADED");
  if (lua_istable(L, -1)) {
    for (lua_pushnil(L); lua_next(L, -2); n++) lua_pop(L, 1);
  }
  lua_pop(L, 1);
  return n;
}

/* Rebuilds the names map of S (state env at env); pushes the names list. */
static void namesbuild(lua_State *L, sstate *S, int env)
{
  pclear(&S->names);
  memset(S->nfilter, 0, sizeof S->nfilter);
  lua_newtable(L);
  int nm = lua_gettop(L), n = 0;
  lua_getfield(L, LUA_REGISTRYINDEX, "_LOADED");
  int ld = lua_gettop(L);
  for (int pass = 0; pass < 2 && lua_istable(L, ld); pass++) {
    lua_pushnil(L);
    while (lua_next(L, ld)) {
      int t = lua_type(L, -1);
      n += pass == 0;
      if (lua_type(L, -2) != LUA_TSTRING) {
        lua_pop(L, 1);
        continue;
      }
      if (pass == 0 && (t == LUA_TTABLE || t == LUA_TFUNCTION ||
                        t == LUA_TUSERDATA))
        nameadd(L, S, nm, lua_gettop(L), K_MOD, lua_tostring(L, -2), NULL);
      else if (pass == 1 && t == LUA_TTABLE)
        fieldsof(L, S, nm, lua_gettop(L));
      lua_pop(L, 1);
    }
  }
  lua_pop(L, 1);
  lua_rawgeti(L, env, E_TYPES);
  for (lua_pushnil(L); lua_next(L, -2); lua_pop(L, 1))
    nameadd(L, S, nm, lua_gettop(L), K_TYPE, lua_tostring(L, -2), NULL);
  lua_pop(L, 1);
  lua_pushvalue(L, nm);
  lua_rawseti(L, env, E_NM);
  S->nloaded = n;
  S->names_ok = 1;
}

/* -- Encoder -------------------------------------------------------------- */

/* A path entry names how the encoder got from one level to the next: a
   key on the stack (P_KEY, idx is its slot), an array slot read in place
   (P_ARR, idx is the index) or a hash node read in place (P_NODE). */
enum { P_KEY, P_KEYOF, P_MT, P_UPV, P_SER, P_ARR, P_NODE };

typedef struct pathent {
  int kind, idx;
  const ftab *t;      /* P_NODE: the table and the node */
  const fnode *n;
} pathent;

typedef struct enc {
  lua_State *L;
  sstate *S;
  level *b;
  const char *root;
  const flayout *fl; /* NULL: read tables through the API only */
  uint32_t nobj;     /* shareable objects written so far */
  uint32_t epoch;    /* bumped whenever Lua code may have run */
  int np;            /* entries in path */
  int hasrefs, refreshed;
  int sud, env, nm, anch; /* stack slots: state, its env, names, anchors */
  int kc;            /* stack slot of the key cache table; 0 until used */
  const void *kcs[KCACHE];  /* GCstr of each key cache entry */
  pathent path[PCR_SER_MAXDEPTH + 2];
} enc;

static void encval(enc *e, int i);

static void addkey(luaL_Buffer *lb, lua_State *L, int k)
{
  size_t n;
  const char *s;
  switch (lua_type(L, k)) {
  case LUA_TSTRING:
    s = lua_tolstring(L, k, &n);
    size_t j = 0;
    while (j < n && (s[j] == '_' || (unsigned)((s[j] | 32) - 'a') < 26 ||
                     (j > 0 && (unsigned)(s[j] - '0') < 10)))
      j++;
    if (n > 0 && j == n && n <= 40) {
      luaL_addchar(lb, '.');
      luaL_addlstring(lb, s, n);
    } else {
      luaL_addstring(lb, "[\"");
      luaL_addlstring(lb, s, n > 40 ? 40 : n);
      luaL_addstring(lb, n > 40 ? "...\"]" : "\"]");
    }
    break;
  case LUA_TNUMBER:
  case LUA_TBOOLEAN:
    luaL_addchar(lb, '[');
    if (lua_isboolean(L, k)) {
      luaL_addstring(lb, lua_toboolean(L, k) ? "true" : "false");
    } else {
      lua_pushvalue(L, k);
      luaL_addvalue(lb);
    }
    luaL_addchar(lb, ']');
    break;
  default:
    luaL_addchar(lb, '[');
    luaL_addstring(lb, luaL_typename(L, k));
    luaL_addchar(lb, ']');
  }
}

/* Pushes the key of a node read in place, if the node still holds it: a
   key of a node whose value went nil may already be collected. */
static void pushnodekey(lua_State *L, const flayout *f, const pathent *p)
{
  const fnode *n = p->n;
  size_t len;
  const fnode *nd = (const fnode *)(uintptr_t)p->t->node;
  if (n < nd || n > nd + p->t->hmask || n->val == F_NIL) {
    lua_pushliteral(L, "?");
  } else if (f_isnum(n->key)) {
    lua_pushnumber(L, f_num(n->key));
  } else if (F_TOP(n->key) == F_TOPSTR) {
    const char *s = f_str(f, n->key, &len);
    lua_pushlstring(L, s, len);
  } else {
    lua_pushboolean(L, n->key == F_TRUE);
  }
}

static void addpath(enc *e, luaL_Buffer *lb, int j)
{
  lua_State *L = e->L;
  pathent *p = &e->path[j];
  switch (p->kind) {
  case P_KEY: addkey(lb, L, p->idx); break;
  case P_ARR: case P_NODE:
    if (p->kind == P_ARR) lua_pushnumber(L, p->idx);
    else pushnodekey(L, e->fl, p);
    addkey(lb, L, lua_gettop(L));
    lua_pop(L, 1);
    break;
  case P_KEYOF: luaL_addstring(lb, "<key>"); break;
  case P_MT: luaL_addstring(lb, "<metatable>"); break;
  case P_SER: luaL_addstring(lb, "<__serialize>"); break;
  case P_UPV: {
    const char *nm = lua_getupvalue(L, p->idx >> 8, p->idx & 255);
    lua_pop(L, nm != NULL);
    luaL_addstring(lb, "<upvalue ");
    luaL_addstring(lb, nm && *nm ? nm : "?");
    luaL_addchar(lb, '>');
    break;
  }
  }
}

/* Raises "pcrun.encode: <path>: <msg>"; the path is built only now. */
static void fail(enc *e, const char *msg)
{
  lua_State *L = e->L;
  luaL_Buffer lb;
  lua_checkstack(L, 8);
  luaL_buffinit(L, &lb);
  luaL_addstring(&lb, "pcrun.encode: ");
  luaL_addstring(&lb, e->root);
  for (int j = 0; j < e->np; j++) {
    if (e->np > 16 && j == 8) {
      luaL_addstring(&lb, "...");
      j = e->np - 8;
    }
    addpath(e, &lb, j);
  }
  luaL_addstring(&lb, ": ");
  luaL_addstring(&lb, msg);
  luaL_pushresult(&lb);
  lua_error(L);
}

static int grow(level *b, size_t need)
{
  size_t cap = b->cap ? b->cap : 256;
  while (cap - b->n < need) {
    if (cap > SIZE_MAX / 2) return 0;
    cap *= 2;
  }
  if (cap - b->n < need) return 0;
  char *p = realloc(b->p, cap);
  if (!p) return 0;
  b->p = p;
  b->cap = cap;
  return 1;
}

static void reserveslow(enc *e, size_t need)
{
  if (!grow(e->b, need)) fail(e, "not enough memory");
}

static inline char *reserve(enc *e, size_t need)
{
  level *b = e->b;
  if (b->cap - b->n < need) reserveslow(e, need);
  return b->p + b->n;
}

static void put1(enc *e, int c)
{
  *reserve(e, 1) = (char)c;
  e->b->n++;
}

static void putvar(enc *e, uint64_t v)
{
  unsigned char *p = (unsigned char *)reserve(e, 10), *q = p;
  for (; v >= 0x80; v >>= 7) *q++ = (unsigned char)(v | 0x80);
  *q++ = (unsigned char)v;
  e->b->n += (size_t)(q - p);
}

static void putbytes(enc *e, const void *s, size_t n)
{
  memcpy(reserve(e, n), s, n);
  e->b->n += n;
}

static void putstr(enc *e, const char *s, size_t n)
{
  putvar(e, n);
  putbytes(e, s, n);
}

static void put64(enc *e, uint64_t v)
{
#if __BYTE_ORDER__ == __ORDER_BIG_ENDIAN__
  v = __builtin_bswap64(v);
#endif
  putbytes(e, &v, 8);
}

static uint32_t newid(enc *e)
{
  if (e->nobj >= INPROG - 1) fail(e, "too many objects");
  return ++e->nobj;
}

static void putref(enc *e, pslot *s)
{
  if (s->v & INPROG) fail(e, "cannot send a cycle through __serialize");
  put1(e, T_REF);
  putvar(e, s->v);
  e->hasrefs = 1;
}

static void encnum(enc *e, double d)
{
  if (d >= -2147483648.0 && d <= 2147483647.0) {
    int32_t i = (int32_t)d;
    if (i == d && (i != 0 || !signbit(d))) {
      if (i >= 0 && i < 64) {
        put1(e, SINT + i);
      } else {
        put1(e, T_INT);
        putvar(e, ((uint32_t)i << 1) ^ (uint32_t)(i >> 31));
      }
      return;
    }
  }
  uint64_t u;
  memcpy(&u, &d, 8);
  put1(e, T_NUM);
  put64(e, u);
}

static void encstrp(enc *e, const char *s, size_t n)
{
  if (n < SHORT) {
    char *p = reserve(e, n + 1);
    *p = (char)(SSTR + n);
    memcpy(p + 1, s, n);
    e->b->n += n + 1;
    return;
  }
  pslot *sl = plook(e->L, &e->b->seen, s, e->nobj + 1);
  if (sl) {
    putref(e, sl);
    return;
  }
  newid(e);
  reserve(e, n + 11);  /* one growth for a big string */
  put1(e, T_STR);
  putstr(e, s, n);
}

static void encstr(enc *e, int i)
{
  size_t n;
  const char *s = lua_tolstring(e->L, i, &n);
  encstrp(e, s, n);
}

/* Pushes the state's environment table into its slot on first use. */
static int getenv_e(enc *e)
{
  if (!e->env) {
    e->env = e->sud + 1;
    lua_getfenv(e->L, e->sud);
    lua_replace(e->L, e->env);
  }
  return e->env;
}

/* Pushes the names list into its slot on first use. */
static int getnm(enc *e)
{
  if (!e->nm) {
    e->nm = e->sud + 2;
    lua_rawgeti(e->L, getenv_e(e), E_NM);
    lua_replace(e->L, e->nm);
  }
  return e->nm;
}

/* Writes the name of a module, module field or registered type when the
   object at i has one, refreshing the index at most once per encode. */
static int byname(enc *e, const void *ptr, int refresh)
{
  lua_State *L = e->L;
  pslot *s = pfind(&e->S->names, ptr);
  if (!s && refresh && !e->refreshed) {
    e->refreshed = 1;
    if (loadedcount(L) != e->S->nloaded) {
      e->epoch++;
      namesbuild(L, e->S, getenv_e(e));
      e->nm = e->sud + 2;
      lua_replace(L, e->nm);
      s = pfind(&e->S->names, ptr);
    }
  }
  if (!s) return 0;
  int k = (int)(s->v >> 2), kind = (int)(s->v & 3);
  size_t n;
  put1(e, kind == K_MOD ? T_MOD : kind == K_FIELD ? T_FIELD : T_TYPE);
  lua_rawgeti(L, getnm(e), 3 * k - 1);
  const char *a = lua_tolstring(L, -1, &n);
  putstr(e, a, n);
  if (kind == K_FIELD) {
    lua_rawgeti(L, e->nm, 3 * k);
    a = lua_tolstring(L, -1, &n);
    putstr(e, a, n);
    lua_pop(L, 1);
  }
  lua_pop(L, 1);
  return 1;
}

static void enter(enc *e)
{
  if (e->np >= PCR_SER_MAXDEPTH) {
    char m[64];
    snprintf(m, sizeof m, "nesting deeper than %d", PCR_SER_MAXDEPTH);
    fail(e, m);
  }
  /* A level holds at most 6 slots: check room for 8 levels at a time. */
  if ((e->np & 7) == 0 && !lua_checkstack(e->L, 64))
    fail(e, "Lua stack overflow");
}

/* Encodes obj (mt on top, __serialize above it) as T_EXT. */
static void encext(enc *e, int obj, int mt)
{
  lua_State *L = e->L;
  size_t n;
  const char *name = NULL;
  pslot *s = pfind(&e->S->names, lua_topointer(L, mt));
  e->epoch++;
  if (s && (s->v & 3) == K_TYPE) {
    lua_rawgeti(L, getnm(e), 3 * (int)(s->v >> 2) - 1);
  } else {
    lua_getfield(L, mt, "__name");
  }
  name = lua_tolstring(L, -1, &n);
  if (lua_type(L, -1) != LUA_TSTRING)
    fail(e, "__serialize without __name (use pcrun.register_type)");
  uint32_t ord = newid(e);
  put1(e, T_EXT);
  putstr(e, name, n);
  lua_pop(L, 1);
  tflush(L, &e->b->tabs, &e->b->seen);  /* a table may be listed only */
  pfind(&e->b->seen, lua_topointer(L, obj))->v = ord | INPROG;
  lua_pushvalue(L, obj);
  lua_call(L, 1, 1);
  if (!e->anch) {
    lua_newtable(L);
    lua_replace(L, e->anch = e->sud + 3);
  }
  lua_pushvalue(L, -1);  /* the result must outlive the seen map entry */
  lua_rawseti(L, e->anch, (int)lua_objlen(L, e->anch) + 1);
  e->path[e->np++] = (pathent){ .kind = P_SER };
  encval(e, lua_gettop(L));
  e->np--;
  pfind(&e->b->seen, lua_topointer(L, obj))->v = ord;
  lua_pop(L, 2);
}

/* Pushes the metatable of i and returns 1 if it has __serialize (pushed). */
static int gethook(lua_State *L, int i)
{
  if (!lua_getmetatable(L, i)) return 0;
  lua_getfield(L, -1, "__serialize");
  if (!lua_isnil(L, -1)) return 1;
  lua_pop(L, 1);
  return 0;
}

/* Rewrites the hdr bytes of table sizes at off as the varints na, nh. */
static void fixsizes(enc *e, size_t off, size_t hdr, uint64_t na,
                     uint64_t nh)
{
  unsigned char *p = (unsigned char *)e->b->p + off;
  if (hdr == 2 && na < 128 && nh < 128) {
    p[0] = (unsigned char)na;
    p[1] = (unsigned char)nh;
    return;
  }
  unsigned char tmp[20];
  size_t k = 0;
  for (uint64_t v = na; ; v >>= 7) {
    tmp[k++] = (unsigned char)((v & 0x7f) | (v >= 0x80 ? 0x80 : 0));
    if (v < 0x80) break;
  }
  for (uint64_t v = nh; ; v >>= 7) {
    tmp[k++] = (unsigned char)((v & 0x7f) | (v >= 0x80 ? 0x80 : 0));
    if (v < 0x80) break;
  }
  if (k > hdr) reserve(e, k - hdr);  /* rare: 128 or more entries */
  p = (unsigned char *)e->b->p + off;
  memmove(p + k, p + hdr, e->b->n - off - hdr);
  memcpy(p, tmp, k);
  e->b->n = e->b->n + k - hdr;
}

/* Writes the pairs of t through the API (lua_next): the general way, and
   the only one when the layout check failed. */
static void apiwalk(enc *e, int t, int np, uint64_t *na, uint64_t *nh)
{
  lua_State *L = e->L;
  int k = lua_gettop(L) + 1;
  pathent *pe = &e->path[np];
  *pe = (pathent){ .kind = P_KEY, .idx = k };
  lua_pushnil(L);
  while (lua_next(L, t)) {
    if (*nh == 0 && lua_type(L, k) == LUA_TNUMBER &&
        lua_tonumber(L, k) == (double)(*na + 1)) {
      encval(e, k + 1);
      ++*na;
    } else {
      pe->kind = P_KEYOF;
      encval(e, k);
      pe->kind = P_KEY;
      encval(e, k + 1);
      ++*nh;
    }
    lua_pop(L, 1);
  }
}

/* Writes a value read in place when it is a leaf (nil, boolean, number,
   string) and returns 1; returns 0 for anything the API must push. */
static inline int encleaf(enc *e, uint64_t u)
{
  if (f_isnum(u)) {
    encnum(e, f_num(u));
  } else if (F_TOP(u) == F_TOPSTR) {
    size_t n;
    const char *s = f_str(e->fl, u, &n);
    encstrp(e, s, n);
  } else if (u == F_NIL || u == F_FALSE || u == F_TRUE) {
    put1(e, u == F_NIL ? T_NIL : u == F_TRUE ? T_TRUE : T_FALSE);
  } else {
    return 0;
  }
  return 1;
}

static void enctabp(enc *e, int t, const void *tp);

/* Encodes the value just pushed (slot top), then pops it. Lua code may run
   meanwhile (a hook, a finalizer): if it resized the table being walked,
   the pointers into it are stale, so that is an error. */
static void encpushed(enc *e, uint64_t u, const ftab *T, const ftab *was)
{
  lua_State *L = e->L;
  int top = lua_gettop(L);
  uint32_t ep = e->epoch;
  if (F_TOP(u) == F_TOPTAB) enctabp(e, top, (const void *)(uintptr_t)
                                              (u & F_GCMASK));
  else encval(e, top);
  lua_settop(L, top - 1);
  if (e->epoch != ep && (T->array != was->array || T->asize != was->asize ||
                         T->node != was->node || T->hmask != was->hmask))
    fail(e, "table changed while being encoded");
}

/* Pushes the string key k of a node. Through lua_pushlstring it would be
   hashed and compared again, and could run a GC step; the few keys that
   lead to tables (records' "list", "nested") are kept in a cache table. */
static void pushkey(enc *e, uint64_t k)
{
  lua_State *L = e->L;
  const void *g = (const void *)(uintptr_t)(k & F_GCMASK);
  unsigned i = (unsigned)(((uintptr_t)g >> 4) % KCACHE);
  if (e->kc && e->kcs[i] == g) {
    lua_rawgeti(L, e->kc, (int)i + 1);
    return;
  }
  size_t len;
  const char *s = f_str(e->fl, k, &len);
  e->epoch++;  /* allocation: a GC step may run */
  if (!e->kc) {
    lua_createtable(L, KCACHE, 0);
    lua_replace(L, e->kc = e->sud + 4);
    memset(e->kcs, 0, sizeof e->kcs);
  }
  lua_pushlstring(L, s, len);
  lua_pushvalue(L, -1);
  lua_rawseti(L, e->kc, (int)i + 1);  /* anchors what kcs[i] names */
  e->kcs[i] = lua_tostring(L, -1) - F_STRHDR;
}

/* Writes n numbers of a pure array: int32s when they all are, else
   doubles. The tight loops are why whole arrays of numbers are cheap. */
static void encpacked(enc *e, const uint64_t *a, uint32_t n)
{
  char *p = reserve(e, (size_t)n * 8 + 11);
  size_t off = e->b->n;
  unsigned char *q = (unsigned char *)p + 1;
  for (uint64_t v = n; ; v >>= 7) {
    *q++ = (unsigned char)((v & 0x7f) | (v >= 0x80 ? 0x80 : 0));
    if (v < 0x80) break;
  }
  size_t hdr = (size_t)(q - (unsigned char *)p);
  uint32_t i;
  for (i = 1; i <= n; i++) {
    double d = f_num(a[i]);
    int32_t v = (int32_t)(d >= -2147483648.0 && d <= 2147483647.0 ? d : 0);
    if ((double)v != d || (v == 0 && a[i] != 0)) break;  /* also -0.0 */
    uint32_t w = (uint32_t)v;
    q[0] = (unsigned char)w;
    q[1] = (unsigned char)(w >> 8);
    q[2] = (unsigned char)(w >> 16);
    q[3] = (unsigned char)(w >> 24);
    q += 4;
  }
  if (i > n) {
    p[0] = (char)T_AI32;
  } else {
    p[0] = (char)T_ANUM;
    q = (unsigned char *)p + hdr;
    for (i = 1; i <= n; i++, q += 8) {
      uint64_t u = a[i];
#if __BYTE_ORDER__ == __ORDER_BIG_ENDIAN__
      u = __builtin_bswap64(u);
#endif
      memcpy(q, &u, 8);
    }
  }
  e->b->n = off + (size_t)(q - (unsigned char *)p);
}

/* Writes the pairs of t reading its array and hash parts in place; returns
   0 (having written nothing) when a key is not a leaf, for apiwalk. */
static int fastwalk(enc *e, int t, const ftab *T, int hasmt, int np,
                    uint64_t *na, uint64_t *nh)
{
  const uint64_t *a = (const uint64_t *)(uintptr_t)T->array;
  const fnode *nd = (const fnode *)(uintptr_t)T->node;
  uint32_t asize = T->asize, hmask = T->hmask, n = asize ? asize - 1 : 0;
  uint64_t live = asize && a[0] != F_NIL;  /* t[0] goes as a pair */
  for (uint32_t i = 0; i <= hmask; i++) {
    if (nd[i].val == F_NIL) continue;
    uint64_t k = nd[i].key;
    if (!f_isnum(k) && F_TOP(k) != F_TOPSTR && k != F_TRUE && k != F_FALSE)
      return 0;
    live++;
  }
  while (n > 0 && a[n] == F_NIL) n--;
  if (!live && !hasmt && n >= PACKMIN) {
    uint32_t i = 1;
    while (i <= n && f_isnum(a[i])) i++;
    if (i > n) {
      e->b->n--;  /* drop the T_TAB tag */
      encpacked(e, a, n);
      *na = (uint64_t)-1;
      return 1;
    }
  }
  /* The counts are known up front: no patching, unless Lua code run by a
     child (a hook, a finalizer) cleared values meanwhile. */
  size_t off = e->b->n;
  putvar(e, n);
  putvar(e, live);
  size_t hdr = e->b->n - off;
  ftab was = *T;
  pathent *pe = &e->path[np];
  *pe = (pathent){ .kind = P_ARR, .t = T };
  for (uint32_t i = 1; i <= n; i++) {
    uint64_t u = ((const uint64_t *)(uintptr_t)T->array)[i];
    pe->idx = (int)i;
    if (!encleaf(e, u)) {
      lua_rawgeti(e->L, t, (int)i);
      encpushed(e, u, T, &was);
    }
  }
  *na = n;
  if (live && asize && a[0] != F_NIL) {
    pe->idx = 0;
    put1(e, SINT);
    if (!encleaf(e, a[0])) {
      lua_rawgeti(e->L, t, 0);
      encpushed(e, a[0], T, &was);
    }
    ++*nh;
  }
  pe->kind = P_NODE;
  for (uint32_t i = 0; i <= hmask; i++) {
    const fnode *x = &((const fnode *)(uintptr_t)T->node)[i];
    uint64_t v = x->val;
    if (v == F_NIL) continue;
    pe->n = x;
    if (!encleaf(e, x->key)) fail(e, "table changed while being encoded");
    if (!encleaf(e, v)) {
      uint64_t k = x->key;
      if (f_isnum(k)) {
        lua_pushnumber(e->L, f_num(k));
      } else if (F_TOP(k) == F_TOPSTR) {
        pushkey(e, k);
      } else {
        lua_pushboolean(e->L, k == F_TRUE);
      }
      lua_rawget(e->L, t);
      /* A GC step in lua_pushlstring may have changed t[k]: then v says
         nothing about the value pushed. */
      encpushed(e, x->val == v && T->node == was.node ? v : 0, T, &was);
    }
    ++*nh;
  }
  if (*nh != live) fixsizes(e, off, hdr, *na, *nh);
  *na = (uint64_t)-1;
  return 1;
}

static void enctab(enc *e, int t)
{
  enctabp(e, t, lua_topointer(e->L, t));
}

static void enctabp(enc *e, int t, const void *tp)
{
  lua_State *L = e->L;
  if (nfmaybe(e->S, tp) && byname(e, tp, 0)) return;
  /* Tables go through the bitmap when the layout (a 64-byte GCtab) is
     known; else through the seen map directly. */
  pslot *s = e->fl ? tlook(L, e->b, tp, e->nobj + 1)
                   : plook(L, &e->b->seen, tp, e->nobj + 1);
  if (s) {
    putref(e, s);
    return;
  }
  enter(e);
  int hasmt = e->fl ? ((const ftab *)tp)->metatable != 0 : 1;
  if (hasmt && (hasmt = lua_getmetatable(L, t))) {
    e->epoch++;  /* __index of a metatable may run */
    lua_getfield(L, -1, "__serialize");
    if (!lua_isnil(L, -1)) {
      encext(e, t, lua_gettop(L) - 1);
      return;
    }
    lua_pop(L, 1);
  }
  newid(e);
  put1(e, hasmt ? T_TABMT : T_TAB);
  uint64_t na = 0, nh = 0;
  int np = e->np++;
  if (!e->fl || !fastwalk(e, t, tp, hasmt, np, &na, &nh)) {
    size_t off = e->b->n;
    reserve(e, 2);
    e->b->n += 2;
    apiwalk(e, t, np, &na, &nh);
    fixsizes(e, off, 2, na, nh);
  }
  if (hasmt) {
    e->path[np] = (pathent){ .kind = P_MT };
    encval(e, lua_gettop(L));
    lua_pop(L, 1);
  }
  e->np--;
}

static int writer(lua_State *L, const void *p, size_t sz, void *ud)
{
  level *b = ud;
  (void)L;
  if (b->cap - b->n < sz && !grow(b, sz)) return 1;
  memcpy(b->p + b->n, p, sz);
  b->n += sz;
  return 0;
}

static void encupvals(enc *e, int f, uint32_t ord)
{
  lua_State *L = e->L;
  int nup = 0;
  while (lua_getupvalue(L, f, nup + 1)) {
    lua_pop(L, 1);
    nup++;
  }
  putvar(e, (uint64_t)nup);
  for (int u = 1; u <= nup; u++) {
    void *id = lua_upvalueid(L, f, u);
    pslot *s = plook(L, &e->b->seen, id, ord);
    if (s) {  /* shared with a closure already written */
      put1(e, T_UPREF);
      putvar(e, s->v);
      putvar(e, pfind(&e->b->seen, (const char *)id + 1)->v);
      e->hasrefs = 1;
      continue;
    }
    plook(L, &e->b->seen, (const char *)id + 1, (uint32_t)u);
    lua_getupvalue(L, f, u);
    e->path[e->np++] = (pathent){ .kind = P_UPV, .idx = f << 8 | u };
    encval(e, lua_gettop(L));
    e->np--;
    lua_pop(L, 1);
  }
}

static void encfunc(enc *e, int f)
{
  lua_State *L = e->L;
  if (byname(e, lua_topointer(L, f), 1)) return;
  if (lua_iscfunction(L, f))
    fail(e, "cannot send a C function (not found in package.loaded)");
  pslot *s = plook(L, &e->b->seen, lua_topointer(L, f), e->nobj + 1);
  if (s) {
    putref(e, s);
    return;
  }
  enter(e);
  uint32_t ord = newid(e);
  put1(e, T_FUNC);
  size_t off = e->b->n;
  reserve(e, 4);
  e->b->n += 4;
  lua_pushvalue(L, f);
  if (lua_dump(L, writer, e->b) != 0) fail(e, "cannot dump function");
  lua_pop(L, 1);
  size_t n = e->b->n - off - 4;
  if (n > 0xffffffffu) fail(e, "function too large");
  unsigned char *p = (unsigned char *)e->b->p + off;
  for (int k = 0; k < 4; k++) p[k] = (unsigned char)(n >> (8 * k));
  encupvals(e, f, ord);
}

static void encudata(enc *e, int i)
{
  lua_State *L = e->L;
  if (byname(e, lua_topointer(L, i), 1)) return;
  e->epoch++;
  if (!gethook(L, i)) fail(e, "cannot send a userdata");
  pslot *s = plook(L, &e->b->seen, lua_topointer(L, i), e->nobj + 1);
  if (s) {
    lua_pop(L, 2);
    putref(e, s);
    return;
  }
  enter(e);
  encext(e, i, lua_gettop(L) - 1);
}

/* The ffi side of cdata lives in Lua: it asks ffi.typeinfo whether a ctype
   holds pointers and names it by a declaration that ffi.typeof can parse. */
static const char cdata_lua[] =
  "local ffi, bit = require 'ffi', require 'bit'\n"
  "local typeof, sizeof, typeinfo = ffi.typeof, ffi.sizeof, ffi.typeinfo\n"
  "local band, rshift = bit.band, bit.rshift\n"
  "local i64, u64 = typeof('int64_t'), typeof('uint64_t')\n"
  "local I64, U64 = tonumber(i64), tonumber(u64)\n"
  "local plain, decl, cts = {}, {}, {}\n"
  "local function isplain(id)\n"
  "  local r = plain[id]\n"
  "  if r ~= nil then return r end\n"
  "  local ti, k = typeinfo(id), nil\n"
  "  k = ti and rshift(ti.info, 28)\n"
  "  if k == 0 or k == 5 then r = true\n"
  "  elseif k == 3 or k == 7 or k == 8 then\n"
  "    r = isplain(band(ti.info, 0xffff))\n"
  "  elseif k == 1 then\n"
  "    r = ti.size ~= nil\n"
  "    local f = ti.sib\n"
  "    while r and f do\n"
  "      local fi = typeinfo(f)\n"
  "      local fk = rshift(fi.info, 28)\n"
  "      if fk == 9 then r = isplain(band(fi.info, 0xffff))\n"
  "      else r = fk == 10 or fk == 11 end\n"
  "      f = fi.sib\n"
  "    end\n"
  "  else r = false end\n"
  "  plain[id] = r\n"
  "  return r\n"
  "end\n"
  "local function tdname(id)\n"
  "  for t = 1, 1e6 do\n"
  "    local ti = typeinfo(t)\n"
  "    if not ti then return nil end\n"
  "    if rshift(ti.info, 28) == 7 and band(ti.info, 0xffff) == id\n"
  "       and ti.name then return ti.name end\n"
  "  end\n"
  "end\n"
  "local function name(ct)\n"
  "  local anon\n"
  "  local d = tostring(ct):sub(7, -2):gsub('(%a+) (%d+)', function(k, n)\n"
  "    if k == 'struct' or k == 'union' or k == 'enum' then\n"
  "      local t = tdname(tonumber(n))\n"
  "      if t then return t end\n"
  "      anon = true\n"
  "    end\n"
  "  end)\n"
  "  if anon then return false end\n"
  "  return d\n"
  "end\n"
  "local function describe(cd)\n"
  "  local ct = typeof(cd)\n"
  "  local id = tonumber(ct)\n"
  "  if id == I64 then return 1 elseif id == U64 then return 2 end\n"
  "  local d = decl[id]\n"
  "  if d == nil then\n"
  "    if isplain(id) then d = name(ct) else d = 0 end\n"
  "    decl[id] = d\n"
  "  end\n"
  "  if d == 0 then\n"
  "    return 0, 'cannot send cdata with pointers (' .. tostring(ct) .. ')'\n"
  "  elseif not d then\n"
  "    return 0, 'cannot send cdata of anonymous ' .. tostring(ct) ..\n"
  "      ' (name it with ffi.cdef typedef or struct)'\n"
  "  end\n"
  "  local size = sizeof(cd)\n"
  "  if band(typeinfo(id).info, 0x100000) == 0 then return 3, d, 0, size end\n"
  "  local s0, s1 = sizeof(ct, 0), sizeof(ct, 1)\n"
  "  return 3, d, (size - s0) / (s1 - s0) + 1, size\n"
  "end\n"
  "local function make(kind, d, nelem, size)\n"
  "  if kind == 1 then return i64() elseif kind == 2 then return u64() end\n"
  "  local ct = cts[d]\n"
  "  if not ct then\n"
  "    local ok, t = false, nil\n"
  "    if d:find('^[%w_ %[%]%?]+$') then ok, t = pcall(typeof, d) end\n"
  "    if not ok or not isplain(tonumber(t)) then\n"
  "      return nil, 'unknown or not plain-data ctype'\n"
  "    end\n"
  "    ct = t\n"
  "    cts[d] = t\n"
  "  end\n"
  "  local ok, sz\n"
  "  local vla = band(typeinfo(tonumber(ct)).info, 0x100000) ~= 0\n"
  "  if vla ~= (nelem > 0) then return nil, 'cdata size mismatch' end\n"
  "  if vla then ok, sz = pcall(sizeof, ct, nelem - 1)\n"
  "  else ok, sz = true, sizeof(ct) end\n"
  "  if not ok or sz ~= size then return nil, 'cdata size mismatch' end\n"
  "  if nelem > 0 then return ct(nelem - 1) end\n"
  "  return ct()\n"
  "end\n"
  "return describe, make\n";

/* Pushes the cdata helper in env slot which (loading it on first use). */
static void cdhelper(lua_State *L, int env, int which)
{
  lua_rawgeti(L, env, which);
  if (!lua_isnil(L, -1)) return;
  lua_pop(L, 1);
  if (luaL_loadbuffer(L, cdata_lua, sizeof cdata_lua - 1, "=pcrun.ser"))
    lua_error(L);
  lua_call(L, 0, 2);
  lua_rawseti(L, env, E_CMAKE);
  lua_rawseti(L, env, E_CDESC);
  lua_rawgeti(L, env, which);
}

static void enccdata(enc *e, int i)
{
  lua_State *L = e->L;
  e->epoch++;
  cdhelper(L, getenv_e(e), E_CDESC);
  lua_pushvalue(L, i);
  lua_call(L, 1, 4);
  int kind = (int)lua_tointeger(L, -4);
  const unsigned char *p = lua_topointer(L, i);
  if (kind == 0) fail(e, lua_tostring(L, -3));
  if (kind == 1 || kind == 2) {
    put1(e, kind == 1 ? T_I64 : T_U64);
    uint64_t v;
    memcpy(&v, p, 8);
    put64(e, v);
  } else {
    pslot *s = plook(L, &e->b->seen, p, e->nobj + 1);
    if (s) {
      putref(e, s);
    } else {
      size_t n, size = (size_t)lua_tonumber(L, -1);
      const char *d = lua_tolstring(L, -3, &n);
      newid(e);
      put1(e, T_CDATA);
      putstr(e, d, n);
      putvar(e, (uint64_t)lua_tonumber(L, -2));
      putstr(e, (const char *)p, size);
    }
  }
  lua_pop(L, 4);
}

static void encval(enc *e, int i)
{
  lua_State *L = e->L;
  switch (lua_type(L, i)) {
  case LUA_TNIL: put1(e, T_NIL); break;
  case LUA_TBOOLEAN: put1(e, lua_toboolean(L, i) ? T_TRUE : T_FALSE); break;
  case LUA_TNUMBER: encnum(e, lua_tonumber(L, i)); break;
  case LUA_TSTRING: encstr(e, i); break;
  case LUA_TTABLE: enctab(e, i); break;
  case LUA_TFUNCTION: encfunc(e, i); break;
  case LUA_TUSERDATA: encudata(e, i); break;
  case TCDATA: enccdata(e, i); break;
  case LUA_TTHREAD: fail(e, "cannot send a coroutine"); break;
  case LUA_TLIGHTUSERDATA: fail(e, "cannot send a light userdata"); break;
  default: fail(e, "cannot send this value");
  }
}

/* Inserts the back-reference count after the header, once at the end. */
static void finishrefs(enc *e)
{
  unsigned char tmp[10];
  size_t k = 0;
  uint64_t v = e->nobj;
  for (; v >= 0x80; v >>= 7) tmp[k++] = (unsigned char)(v | 0x80);
  tmp[k++] = (unsigned char)v;
  reserve(e, k);
  char *p = e->b->p;
  memmove(p + 3 + k, p + 3, e->b->n - 3);
  memcpy(p + 3, tmp, k);
  p[2] = F_REFS;
  e->b->n += k;
}

/* Picks the buffer level for a new encode. A level belongs to an encode
   in progress only while that encode's C frame is an ancestor of ours (the
   C stack grows down; LuaJIT runs coroutines on the same C stack), so a
   level left behind by an encode that raised an error is free again. This
   is what lets an encode run without a lua_pcall around it: the buffers
   and maps are owned by the state userdata, and nothing else can leak. */
static level *takelevel(lua_State *L, sstate *S, uintptr_t here)
{
  for (int i = 0; i < MAXNEST; i++) {
    if (S->lv[i].frame <= here) {
      S->lv[i].frame = here;
      return &S->lv[i];
    }
  }
  luaL_error(L, "pcrun.encode: encode nested more than %d deep", MAXNEST);
  return NULL;
}

/* Encodes the value at idx (absolute) with the state S at slot sud. */
static const char *encode(lua_State *L, sstate *S, int sud, int idx,
                          size_t *len, const char *root)
{
  enc ctx, *e = &ctx;  /* 24 KB of path: fine on the C stack */
  uintptr_t here = (uintptr_t)__builtin_frame_address(0);
  level *b = takelevel(L, S, here);
  e->L = L;
  e->S = S;
  e->b = b;
  e->root = root;
  e->fl = S->fl.ok ? &S->fl : NULL;
  e->nobj = e->epoch = 0;
  e->np = e->hasrefs = e->refreshed = e->env = e->nm = e->anch = 0;
  e->kc = 0;
  e->sud = sud;
  lua_settop(L, sud + 4);  /* slots for env, names, anchors, key cache */
  if (!S->names_ok) {
    namesbuild(L, S, getenv_e(e));
    lua_replace(L, e->nm = sud + 2);
  }
  if (b->cap > (1u << 20) && b->n < b->cap / 4) {  /* release a big one */
    free(b->p);
    b->p = NULL;
    b->cap = 0;
  }
  b->n = 0;
  pclear(&b->seen);
  tclear(&b->tabs);
  char *p = reserve(e, 3);
  p[0] = (char)MAGIC;
  p[1] = PCR_SER_VERSION;
  p[2] = 0;
  b->n = 3;
  encval(e, idx);
  if (e->hasrefs) finishrefs(e);
  b->frame = 0;
  *len = b->n;
  return b->p;
}

const char *pcr__ser_encode_named(lua_State *L, int idx, size_t *len,
                                  const char *root)
{
  if (idx < 0 && idx > LUA_REGISTRYINDEX) idx = lua_gettop(L) + idx + 1;
  int top = lua_gettop(L);
  luaL_checkstack(L, 16, "pcrun.encode");
  sstate *S = getstate(L);
  const char *p = encode(L, S, top + 1, idx, len, root ? root : "value");
  lua_settop(L, top);
  return p;
}

const char *pcr__ser_encode(lua_State *L, int idx, size_t *len)
{
  return pcr__ser_encode_named(L, idx, len, NULL);
}

/* -- Decoder -------------------------------------------------------------- */

typedef struct dec {
  lua_State *L;
  const unsigned char *p, *s, *e;
  int flags, depth;
  int refs;          /* stack slot of the objects table; 0 without */
  const flayout *fl; /* NULL until a packed array needs it */
  uint32_t nobj, maxobj;
} dec;

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

/* Pushes the state's environment table (rare paths only: a decode that
   keeps no slot for it costs less). */
static int pushenv(dec *d)
{
  getstate(d->L);
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
    *slot = tag == T_TRUE ? F_TRUE : F_FALSE;
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

static void dectab(dec *d, int hasmt)
{
  lua_State *L = d->L;
  size_t na = rdlen(d, 1), nh = rdlen(d, 2);
  denter(d);
  lua_createtable(L, (int)(na < 0x3ffffff ? na : 0x3ffffff),
                  (int)(nh < 0x3ffffff ? nh : 0x3ffffff));
  reg(d, newobj(d));
  int t = lua_gettop(L);
  const ftab *T = na ? lua_topointer(L, t) : NULL;
  const flayout *fl = na ? getlayout(d) : NULL;
  uint64_t *a = fl && T->asize == na + 1 ? (uint64_t *)(uintptr_t)T->array
                                         : NULL;
  for (size_t i = 1; i <= na; i++) {
    if (a && decleaf(d, fl, &a[i])) continue;
    decval(d);
    lua_rawseti(L, t, (int)i);
    /* A __deserialize hook handed this table (a cycle) may resize it. */
    if (a) a = T->asize == na + 1 ? (uint64_t *)(uintptr_t)T->array : NULL;
  }
  for (size_t i = 0; i < nh; i++) {
    unsigned tag = d->p < d->e ? *d->p : 0;
    if (tag >= SSTR && tag < SINT) {  /* a short string key: no checks */
      size_t n = tag - SSTR;
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
    sstate *S = getstate(d->L);
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
  size_t n = rdlen(d, (size_t)w);
  const unsigned char *p = d->p;
  int big = n >= 0x3ffffff;
  lua_createtable(L, big ? 0x3ffffff : (int)n, 0);
  reg(d, newobj(d));
  d->p += n * (size_t)w;
  const ftab *T = n ? lua_topointer(L, -1) : NULL;
  const flayout *fl = n ? getlayout(d) : NULL;
  if (fl && !big && T->asize == n + 1) {
    uint64_t *a = (uint64_t *)(uintptr_t)T->array;
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

static void funcsrefused(dec *d)
{
  dfail(d, "functions refused: the input may hold untrusted bytecode "
        "(pass {trusted = true} to allow them)");
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
  if (!(d->flags & PCR_SER_TRUSTED)) funcsrefused(d);
  need(d, 4);
  size_t n = d->p[0] | (size_t)d->p[1] << 8 | (size_t)d->p[2] << 16 |
             (size_t)d->p[3] << 24;
  d->p += 4;
  need(d, n);
  denter(d);
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
static void decmod(dec *d)
{
  lua_State *L = d->L;
  size_t n;
  const char *s = rdstr(d, &n);
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

static void decname(dec *d, int tag)
{
  lua_State *L = d->L;
  size_t n;
  const char *s;
  if (tag == T_TYPE) {
    s = rdstr(d, &n);
    lua_rawgeti(L, pushenv(d), E_TYPES);
    lua_remove(L, -2);
    lua_pushlstring(L, s, n);
    lua_rawget(L, -2);
    lua_remove(L, -2);
    if (lua_isnil(L, -1))
      luaL_error(L, "pcrun.decode: unknown type '%s' (register it with "
                 "pcrun.register_type)", dname(L, s, n));
    return;
  }
  decmod(d);
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
  if (lua_isfunction(L, -1) && !(d->flags & PCR_SER_TRUSTED))
    funcsrefused(d);
}

static void decext(dec *d)
{
  lua_State *L = d->L;
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
  lua_getfield(L, -1, "__deserialize");
  if (!lua_isfunction(L, -1))
    luaL_error(L, "pcrun.decode: type '%s' has no __deserialize",
               dname(L, s, n));
  lua_replace(L, -3);
  lua_pop(L, 1);
  decval(d);
  lua_call(L, 1, 1);
  reg(d, ord);
  d->depth--;
}

static void deccdata(dec *d, int tag)
{
  lua_State *L = d->L;
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
  cdhelper(L, pushenv(d), E_CMAKE);
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
    size_t n;
    const char *s = rdstr(d, &n);
    uint32_t ord = newobj(d);
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

static void decode(lua_State *L, const flayout *fl, const char *buf,
                   size_t len, int flags)
{
  dec d = { .L = L, .p = (const unsigned char *)buf,
            .s = (const unsigned char *)buf,
            .e = (const unsigned char *)buf + len, .flags = flags, .fl = fl };
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
    lua_createtable(L, (int)n, 0);
    d.refs = base + 1;
  }
  decval(&d);
  if (d.p != d.e) dfail(&d, "corrupt input (trailing bytes)");
  if (refs) lua_remove(L, base + 1);
}

void pcr__ser_decode(lua_State *L, const char *buf, size_t len, int flags)
{
  decode(L, NULL, buf, len, flags);
}

/* -- Lua API -------------------------------------------------------------- */

void pcr__ser_names_reset(lua_State *L)
{
  sstate *S = getstate(L);
  S->names_ok = 0;
  lua_pop(L, 1);
}

/* The state is upvalue 1 of the Lua-facing functions: no registry lookup
   per call. */
static int ser_encode(lua_State *L)
{
  size_t n;
  const char *root = lua_gettop(L) < 2 ? "value" :
                     luaL_optstring(L, 2, "value");
  lua_settop(L, 1);
  lua_pushvalue(L, lua_upvalueindex(1));
  const char *p = encode(L, lua_touserdata(L, 2), 2, 1, &n, root);
  lua_pushlstring(L, p, n);
  return 1;
}

static int ser_decode(lua_State *L)
{
  size_t n;
  int flags = 0;
  if (lua_type(L, 1) != LUA_TSTRING)
    return luaL_error(L, "pcrun.decode: expected a string, got %s",
                      luaL_typename(L, 1));
  const char *s = lua_tolstring(L, 1, &n);
  if (lua_istable(L, 2)) {
    lua_getfield(L, 2, "trusted");
    lua_getfield(L, 2, "bytecode");
    if (lua_toboolean(L, -1) || lua_toboolean(L, -2)) flags = PCR_SER_TRUSTED;
  } else if (!lua_isnoneornil(L, 2)) {
    return luaL_error(L, "pcrun.decode: options must be a table, got %s",
                      luaL_typename(L, 2));
  }
  decode(L, &((sstate *)lua_touserdata(L, lua_upvalueindex(1)))->fl, s, n,
         flags);
  return 1;
}

static int ser_register_type(lua_State *L)
{
  const char *name = lua_type(L, 1) == LUA_TSTRING ? lua_tostring(L, 1) : "";
  if (!*name)
    return luaL_error(L, "pcrun.register_type: name must be a non-empty "
                      "string");
  if (!lua_istable(L, 2))
    return luaL_error(L, "pcrun.register_type: '%s': metatable must be a "
                      "table, got %s", name, luaL_typename(L, 2));
  lua_getfield(L, 2, "__serialize");
  lua_getfield(L, 2, "__deserialize");
  if (!lua_isnil(L, -2) && !lua_isfunction(L, -1))
    return luaL_error(L, "pcrun.register_type: '%s' has __serialize but no "
                      "__deserialize function", name);
  lua_settop(L, 2);
  sstate *S = getstate(L);
  lua_getfenv(L, -1);
  lua_rawgeti(L, -1, E_TYPES);
  lua_pushvalue(L, 1);
  lua_pushvalue(L, 2);
  lua_rawset(L, -3);
  S->names_ok = 0;
  lua_settop(L, 2);
  return 1;
}

static int ser_refresh_names(lua_State *L)
{
  pcr__ser_names_reset(L);
  return 0;
}

void pcr__ser_open(lua_State *L)
{
  static const luaL_Reg fns[] = {
    { "encode", ser_encode },
    { "decode", ser_decode },
    { "register_type", ser_register_type },
    { "refresh_names", ser_refresh_names },
    { NULL, NULL }
  };
  getstate(L);
  luaL_setfuncs(L, fns, 1);
  lua_pushinteger(L, PCR_SER_VERSION);
  lua_setfield(L, -2, "format_version");
}
