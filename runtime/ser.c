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

/* -- Format --------------------------------------------------------------- */

#define MAGIC 0xB7
#define F_REFS 0x01        /* header flag: back-references occur */
#define TCDATA 10          /* lua_type() of LuaJIT cdata */
#define SSTR 0x80          /* 0x80..0xBF: string of 0..63 bytes */
#define SINT 0xC0          /* 0xC0..0xFF: integer 0..63 */
#define SHORT 64           /* strings this long or longer may be shared */
#define MAXNEST 8          /* encodes running inside __serialize hooks */

enum {
  T_NIL, T_FALSE, T_TRUE, T_NUM, T_INT, T_STR, T_TAB, T_TABMT, T_FUNC,
  T_REF, T_UPREF, T_MOD, T_FIELD, T_TYPE, T_EXT, T_I64, T_U64, T_CDATA
};

/* Slots of the state's environment table. */
enum { E_ENCFN = 1, E_NM, E_TYPES, E_CDESC, E_CMAKE };

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

/* -- Per-state data ------------------------------------------------------- */

typedef struct level {  /* what one encode (nested or not) writes into */
  char *p;
  size_t n, cap;
  pmap seen;
} level;

typedef struct sstate {
  level lv[MAXNEST];
  int nest;       /* encodes in progress */
  int names_ok;   /* names map matches package.loaded and the types */
  int nloaded;    /* entries of package.loaded when it was built */
  pmap names;     /* module/field/type value -> 4 * index + kind */
} sstate;

static int state_gc(lua_State *L)
{
  sstate *S = lua_touserdata(L, 1);
  for (int i = 0; i < MAXNEST; i++) {
    free(S->lv[i].p);
    free(S->lv[i].seen.s);
  }
  free(S->names.s);
  memset(S, 0, sizeof *S);
  return 0;
}

static int encmain(lua_State *L);

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
  lua_createtable(L, 0, 1);
  lua_pushcfunction(L, state_gc);
  lua_setfield(L, -2, "__gc");
  lua_setmetatable(L, -2);
  lua_createtable(L, 5, 0);
  lua_pushcfunction(L, encmain);
  lua_rawseti(L, -2, E_ENCFN);
  lua_newtable(L);
  lua_rawseti(L, -2, E_TYPES);
  lua_setfenv(L, -2);
  lua_pushlightuserdata(L, (void *)&statekey);
  lua_pushvalue(L, -2);
  lua_rawset(L, LUA_REGISTRYINDEX);
  return S;
}

/* -- Reverse index of package.loaded and registered types ----------------- */

