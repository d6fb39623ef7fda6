/* ser_enc.c -- the encoder: Lua values into the tagged bytes of
   docs/format.md, with the tables-seen bitmap that finds sharing and
   cycles. pcr__ser_encode*() in ser.h are its entry points. */
#include <math.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <lua.h>
#include <lauxlib.h>

#include "ser_int.h"

/* -- Tables met by one encode -------------------------------------------- */

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
  /* The chunks assigned stay assigned (their bits are all clear now), so
     the next encode of tables nearby finds them at once; unless the
     encodes have spread over much address space. */
  if (t->used > 64) {
    t->used = 0;
    t->last = NULL;
    pcr__ser_pclear(&t->dir);
  }
}

void pcr__ser_tfree(tseen *t)
{
  for (uint32_t i = 0; i < t->nchunk; i++) free(t->chunk[i]);
  free(t->chunk);
  free(t->list);
  free(t->dir.s);
}

/* Returns the bitmap of chunk number key (setting *idx). */
static uint64_t *tchunk(lua_State *L, tseen *t, uintptr_t key, uint32_t *idx)
{
  if (t->last && t->lastkey == key) {
    *idx = t->lastidx;
    return t->last;
  }
  const void *k = (const void *)((key << 4) | 8);  /* never 0 */
  pslot *s = pcr__ser_pfind(&t->dir, k);
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
    pcr__ser_plook(L, &t->dir, k, i + 1);
  }
  t->lastkey = key;
  t->lastidx = *idx = i;
  return t->last = t->chunk[i];
}

/* Puts the listed tables not yet in the seen map there. */
static void tflush(lua_State *L, tseen *t, pmap *seen)
{
  for (; t->flushed < t->n; t->flushed++)
    pcr__ser_plook(L, seen, t->list[t->flushed].p, t->list[t->flushed].id);
}

/* Records table p as object id and returns NULL, or returns its slot in
   the seen map when this encode met it already. A bit stands for 1 << sh
   bytes, the size of a GCtab. */
