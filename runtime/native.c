/* Native functions: host C functions registered with pcr_register, called
** from Lua (pcrun.native.name) through libffi, plus the Lua <-> C value
** conversions the exports share. The registry lives in the parent's memory
** and its Lua state, so every worker forked later inherits it. */
#include "native.h"
#include "pcrun.h"

#include <lauxlib.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define LUA_TCDATA 10  /* LuaJIT's type tag for FFI cdata */
#define REGKEY "pcrun.nativereg"
#define HELPKEY "pcrun.ffihelp"

/* FFI helpers for cdata, which the classic C API cannot read: a cdata
** integer or pointer becomes an int64_t box whose payload lua_topointer
** gives; box() makes int64_t/uint64_t cdata from 8 bytes. */
static const char helpers[] =
  "local ffi = require 'ffi'\n"
  "local i64, vp = ffi.typeof('int64_t'), ffi.typeof('const void *')\n"
  "local i64p, u64p = ffi.typeof('int64_t *'), ffi.typeof('uint64_t *')\n"
  "local function field(x) return x.ptr end\n"
  "return {\n"
  "  toint = function(x) return ffi.cast(i64, x) end,\n"
  "  toaddr = function(x)\n"
  "    local k = tostring(ffi.typeof(x)):match('^ctype<(%a+)[^*&%[]*>$')\n"
  "    if k == 'struct' or k == 'union' then\n"
  "      local ok, p = pcall(field, x)\n"  /* a struct such as an array */
  "      if ok and type(p) == 'function' then p = p(x) end\n"
  "      if ok and p ~= nil then x = p end\n"
  "    end\n"
  "    return ffi.cast(i64, ffi.cast(vp, x))\n"
  "  end,\n"
  "  box = function(p, u) return ffi.cast(u and u64p or i64p, p)[0] end,\n"
  "}\n";

/* Push helper `name`; 0 if the helpers cannot load (no ffi). */
static int helper(lua_State *L, const char *name) {
  lua_getfield(L, LUA_REGISTRYINDEX, HELPKEY);
  if (lua_isnil(L, -1)) {
    lua_pop(L, 1);
    if (luaL_loadstring(L, helpers) || lua_pcall(L, 0, 1, 0)) {
      lua_pop(L, 1);
      return 0;
    }
    lua_pushvalue(L, -1);
    lua_setfield(L, LUA_REGISTRYINDEX, HELPKEY);
  }
  lua_getfield(L, -1, name);
  lua_remove(L, -2);
  return 1;
}

/* Run helper name on the value at idx; the 8-byte payload goes to *out. */
static int viahelper(lua_State *L, int idx, const char *name, int64_t *out) {
  idx = idx < 0 ? lua_gettop(L) + idx + 1 : idx;
  if (!helper(L, name)) return -1;
  lua_pushvalue(L, idx);
  if (lua_pcall(L, 1, 1, 0)) { lua_pop(L, 1); return -1; }
  const void *p = lua_topointer(L, -1);
  if (p) memcpy(out, p, 8);
  lua_pop(L, 1);
  return p ? 0 : -1;
}

/* -- Lua to C ---------------------------------------------------------- */

static const struct { double lo, hi; } ranges[] = {
  [PCR_T_I8] = {-128, 127}, [PCR_T_U8] = {0, 255},
  [PCR_T_I16] = {-32768, 32767}, [PCR_T_U16] = {0, 65535},
  [PCR_T_I32] = {-2147483648.0, 2147483647.0}, [PCR_T_U32] = {0, 4294967295.0},
};

static int why_type(lua_State *L, int idx, const char *want, char *why,
                    size_t n) {
  snprintf(why, n, "must be %s, got %s", want, luaL_typename(L, idx));
  return -1;
}