static void nameadd(lua_State *L, sstate *S, int nm, int v, int kind,
                    const char *a, const char *b)
{
  int i = (int)lua_objlen(L, nm) / 3 + 1;
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

enum { P_KEY, P_KEYOF, P_MT, P_UPV, P_SER };

typedef struct pathent {
  int kind, idx;
} pathent;

typedef struct encarg {
  sstate *S;
  const char *root;
  const char *buf;
  size_t len;
} encarg;

typedef struct enc {
  lua_State *L;
  sstate *S;
  level *b;
  const char *root;
  uint32_t nobj;     /* shareable objects written so far */
  int np;            /* entries in path */
  int hasrefs, refreshed;
  int env, nm, anch; /* stack slots: state env, names list, anchors */
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

static void addpath(enc *e, luaL_Buffer *lb, int j)
{
  lua_State *L = e->L;
  pathent *p = &e->path[j];
  switch (p->kind) {
  case P_KEY: addkey(lb, L, p->idx); break;
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

static void encstr(enc *e, int i)
{
  size_t n;
  const char *s = lua_tolstring(e->L, i, &n);
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

/* Writes the name of a module, module field or registered type when the
   object at i has one, refreshing the index at most once per encode. */
static int byname(enc *e, int i, int refresh)
{
  lua_State *L = e->L;
  pslot *s = pfind(&e->S->names, lua_topointer(L, i));
  if (!s && refresh && !e->refreshed) {
    e->refreshed = 1;
    if (loadedcount(L) != e->S->nloaded) {
      namesbuild(L, e->S, e->env);
      lua_replace(L, e->nm);
      s = pfind(&e->S->names, lua_topointer(L, i));
    }
  }
  if (!s) return 0;
  int k = (int)(s->v >> 2), kind = (int)(s->v & 3);
  size_t n;
  put1(e, kind == K_MOD ? T_MOD : kind == K_FIELD ? T_FIELD : T_TYPE);
  lua_rawgeti(L, e->nm, 3 * k - 1);
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
  if (s && (s->v & 3) == K_TYPE) {
    lua_rawgeti(L, e->nm, 3 * (int)(s->v >> 2) - 1);
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
  pfind(&e->b->seen, lua_topointer(L, obj))->v = ord | INPROG;
  lua_pushvalue(L, obj);
  lua_call(L, 1, 1);
  if (!e->anch) {
    lua_newtable(L);
    lua_replace(L, e->anch = e->nm + 1);
  }
  lua_pushvalue(L, -1);  /* the result must outlive the seen map entry */
  lua_rawseti(L, e->anch, (int)lua_objlen(L, e->anch) + 1);
  e->path[e->np++] = (pathent){ P_SER, 0 };
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

static void patchsizes(enc *e, size_t off, uint64_t na, uint64_t nh)
{
  unsigned char *p = (unsigned char *)e->b->p + off;
  if (na < 128 && nh < 128) {
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
  reserve(e, k - 2);  /* rare: 128 or more entries */
  p = (unsigned char *)e->b->p + off;
  memmove(p + k, p + 2, e->b->n - off - 2);
  memcpy(p, tmp, k);
  e->b->n += k - 2;
}

static void enctab(enc *e, int t)
{
  lua_State *L = e->L;
  if (e->S->names.n && byname(e, t, 0)) return;
  pslot *s = plook(L, &e->b->seen, lua_topointer(L, t), e->nobj + 1);
  if (s) {
    putref(e, s);
    return;
  }
  enter(e);
  int hasmt = lua_getmetatable(L, t);
  if (hasmt) {
    lua_getfield(L, -1, "__serialize");
    if (!lua_isnil(L, -1)) {
      encext(e, t, lua_gettop(L) - 1);
      return;
    }
    lua_pop(L, 1);
  }
  newid(e);
  put1(e, hasmt ? T_TABMT : T_TAB);
  size_t off = e->b->n;
  reserve(e, 2);
  e->b->n += 2;
  uint64_t na = 0, nh = 0;
  int np = e->np++, k = lua_gettop(L) + 1;
  pathent *pe = &e->path[np];
  *pe = (pathent){ P_KEY, k };
  lua_pushnil(L);
  while (lua_next(L, t)) {
    if (nh == 0 && lua_type(L, k) == LUA_TNUMBER &&
        lua_tonumber(L, k) == (double)(na + 1)) {
      encval(e, k + 1);
      na++;
    } else {
      pe->kind = P_KEYOF;
      encval(e, k);
      pe->kind = P_KEY;
      encval(e, k + 1);
      nh++;
    }
    lua_pop(L, 1);
  }
  patchsizes(e, off, na, nh);
  if (hasmt) {
    e->path[np] = (pathent){ P_MT, 0 };
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
    e->path[e->np++] = (pathent){ P_UPV, f << 8 | u };
    encval(e, lua_gettop(L));
    e->np--;
    lua_pop(L, 1);
  }
}

static void encfunc(enc *e, int f)
{
  lua_State *L = e->L;
  if (byname(e, f, 1)) return;
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
  if (byname(e, i, 1)) return;
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
  cdhelper(L, e->env, E_CDESC);
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

/* Runs under lua_pcall: 1 value, 2 encarg, 3 state env. */
static int encmain(lua_State *L)
{
  encarg *a = lua_touserdata(L, 2);
  sstate *S = a->S;
  enc ctx, *e = &ctx;  /* about 8 KB of path: fine on the C stack */
  e->L = L;
  e->S = S;
  e->b = &S->lv[S->nest - 1];
  e->root = a->root;
  e->nobj = 0;
  e->np = e->hasrefs = e->refreshed = e->anch = 0;
  e->env = 3;
  e->nm = 4;
  lua_settop(L, 5);
  if (!S->names_ok) namesbuild(L, S, 3);
  else lua_rawgeti(L, 3, E_NM);
  lua_replace(L, 4);
  level *b = e->b;
  if (b->cap > (1u << 20) && b->n < b->cap / 4) {  /* release a big one */
    free(b->p);
    b->p = NULL;
    b->cap = 0;
  }
  b->n = 0;
  pclear(&b->seen);
  char *p = reserve(e, 3);
  p[0] = (char)MAGIC;
  p[1] = PCR_SER_VERSION;
  p[2] = 0;
  b->n = 3;
  encval(e, 1);
  if (e->hasrefs) finishrefs(e);
  return 0;
}

const char *pcr__ser_encode_named(lua_State *L, int idx, size_t *len,
                                  const char *root)
{
  if (idx < 0 && idx > LUA_REGISTRYINDEX) idx = lua_gettop(L) + idx + 1;
  luaL_checkstack(L, 8, "pcrun.encode");
  sstate *S = getstate(L);
  if (S->nest >= MAXNEST)
    luaL_error(L, "pcrun.encode: encode nested more than %d deep", MAXNEST);
  lua_getfenv(L, -1);
  lua_rawgeti(L, -1, E_ENCFN);
  lua_pushvalue(L, idx);
  encarg a = { .S = S, .root = root ? root : "value" };
  lua_pushlightuserdata(L, &a);
  lua_pushvalue(L, -4);
  S->nest++;
  int rc = lua_pcall(L, 3, 0, 0);
  S->nest--;
  if (rc) lua_error(L);
  level *b = &S->lv[S->nest];
  lua_pop(L, 2);
  *len = b->n;
  return b->p;
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
  int refs, env;     /* stack slots; 0 until needed */
  int envslot;
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

static int getenv_(dec *d)
{
  if (!d->env) {
    getstate(d->L);
    lua_getfenv(d->L, -1);
    lua_replace(d->L, d->envslot);
    lua_pop(d->L, 1);
    d->env = d->envslot;
  }
  return d->env;
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
  if (!lua_checkstack(d->L, 8)) dfail(d, "Lua stack overflow");
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
  for (size_t i = 1; i <= na; i++) {
    decval(d);
    lua_rawseti(L, t, (int)i);
  }
  for (size_t i = 0; i < nh; i++) {
    decval(d);
    if (lua_isnil(L, -1) || (lua_type(L, -1) == LUA_TNUMBER &&
                             lua_tonumber(L, -1) != lua_tonumber(L, -1)))
      dfail(d, "corrupt input (nil or NaN key)");
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
    lua_rawgeti(L, getenv_(d), E_TYPES);
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
  lua_rawgeti(L, getenv_(d), E_TYPES);
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
  cdhelper(L, getenv_(d), E_CMAKE);
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
  default:
    luaL_error(L, "pcrun.decode: corrupt input (bad tag 0x%s at offset %d)",
               lua_pushfstring(L, "%c%c", "0123456789abcdef"[tag >> 4],
                               "0123456789abcdef"[tag & 15]),
               (int)(d->p - d->s - 1));
  }
}

void pcr__ser_decode(lua_State *L, const char *buf, size_t len, int flags)
{
  dec d = { .L = L, .p = (const unsigned char *)buf,
            .s = (const unsigned char *)buf,
            .e = (const unsigned char *)buf + len, .flags = flags };
  luaL_checkstack(L, 8, "pcrun.decode");
  if (len < 3 || d.p[0] != MAGIC)
    luaL_error(L, "pcrun.decode: not a pcrun encoding (bad header)");
  if (d.p[1] != PCR_SER_VERSION)
    luaL_error(L, "pcrun.decode: unsupported format version %d (this build "
               "reads %d)", (int)d.p[1], PCR_SER_VERSION);
  if (d.p[2] & ~F_REFS) dfail(&d, "corrupt input (bad header flags)");
  int refs = d.p[2] & F_REFS, base = lua_gettop(L);
  d.p += 3;
  d.maxobj = (uint32_t)(len > 0x7fffffff ? 0x7fffffff : len);
  lua_pushnil(L);  /* slot for the state env */
  d.envslot = base + 1;
  if (refs) {
    uint64_t n = rdvar(&d);
    if (n > (uint64_t)(d.e - d.p)) dfail(&d, "corrupt input (bad count)");
    lua_createtable(L, (int)n, 0);
    d.refs = base + 2;
  }
  decval(&d);
  if (d.p != d.e) dfail(&d, "corrupt input (trailing bytes)");
  lua_replace(L, base + 1);
  lua_settop(L, base + 1);
}

/* -- Lua API -------------------------------------------------------------- */

void pcr__ser_names_reset(lua_State *L)
{
  sstate *S = getstate(L);
  S->names_ok = 0;
  lua_pop(L, 1);
}

static int ser_encode(lua_State *L)
{
  size_t n;
  const char *root = luaL_optstring(L, 2, "value");
  lua_settop(L, 1);
  const char *p = pcr__ser_encode_named(L, 1, &n, root);
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
  pcr__ser_decode(L, s, n, flags);
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
  luaL_setfuncs(L, fns, 0);
  lua_pushinteger(L, PCR_SER_VERSION);
  lua_setfield(L, -2, "format_version");
  getstate(L);
  lua_pop(L, 1);
}