static pslot *tlook(lua_State *L, level *b, const void *p, uint32_t id,
                    int sh)
{
  tseen *t = &b->tabs;
  uintptr_t a = (uintptr_t)p >> sh;
  uint32_t ci, bit = (uint32_t)a % CBITS;
  uint64_t *w = tchunk(L, t, a / CBITS, &ci) + (bit >> 6),
           m = 1ull << (bit & 63);
  if (*w & m) {
    tflush(L, t, &b->seen);
    return pcr__ser_plook(L, &b->seen, p, id);
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

/* -- Encoder -------------------------------------------------------------- */

/* A path entry names how the encoder got from one level to the next: a
   key on the stack (P_KEY, idx is its slot), an array slot read in place
   (P_ARR, idx is the index) or a hash node read in place (P_NODE). */
enum { P_KEY, P_KEYOF, P_MT, P_UPV, P_SER, P_ARR, P_NODE };

typedef struct pathent {
  int kind, idx;
  const void *t;      /* P_NODE: the table (a GCtab) and the node */
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
  int flags;         /* PCR_SER_MSG, PCR_SER_REMOTE: for hooks and caps */
  int sud, env, nm, anch; /* stack slots: state, its env, names, anchors */
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
  int g = f->gc64, b = 0;
  const fnode *nd = (const fnode *)(uintptr_t)f_tnode(g, p->t);
  if (n < nd || n > nd + f_thmask(g, p->t) || f_isnil(g, n->val)) {
    lua_pushliteral(L, "?");
  } else if (f_isnum(g, n->key)) {
    lua_pushnumber(L, f_num(n->key));
  } else if (f_is(g, n->key, F_TSTR)) {
    const char *s = f_str(g, f, n->key, &len);
    lua_pushlstring(L, s, len);
  } else {
    f_isbool(g, n->key, &b);
    lua_pushboolean(L, b);
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
  pslot *sl = pcr__ser_plook(e->L, &e->b->seen, s, e->nobj + 1);
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
  pslot *s = pcr__ser_pfind(&e->S->names, ptr);
  if (!s && refresh && !e->refreshed) {
    e->refreshed = 1;
    if (pcr__ser_loadedcount(L) != e->S->nloaded) {
      e->epoch++;
      pcr__ser_namesbuild(L, e->S, getenv_e(e));
      e->nm = e->sud + 2;
      lua_replace(L, e->nm);
      s = pcr__ser_pfind(&e->S->names, ptr);
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
  pslot *s = pcr__ser_pfind(&e->S->names, lua_topointer(L, mt));
  e->epoch++;
  if (s && (s->v & 3) == K_TYPE) {
    lua_rawgeti(L, getnm(e), 3 * (int)(s->v >> 2) - 1);
  } else {
    lua_getfield(L, mt, "__name");
  }
  name = lua_tolstring(L, -1, &n);
  if (lua_type(L, -1) != LUA_TSTRING)
    fail(e, "__serialize without __name (use pcrun.register_type)");
  if (e->flags & PCR_SER_REMOTE) {  /* for another node (cluster) */
    lua_rawgeti(L, getenv_e(e), E_CAPS);
    lua_pushvalue(L, mt);
    lua_rawget(L, -2);
    int cap = lua_toboolean(L, -1);
    lua_pop(L, 2);
    if (cap) {
      char m[160];
      snprintf(m, sizeof m, "cannot send a %.100s to another node", name);
      fail(e, m);
    }
  }
  uint32_t ord = newid(e);
  put1(e, T_EXT);
  putstr(e, name, n);
  lua_pop(L, 1);
  tflush(L, &e->b->tabs, &e->b->seen);  /* a table may be listed only */
  pcr__ser_pfind(&e->b->seen, lua_topointer(L, obj))->v = ord | INPROG;
  lua_pushvalue(L, obj);
  int na = 1 + pcr__ser_pushflags(L, -2, e->flags);
  /* A hook that refuses its value (a pool) says why; its message gets
     the path. */
  if (lua_pcall(L, na, 1, 0) != 0) {
    if (lua_type(L, -1) != LUA_TSTRING) lua_error(L);
    fail(e, lua_tostring(L, -1));
  }
  if (!e->anch) {
    lua_newtable(L);
    lua_replace(L, e->anch = e->sud + 3);
  }
  lua_pushvalue(L, -1);  /* the result must outlive the seen map entry */
  lua_rawseti(L, e->anch, (int)lua_objlen(L, e->anch) + 1);
  e->path[e->np++] = (pathent){ .kind = P_SER };
  encval(e, lua_gettop(L));
  e->np--;
  pcr__ser_pfind(&e->b->seen, lua_topointer(L, obj))->v = ord;
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
FI int encleaf(enc *e, uint64_t u, int g)
{
  int b;
  if (f_isnum(g, u)) {
    encnum(e, f_num(u));
  } else if (f_is(g, u, F_TSTR)) {
    size_t n;
    const char *s = f_str(g, e->fl, u, &n);
    encstrp(e, s, n);
  } else if (f_isnil(g, u)) {
    put1(e, T_NIL);
  } else if (f_isbool(g, u, &b)) {
    put1(e, b ? T_TRUE : T_FALSE);
  } else {
    return 0;
  }
  return 1;
}

static void enctabp(enc *e, int t, const void *tp);

/* Encodes the value just pushed (slot top), then pops it. Lua code may run
   meanwhile (a hook, a finalizer): if it resized the table being walked,
   the pointers into it are stale, so that is an error. */
FI void encpushed(enc *e, uint64_t u, const void *T, const fshape *was,
                  int g)
{
  lua_State *L = e->L;
  int top = lua_gettop(L);
  uint32_t ep = e->epoch;
  if (f_is(g, u, F_TTAB)) enctabp(e, top, (const void *)f_gc(g, u));
  else encval(e, top);
  lua_settop(L, top - 1);
  if (e->epoch != ep) {
    fshape now = f_shape(g, T);
    if (now.array != was->array || now.asize != was->asize ||
        now.node != was->node || now.hmask != was->hmask)
      fail(e, "table changed while being encoded");
  }
}

/* Pushes the string key k of a node. Through lua_pushlstring it would be
   hashed and compared again, and could run a GC step; the few keys that
   lead to tables (records' "list", "nested") are kept in slots of the
   state's environment, across encodes: a string held there stays alive,
   so its address names it. */
FI void pushkey(enc *e, uint64_t k, int g)
{
  lua_State *L = e->L;
  const void *gs = (const void *)f_gc(g, k);
  unsigned i = (unsigned)(((uintptr_t)gs >> 5) % KCACHE);
  int env = getenv_e(e);
  if (e->S->kcs[i] == gs) {
    lua_rawgeti(L, env, E_KC + (int)i);
    return;
  }
  size_t len;
  const char *s = f_str(g, e->fl, k, &len);
  e->epoch++;  /* allocation: a GC step may run */
  lua_pushlstring(L, s, len);
  lua_pushvalue(L, -1);
  lua_rawseti(L, env, E_KC + (int)i);  /* anchors what kcs[i] names */
  e->S->kcs[i] = lua_tostring(L, -1) - (g ? 24 : e->fl->strhdr);
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
FI int fastwalk(enc *e, int t, const void *T, int hasmt, int np,
                uint64_t *na, uint64_t *nh, int g)
{
  const uint64_t *a = (const uint64_t *)(uintptr_t)f_tarray(g, T);
  const fnode *nd = (const fnode *)(uintptr_t)f_tnode(g, T);
  uint32_t asize = f_tasize(g, T), hmask = f_thmask(g, T);
  uint32_t n = asize ? asize - 1 : 0;
  int b;
  uint64_t live = asize && !f_isnil(g, a[0]);  /* t[0] goes as a pair */
  for (uint32_t i = 0; i <= hmask; i++) {
    if (f_isnil(g, nd[i].val)) continue;
    uint64_t k = nd[i].key;
    if (!f_isnum(g, k) && !f_is(g, k, F_TSTR) && !f_isbool(g, k, &b))
      return 0;
    live++;
  }
  while (n > 0 && f_isnil(g, a[n])) n--;
  if (!live && !hasmt && n >= PACKMIN) {
    uint32_t i = 1;
    while (i <= n && f_isnum(g, a[i])) i++;
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
  fshape was = f_shape(g, T);
  pathent *pe = &e->path[np];
  *pe = (pathent){ .kind = P_ARR, .t = T };
  for (uint32_t i = 1; i <= n; i++) {
    uint64_t u = ((const uint64_t *)(uintptr_t)f_tarray(g, T))[i];
    pe->idx = (int)i;
    if (!encleaf(e, u, g)) {
      lua_rawgeti(e->L, t, (int)i);
      encpushed(e, u, T, &was, g);
    }
  }
  *na = n;
  if (live && asize && !f_isnil(g, a[0])) {
    pe->idx = 0;
    put1(e, SINT);
    if (!encleaf(e, a[0], g)) {
      lua_rawgeti(e->L, t, 0);
      encpushed(e, a[0], T, &was, g);
    }
    ++*nh;
  }
  pe->kind = P_NODE;
  for (uint32_t i = 0; i <= hmask; i++) {
    const fnode *x = &((const fnode *)(uintptr_t)f_tnode(g, T))[i];
    uint64_t v = x->val;
    if (f_isnil(g, v)) continue;
    pe->n = x;
    if (!encleaf(e, x->key, g)) fail(e, "table changed while being encoded");
    if (!encleaf(e, v, g)) {
      uint64_t k = x->key;
      if (f_isnum(g, k)) {
        lua_pushnumber(e->L, f_num(k));
      } else if (f_is(g, k, F_TSTR)) {
        pushkey(e, k, g);
      } else {
        f_isbool(g, k, &b);
        lua_pushboolean(e->L, b);
      }
      lua_rawget(e->L, t);
      /* A GC step in lua_pushlstring may have changed t[k]: then v says
         nothing about the value pushed. */
      encpushed(e, x->val == v && f_tnode(g, T) == was.node ? v : 0, T,
                &was, g);
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
  const flayout *fl = e->fl;
  pslot *s = fl ? tlook(L, e->b, tp, e->nobj + 1, fl->tshift)
                : pcr__ser_plook(L, &e->b->seen, tp, e->nobj + 1);
  if (s) {
    putref(e, s);
    return;
  }
  enter(e);
  int hasmt = fl ? f_tmeta(fl->gc64, tp) != 0 : 1;
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
  if (!fl || !(fl->gc64 ? fastwalk(e, t, tp, hasmt, np, &na, &nh, 1)
                        : fastwalk(e, t, tp, hasmt, np, &na, &nh, 0))) {
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
    pslot *s = pcr__ser_plook(L, &e->b->seen, id, ord);
    if (s) {  /* shared with a closure already written */
      put1(e, T_UPREF);
      putvar(e, s->v);
      putvar(e, pcr__ser_pfind(&e->b->seen, (const char *)id + 1)->v);
      e->hasrefs = 1;
      continue;
    }
    pcr__ser_plook(L, &e->b->seen, (const char *)id + 1, (uint32_t)u);
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
  pslot *s = pcr__ser_plook(L, &e->b->seen, lua_topointer(L, f), e->nobj + 1);
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

/* Whether userdata i is an ffi.load library: it shares ffi.C's
   metatable. Only on the error path. */
static int isclib(lua_State *L, int i)
{
  int r = 0, top = lua_gettop(L);
  lua_getfield(L, LUA_REGISTRYINDEX, "_LOADED");
  lua_getfield(L, -1, "ffi");
  if (lua_istable(L, -1)) {
    lua_getfield(L, -1, "C");
    if (lua_getmetatable(L, -1) && lua_getmetatable(L, i))
      r = lua_rawequal(L, -1, -2);
  }
  lua_settop(L, top);
  return r;
}

static void encudata(enc *e, int i)
{
  lua_State *L = e->L;
  if (byname(e, lua_topointer(L, i), 1)) return;
  e->epoch++;
  if (!gethook(L, i)) fail(e, isclib(L, i) ? "cannot send a userdata (an "
    "ffi.load library; load it inside the task or in the pool's "
    "initializer)" : "cannot send a userdata");
  pslot *s = pcr__ser_plook(L, &e->b->seen, lua_topointer(L, i), e->nobj + 1);
  if (s) {
    lua_pop(L, 2);
    putref(e, s);
    return;
  }
  enter(e);
  encext(e, i, lua_gettop(L) - 1);
}

static void enccdata(enc *e, int i)
{
  lua_State *L = e->L;
  e->epoch++;
  pcr__ser_cdhelper(L, getenv_e(e), E_CDESC);
  lua_pushvalue(L, i);
  lua_call(L, 1, 4);
  int kind = (int)lua_tointeger(L, -4);
  const unsigned char *p = lua_topointer(L, i);
  if (kind == 0) fail(e, lua_tostring(L, -3));
  if (kind == 4) {  /* a registered handle type: crosses by its hook */
    lua_pushvalue(L, -3);
    lua_getfield(L, -1, "__serialize");
    pslot *s = pcr__ser_plook(L, &e->b->seen, p, e->nobj + 1);
    if (s) {
      lua_pop(L, 6);
      putref(e, s);
      return;
    }
    enter(e);
    encext(e, i, lua_gettop(L) - 1);
    lua_pop(L, 4);
    return;
  }
  if (kind == 1 || kind == 2) {
    put1(e, kind == 1 ? T_I64 : T_U64);
    uint64_t v;
    memcpy(&v, p, 8);
    put64(e, v);
  } else {
    pslot *s = pcr__ser_plook(L, &e->b->seen, p, e->nobj + 1);
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
const char *pcr__ser_encode_state(lua_State *L, sstate *S, int sud,
                                  int idx, size_t *len, const char *root,
                                  int flags)
{
  enc ctx, *e = &ctx;  /* 24 KB of path: fine on the C stack */
  uintptr_t here = (uintptr_t)__builtin_frame_address(0);
  level *b = takelevel(L, S, here);
  e->L = L;
  e->S = S;
  e->b = b;
  e->root = root;
  e->flags = flags & (PCR_SER_MSG | PCR_SER_REMOTE);
  e->fl = S->fl.ok ? &S->fl : NULL;
  e->nobj = e->epoch = 0;
  e->np = e->hasrefs = e->refreshed = e->env = e->nm = e->anch = 0;
  e->sud = sud;
  lua_settop(L, sud + 3);  /* slots for env, names, anchors */
  if (!S->names_ok) {
    pcr__ser_namesbuild(L, S, getenv_e(e));
    lua_replace(L, e->nm = sud + 2);
  }
  if (b->cap > (1u << 20) && b->n < b->cap / 4) {  /* release a big one */
    free(b->p);
    b->p = NULL;
    b->cap = 0;
  }
  b->n = 0;
  pcr__ser_pclear(&b->seen);
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

const char *pcr__ser_encode_as(lua_State *L, int idx, size_t *len,
                               const char *root, int flags)
{
  if (idx < 0 && idx > LUA_REGISTRYINDEX) idx = lua_gettop(L) + idx + 1;
  int top = lua_gettop(L);
  luaL_checkstack(L, 16, "pcrun.encode");
  sstate *S = pcr__ser_getstate(L);
  const char *p = pcr__ser_encode_state(L, S, top + 1, idx, len,
                                        root ? root : "value", flags);
  lua_settop(L, top);
  return p;
}

const char *pcr__ser_encode_named(lua_State *L, int idx, size_t *len,
                                  const char *root)
{
  return pcr__ser_encode_as(L, idx, len, root, 0);
}

const char *pcr__ser_encode(lua_State *L, int idx, size_t *len)
{
  return pcr__ser_encode_named(L, idx, len, NULL);
}
