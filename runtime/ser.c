/* ser.c -- the serializer's shared parts: per-state data and its layout
   self-test, the pointer map, the names index of package.loaded and types,
   the cdata helper. The Lua-facing functions are in lser.c. */
#include <math.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include <lua.h>
#include <lauxlib.h>

#include "ser_int.h"

static const char statekey = 0;

/* -- Start-up self-test --------------------------------------------------- */

/* The checks build sample tables with the API and read them back through
   the mirror of layout g: any disagreement leaves f->ok at 0. They read
   only inside the objects they create, whatever the real layout, before
   following any pointer they have not checked. Stack-neutral. */

static int fcheck_tab(lua_State *L, flayout *f, int g)
{
  static const double nums[] = { 1.5, -0.0, 1e300, -1e-300, -2147483648.0 };
  lua_createtable(L, 8, 0);
  const void *t = lua_topointer(L, -1);
  /* A small array is colocated right after the GCtab (1 << tshift bytes):
     check that before following any pointer. */
  uint8_t gct = g ? ((const ftab64 *)t)->gct : ((const ftab32 *)t)->gct;
  if (gct != F_GCT_TAB || f_tasize(g, t) != 9 || f_tmeta(g, t) ||
      f_tarray(g, t) != (uint64_t)(uintptr_t)t + (1u << f->tshift))
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
  const uint64_t *a = (const uint64_t *)(uintptr_t)f_tarray(g, t);
  for (int i = 0; i < 5; i++) {
    uint64_t u;
    memcpy(&u, &nums[i], 8);
    if (a[i + 1] != u || !f_isnum(g, u)) return 0;
  }
  f->nan = a[6];
  if (f_num(f->nan) == f_num(f->nan) || !f_isnum(g, f->nan)) return 0;
  int b0, b1;
  if (!f_isbool(g, a[7], &b0) || b0 || !f_isbool(g, a[8], &b1) || !b1 ||
      !f_isnil(g, a[0]) || f_isnum(g, a[7]) || f_isnil(g, a[8]))
    return 0;
  f->vfalse = a[7];
  f->vtrue = a[8];
  lua_newtable(L);
  lua_pushvalue(L, -1);
  lua_setmetatable(L, -3);
  if (f_tmeta(g, t) != (uint64_t)(uintptr_t)lua_topointer(L, -1)) return 0;
  lua_rawseti(L, -2, 1);  /* table in slot 1 */
  if (!f_is(g, a[1], F_TTAB) || f_gc(g, a[1]) != f_tmeta(g, t))
    return 0;
  lua_pushlstring(L, "sample", 6);
  lua_rawseti(L, -2, 2);
  lua_rawgeti(L, -1, 2);
  const char *want = lua_tostring(L, -1);
  if (!f_is(g, a[2], F_TSTR) ||
      f_gc(g, a[2]) + (g ? 24 : f->strhdr) != (uintptr_t)want)
    return 0;
  size_t n;
  const char *s = f_str(g, f, a[2], &n);
  lua_pop(L, 2);
  return n == 6 && s == want;
}

/* Every live node of a table with string keys k1..k9 -> i is found once. */
static int fcheck_node(lua_State *L, const flayout *f, int g)
{
  char key[4] = "k0";
  lua_createtable(L, 0, 9);
  const void *t = lua_topointer(L, -1);
  if (f_thmask(g, t) != 15 || f_tasize(g, t) != 0) return 0;
  for (int i = 1; i <= 9; i++) {
    key[1] = (char)('0' + i);
    lua_pushnumber(L, i);
    lua_setfield(L, -2, key);
  }
  const fnode *nd = (const fnode *)(uintptr_t)f_tnode(g, t);
  unsigned seen = 0;
  for (uint32_t i = 0; i <= 15; i++) {
    if (f_isnil(g, nd[i].val)) continue;
    size_t n;
    const char *s;
    if (!f_is(g, nd[i].key, F_TSTR) || !f_isnum(g, nd[i].val)) return 0;
    s = f_str(g, f, nd[i].key, &n);
    int v = (int)f_num(nd[i].val);
    if (n != 2 || s[0] != 'k' || s[1] != '0' + v || (seen & 1u << v))
      return 0;
    seen |= 1u << v;
  }
  lua_pop(L, 1);
  return seen == 0x3FE;
}

/* Tries GC64 (both GCstr layouts), then 32-bit references (both). */
static void fast_check(lua_State *L, flayout *f)
{
  static const struct { int gc64, strhdr, lenoff; } v[] = {
    { 1, 24, 20 }, { 1, 24, 16 }, { 0, 20, 16 }, { 0, 16, 12 }
  };
  memset(f, 0, sizeof *f);
#if UINTPTR_MAX == UINT64_MAX && __BYTE_ORDER__ == __ORDER_LITTLE_ENDIAN__
  int top = lua_gettop(L);
  if (!lua_checkstack(L, 8)) return;
  for (size_t i = 0; i < sizeof v / sizeof v[0] && !f->ok; i++) {
    int g = v[i].gc64;
    memset(f, 0, sizeof *f);
    f->gc64 = g;
    f->strhdr = v[i].strhdr;
    f->lenoff = v[i].lenoff;
    f->tshift = g ? 6 : 5;
    f->ok = g ? fcheck_tab(L, f, 1) && fcheck_node(L, f, 1)
              : fcheck_tab(L, f, 0) && fcheck_node(L, f, 0);
    lua_settop(L, top);
  }
  if (!f->ok) memset(f, 0, sizeof *f);
#else
  (void)L;
#endif
}