/* Store integer x (exact, as int64 bits) into v for kind, range-checked. */
static int putint(int kind, int64_t x, pcr__val *v, char *why, size_t n) {
  if (kind == PCR_T_I64 || kind == PCR_T_U64) { v->i64 = x; return 0; }
  if (x < (int64_t)ranges[kind].lo || x > (int64_t)ranges[kind].hi) {
    snprintf(why, n, "must be an integer from %.0f to %.0f, got %lld",
             ranges[kind].lo, ranges[kind].hi, (long long)x);
    return -1;
  }
  switch (kind) {
  case PCR_T_I8: v->i8 = (int8_t)x; break;
  case PCR_T_U8: v->u8 = (uint8_t)x; break;
  case PCR_T_I16: v->i16 = (int16_t)x; break;
  case PCR_T_U16: v->u16 = (uint16_t)x; break;
  case PCR_T_I32: v->i32 = (int32_t)x; break;
  default: v->u32 = (uint32_t)x; break;
  }
  return 0;
}

static int toint(lua_State *L, int idx, int kind, pcr__val *v, char *why,
                 size_t n) {
  int t = lua_type(L, idx);
  if (t == LUA_TCDATA) {
    int64_t x;
    if (viahelper(L, idx, "toint", &x))
      return why_type(L, idx, "an integer", why, n);
    return putint(kind, x, v, why, n);
  }
  if (t != LUA_TNUMBER) return why_type(L, idx, "an integer", why, n);
  double d = lua_tonumber(L, idx);
  if (d != floor(d)) {  /* NaN too */
    snprintf(why, n, "must be an integer, got %.17g", d);
    return -1;
  }
  if (kind == PCR_T_U64) {
    if (d < 0 || d >= 18446744073709551616.0) goto range;
    v->u64 = (uint64_t)d;
    return 0;
  }
  if (d < -9223372036854775808.0 || d >= 9223372036854775808.0) goto range;
  return putint(kind, (int64_t)d, v, why, n);
range:
  snprintf(why, n, "must be a %s, got %.17g out of range",
           pcr__kind_name(kind), d);
  return -1;
}

/* Push x.ptr, or x:ptr() if that is a method (protected: x's __index
** may raise, and indexing a userdata without one does). */
static int getptr(lua_State *L) {
  lua_settop(L, 1);
  lua_getfield(L, 1, "ptr");
  if (lua_isfunction(L, -1)) {
    lua_pushvalue(L, 1);
    lua_call(L, 1, 1);
  }
  return 1;
}

/* A pointer argument: nil, light userdata, cdata, or an object whose `ptr`
** field (a value or a method) is one of those. */
static int toptr(lua_State *L, int idx, pcr__val *v, int depth, char *why,
                 size_t n) {
  int64_t a;
  idx = idx < 0 && idx > LUA_REGISTRYINDEX ? lua_gettop(L) + idx + 1 : idx;
  switch (lua_type(L, idx)) {
  case LUA_TNIL: v->p = NULL; return 0;
  case LUA_TLIGHTUSERDATA: v->p = lua_touserdata(L, idx); return 0;
  case LUA_TCDATA:
    if (viahelper(L, idx, "toaddr", &a))
      return why_type(L, idx, "a pointer", why, n);
    v->p = (void *)(intptr_t)a;
    return 0;
  case LUA_TTABLE: case LUA_TUSERDATA:
    if (depth > 0) break;
    lua_pushcfunction(L, getptr);
    lua_pushvalue(L, idx);
    if (lua_pcall(L, 1, 1, 0)) {
      snprintf(why, n, "must be a pointer, got %s (its ptr raised: %s)",
               luaL_typename(L, idx),
               lua_tostring(L, -1) ? lua_tostring(L, -1) : "?");
      lua_pop(L, 1);
      return -1;
    }
    int r = lua_isnil(L, -1) ? why_type(L, idx, "a pointer", why, n)
                             : toptr(L, lua_gettop(L), v, depth + 1, why, n);
    lua_pop(L, 1);
    return r;
  default: break;
  }
  return why_type(L, idx, "a pointer", why, n);
}

int pcr__lua_toval(lua_State *L, int idx, int kind, pcr__val *v, char *why,
                   size_t n) {
  v->u64 = 0;
  idx = idx < 0 && idx > LUA_REGISTRYINDEX ? lua_gettop(L) + idx + 1 : idx;
  switch (kind) {
  case PCR_T_VOID: return 0;
  case PCR_T_BOOL:
    if (lua_type(L, idx) != LUA_TBOOLEAN)
      return why_type(L, idx, "a boolean", why, n);
    v->b = lua_toboolean(L, idx);
    return 0;
  case PCR_T_FLOAT: case PCR_T_DOUBLE:
    if (lua_type(L, idx) != LUA_TNUMBER)
      return why_type(L, idx, "a number", why, n);
    if (kind == PCR_T_FLOAT) v->f = (float)lua_tonumber(L, idx);
    else v->d = lua_tonumber(L, idx);
    return 0;
  case PCR_T_STR:
    if (lua_isnil(L, idx)) { v->s = NULL; return 0; }
    if (lua_type(L, idx) != LUA_TSTRING)
      return why_type(L, idx, "a string", why, n);
    v->s = lua_tostring(L, idx);
    return 0;
  case PCR_T_PTR: return toptr(L, idx, v, 0, why, n);
  default: return toint(L, idx, kind, v, why, n);
  }
}

/* -- C to Lua ---------------------------------------------------------- */

static int push64(lua_State *L, const pcr__val *v, int isunsigned) {
  double d = isunsigned ? (double)v->u64 : (double)v->i64;
  int exact = isunsigned ? v->u64 <= ((uint64_t)1 << 53)
                         : v->i64 >= -((int64_t)1 << 53) &&
                           v->i64 <= ((int64_t)1 << 53);
  if (exact || !helper(L, "box")) { lua_pushnumber(L, d); return 1; }
  lua_pushlightuserdata(L, (void *)v);
  lua_pushboolean(L, isunsigned);
  if (lua_pcall(L, 2, 1, 0)) { lua_pop(L, 1); lua_pushnumber(L, d); }
  return 1;
}

int pcr__lua_pushval(lua_State *L, int kind, const pcr__val *v) {
  switch (kind) {
  case PCR_T_VOID: return 0;
  case PCR_T_BOOL: lua_pushboolean(L, v->b); return 1;
  case PCR_T_I8: lua_pushnumber(L, v->i8); return 1;
  case PCR_T_U8: lua_pushnumber(L, v->u8); return 1;
  case PCR_T_I16: lua_pushnumber(L, v->i16); return 1;
  case PCR_T_U16: lua_pushnumber(L, v->u16); return 1;
  case PCR_T_I32: lua_pushnumber(L, v->i32); return 1;
  case PCR_T_U32: lua_pushnumber(L, v->u32); return 1;
  case PCR_T_I64: return push64(L, v, 0);
  case PCR_T_U64: return push64(L, v, 1);
  case PCR_T_FLOAT: lua_pushnumber(L, v->f); return 1;
  case PCR_T_DOUBLE: lua_pushnumber(L, v->d); return 1;
  case PCR_T_STR:
    if (v->s) lua_pushstring(L, v->s); else lua_pushnil(L);
    return 1;
  default:
    if (v->p) lua_pushlightuserdata(L, v->p); else lua_pushnil(L);
    return 1;
  }
}

/* -- Calling ----------------------------------------------------------- */

static int native_call(lua_State *L) {
  const pcr__native *nf = lua_touserdata(L, lua_upvalueindex(1));
  const pcr__sig *s = &nf->sig;
  int got = lua_gettop(L);
  if (got != s->nargs)
    return luaL_error(L, "pcrun.native.%s: expected %d argument%s (%s), "
                      "got %d", nf->name, s->nargs, s->nargs == 1 ? "" : "s",
                      s->text, got);
  pcr__val v[PCR_SIG_MAX], r;
  void *pv[PCR_SIG_MAX];
  char why[128];
  for (int i = 0; i < s->nargs; i++) {
    if (pcr__lua_toval(L, i + 1, s->args[i], &v[i], why, sizeof why))
      return luaL_error(L, "pcrun.native.%s: argument %d %s", nf->name,
                        i + 1, why);
    pv[i] = &v[i];
  }
  r.u64 = 0;
  ffi_call((ffi_cif *)&s->cif, nf->fn, &r, pv);
  pcr__val_fix_ret(s->ret, &r);
  return pcr__lua_pushval(L, s->ret, &r);
}