/* -- Pointer map (open addressing, cleared in O(1) by generation) --------- */

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

void pcr__ser_pclear(pmap *m)
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

pslot *pcr__ser_pfind(pmap *m, const void *k)
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
pslot *pcr__ser_plook(lua_State *L, pmap *m, const void *k, uint32_t v)
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

static int state_gc(lua_State *L)
{
  sstate *S = lua_touserdata(L, 1);
  for (int i = 0; i < MAXNEST; i++) {
    free(S->lv[i].p);
    free(S->lv[i].seen.s);
    pcr__ser_tfree(&S->lv[i].tabs);
  }
  free(S->names.s);
  memset(S, 0, sizeof *S);
  return 0;
}

/* Pushes the state of L, creating it on first use. */
sstate *pcr__ser_getstate(lua_State *L)
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
  lua_createtable(L, E_KC + KCACHE, 0);
  lua_newtable(L);
  lua_rawseti(L, -2, E_TYPES);
  lua_newtable(L);
  lua_rawseti(L, -2, E_CAPS);
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
  uint32_t bit = nfbit(lua_topointer(L, v));
  S->nfilter[bit >> 6] |= 1ull << (bit & 63);
  if (kind != K_TYPE && pcr__ser_pfind(&S->names, lua_topointer(L, v))) return;
  pslot *s = pcr__ser_plook(L, &S->names, lua_topointer(L, v), 4u * i + kind);
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

int pcr__ser_loadedcount(lua_State *L)
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
void pcr__ser_namesbuild(lua_State *L, sstate *S, int env)
{
  pcr__ser_pclear(&S->names);
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

/* -- Cdata helper (encoder and decoder) ----------------------------------- */

/* The ffi side of cdata lives in Lua: it asks ffi.typeinfo whether a ctype
   holds pointers and names it by a declaration that ffi.typeof can parse. */
static const char cdata_lua[] =
  "local ffi, bit = require 'ffi', require 'bit'\n"
  "local typeof, sizeof, typeinfo = ffi.typeof, ffi.sizeof, ffi.typeinfo\n"
  "local band, rshift = bit.band, bit.rshift\n"
  "local i64, u64 = typeof('int64_t'), typeof('uint64_t')\n"
  "local I64, U64 = tonumber(i64), tonumber(u64)\n"
  "local hooks = ...\n"
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
  "  local h = hooks[id]\n"
  "  if h then return 4, h, 0, 0 end\n"
  "  if tostring(cd):sub(1, 6) == 'ctype<' then\n"
  "    return 0, 'cannot send a ctype (' .. tostring(cd) .. '); send its '\n"
  "      .. 'declaration as a string and call ffi.typeof on the other side'\n"
  "  end\n"
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

/* Pushes the table of cdata types that cross through a hook: ctype id ->
** metatable with __serialize and __name (pcrun's shared arrays). */
void pcr__ser_cdhooks(lua_State *L)
{
  lua_getfield(L, LUA_REGISTRYINDEX, "pcrun.cdhooks");
  if (!lua_isnil(L, -1)) return;
  lua_pop(L, 1);
  lua_newtable(L);
  lua_pushvalue(L, -1);
  lua_setfield(L, LUA_REGISTRYINDEX, "pcrun.cdhooks");
}

/* Pushes the cdata helper in env slot which (loading it on first use). */
void pcr__ser_cdhelper(lua_State *L, int env, int which)
{
  lua_rawgeti(L, env, which);
  if (!lua_isnil(L, -1)) return;
  lua_pop(L, 1);
  if (luaL_loadbuffer(L, cdata_lua, sizeof cdata_lua - 1, "=pcrun.ser"))
    lua_error(L);
  pcr__ser_cdhooks(L);
  lua_call(L, 1, 2);
  lua_rawseti(L, env, E_CMAKE);
  lua_rawseti(L, env, E_CDESC);
  lua_rawgeti(L, env, which);
}

/* -- Lua API -------------------------------------------------------------- */

void pcr__ser_names_reset(lua_State *L)
{
  sstate *S = pcr__ser_getstate(L);
  S->names_ok = 0;
  lua_pop(L, 1);
}

/* Light userdata into this array name the flags of the encode or decode
   calling a hook: pure Lua cannot make one, a hook cannot keep one that
   goes stale, and reading it needs no memory of the caller. */
static const char hooktok[4];

int pcr__ser_pushflags(lua_State *L, int idx, int flags)
{
  if (!lua_iscfunction(L, idx)) return 0;  /* users' hooks: (value) only */
  lua_pushlightuserdata(L, (void *)&hooktok[flags & 3]);
  return 1;
}

int pcr__ser_hookflags(lua_State *L, int arg)
{
  const char *p = lua_type(L, arg) == LUA_TLIGHTUSERDATA
                      ? lua_touserdata(L, arg) : NULL;
  return p >= hooktok && p < hooktok + 4 ? (int)(p - hooktok) : 0;
}