static int validname(const char *s) {
  if (!s || !*s || strlen(s) >= 64) return 0;
  /* pcrun.native's own helpers would shadow these */
  if (!strcmp(s, "has") || !strcmp(s, "names")) return 0;
  if (!(s[0] == '_' || ((s[0] | 32) >= 'a' && (s[0] | 32) <= 'z'))) return 0;
  for (; *s; s++)
    if (!(*s == '_' || (*s >= '0' && *s <= '9') ||
          ((*s | 32) >= 'a' && (*s | 32) <= 'z')))
      return 0;
  return 1;
}

static int nativereg(lua_State *L) {
  lua_getfield(L, LUA_REGISTRYINDEX, REGKEY);
  return 1;
}

void pcr__native_open(lua_State *L) {
  lua_newtable(L);
  lua_setfield(L, LUA_REGISTRYINDEX, REGKEY);
  lua_getglobal(L, "package");
  if (lua_istable(L, -1)) {
    lua_getfield(L, -1, "preload");
    lua_pushcfunction(L, nativereg);
    lua_setfield(L, -2, REGKEY);
    lua_pop(L, 1);
  }
  lua_pop(L, 1);
}

int pcr__native_add(lua_State *L, pcr__native **list, const char *name,
                    pcr__fn fn, const char *sig, char *err, size_t n) {
  if (!validname(name)) {
    snprintf(err, n, "pcr_register: bad name '%s' (letters, digits and _, "
             "at most 63; not 'has' or 'names')", name ? name : "(null)");
    return PCR_EINVAL;
  }
  if (!fn) {
    snprintf(err, n, "pcr_register: '%s': function pointer is NULL", name);
    return PCR_EINVAL;
  }
  for (pcr__native *p = *list; p; p = p->next)
    if (!strcmp(p->name, name)) {
      snprintf(err, n, "pcr_register: native function '%s' is already "
               "registered", name);
      return PCR_EINVAL;
    }
  pcr__native *nf = calloc(1, sizeof *nf);
  if (!nf) { snprintf(err, n, "pcr_register: out of memory"); return PCR_ENOMEM; }
  char why[PCR_SIG_TEXT + 128];
  int r = pcr__sig_parse(&nf->sig, sig, why, sizeof why);
  if (r) {
    snprintf(err, n, "pcr_register: '%s': %s", name, why);
    free(nf);
    return r;
  }
  strcpy(nf->name, name);
  nf->fn = fn;
  lua_getfield(L, LUA_REGISTRYINDEX, REGKEY);
  lua_pushlightuserdata(L, nf);
  lua_pushcclosure(L, native_call, 1);
  lua_setfield(L, -2, name);
  lua_pop(L, 1);
  nf->next = *list;
  *list = nf;
  return 0;
}

void pcr__native_remove(lua_State *L, pcr__native **list, const char *name) {
  for (pcr__native **pp = list; *pp; pp = &(*pp)->next) {
    pcr__native *nf = *pp;
    if (strcmp(nf->name, name)) continue;
    lua_getfield(L, LUA_REGISTRYINDEX, REGKEY);
    lua_pushnil(L);
    lua_setfield(L, -2, name);
    lua_pop(L, 1);
    *pp = nf->next;
    free(nf);
    return;
  }
}

static int getglobal(lua_State *L) {
  lua_getglobal(L, lua_tostring(L, 1));
  return 1;
}

int pcr__lua_getglobal(lua_State *L, const char *name) {
  lua_pushcfunction(L, getglobal);
  lua_pushstring(L, name);
  return lua_pcall(L, 1, 1, 0);
}

void pcr__native_free(pcr__native *list) {
  while (list) {
    pcr__native *next = list->next;
    free(list);
    list = next;
  }
}
