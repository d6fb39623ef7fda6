/* The Lua binding of shared arrays and values (lua/pcrun/array.lua
** builds pcrun.array and pcrun.value on it): the arena block is a handle
** of kind pcrun.ObjRef on the handle core (lhandle.h). */
#include "array.h"
#include "lhandle.h"

#include <lauxlib.h>
#include <lua.h>
#include <string.h>

static int K_REF;

/* array_new(ctype, esize, n) -> ObjRef, address (a number) */
static int l_array_new(lua_State *L) {
  const char *ct = luaL_checkstring(L, 1);
  size_t esize = (size_t)luaL_checknumber(L, 2);
  lua_Number n = luaL_checknumber(L, 3);
  const char *who = lua_tostring(L, 4) ? lua_tostring(L, 4) : "pcrun.array";
  pcr_handle *h = pcr__handle_push(L, NULL, K_REF);
  long *idx = &h->lidx[0];
  pcr_array *a = n < 0 ? NULL : pcr__array_new(ct, esize, (uint64_t)n, idx);
  if (!a && n >= 0 && pcr__lua_collect(L))
    a = pcr__array_new(ct, esize, (uint64_t)n, idx);
  if (!a) {
    pcr__handle_release(h);
    return pcr__handle_nospace(L, who);
  }
  h->o = &a->hdr;
  lua_pushnumber(L, (lua_Number)(uintptr_t)a->data);
  return 2;
}

/* ref_info(ref) -> address, n, ctype */
static int r_info(lua_State *L) {
  pcr_handle *h = pcr__handle_check(L, K_REF, "info");
  pcr_array *a = (pcr_array *)h->o;
  lua_pushnumber(L, (lua_Number)(uintptr_t)a->data);
  lua_pushnumber(L, (lua_Number)a->n);
  lua_pushstring(L, a->ctype);
  return 3;
}

/* Atomic access to one element: kind 'i' signed, 'u' unsigned, 'f'
** floating, with the element's size. */
typedef union { int8_t i8; int16_t i16; int32_t i32; int64_t i64;
                uint8_t u8; uint16_t u16; uint32_t u32; uint64_t u64;
                float f; double d; } scalar;

static lua_Number scalar_get(int kind, size_t size, scalar s) {
  if (kind == 'f') return size == 4 ? s.f : s.d;
  if (kind == 'i')
    return size == 1 ? s.i8 : size == 2 ? s.i16 : size == 4 ? s.i32
                                                            : (lua_Number)s.i64;
  return size == 1 ? s.u8 : size == 2 ? s.u16 : size == 4 ? s.u32
                                                          : (lua_Number)s.u64;
}

static scalar scalar_from(int kind, size_t size, lua_Number v) {
  scalar s;
  memset(&s, 0, sizeof s);
  if (kind == 'f') { if (size == 4) s.f = (float)v; else s.d = v; return s; }
  if (kind == 'i') {
    if (size == 1) s.i8 = (int8_t)v; else if (size == 2) s.i16 = (int16_t)v;
    else if (size == 4) s.i32 = (int32_t)v; else s.i64 = (int64_t)v;
    return s;
  }
  if (size == 1) s.u8 = (uint8_t)v; else if (size == 2) s.u16 = (uint16_t)v;
  else if (size == 4) s.u32 = (uint32_t)v; else s.u64 = (uint64_t)v;
  return s;
}

static int cas_bits(void *p, size_t size, scalar *old, scalar nw) {
  switch (size) {
  case 1: return __atomic_compare_exchange(
      (uint8_t *)p, &old->u8, &nw.u8, 0, __ATOMIC_SEQ_CST, __ATOMIC_SEQ_CST);
  case 2: return __atomic_compare_exchange(
      (uint16_t *)p, &old->u16, &nw.u16, 0, __ATOMIC_SEQ_CST, __ATOMIC_SEQ_CST);
  case 4: return __atomic_compare_exchange(
      (uint32_t *)p, &old->u32, &nw.u32, 0, __ATOMIC_SEQ_CST, __ATOMIC_SEQ_CST);
  default: return __atomic_compare_exchange(
      (uint64_t *)p, &old->u64, &nw.u64, 0, __ATOMIC_SEQ_CST, __ATOMIC_SEQ_CST);
  }
}

static scalar load_bits(void *p, size_t size) {
  scalar s;
  memset(&s, 0, sizeof s);
  switch (size) {
  case 1: s.u8 = __atomic_load_n((uint8_t *)p, __ATOMIC_SEQ_CST); break;
  case 2: s.u16 = __atomic_load_n((uint16_t *)p, __ATOMIC_SEQ_CST); break;
  case 4: s.u32 = __atomic_load_n((uint32_t *)p, __ATOMIC_SEQ_CST); break;
  default: s.u64 = __atomic_load_n((uint64_t *)p, __ATOMIC_SEQ_CST);
  }
  return s;
}

/* value_op(ref, kind, op, a, b): op 'l' load, 's' store a, 'a' add a
** (returns the old value), 'c' cas(a, b) (returns whether it swapped). */
static int r_value_op(lua_State *L) {
  pcr_handle *h = pcr__handle_check(L, K_REF, "value");
  pcr_array *a = (pcr_array *)h->o;
  int kind = *luaL_checkstring(L, 2), op = *luaL_checkstring(L, 3);
  size_t size = a->esize;
  void *p = a->data;
  if (op == 'l') {
    lua_pushnumber(L, scalar_get(kind, size, load_bits(p, size)));
    return 1;
  }
  lua_Number x = luaL_checknumber(L, 4);
  scalar old = load_bits(p, size), nw;
  if (op == 'c') {
    scalar want = scalar_from(kind, size, x);
    nw = scalar_from(kind, size, luaL_checknumber(L, 5));
    /* Compare by value, so that 1.0 matches whatever bits it has now. */
    if (scalar_get(kind, size, old) != scalar_get(kind, size, want)) {
      lua_pushboolean(L, 0);
      return 1;
    }
    lua_pushboolean(L, cas_bits(p, size, &old, nw));
    return 1;
  }
  do {
    lua_Number cur = scalar_get(kind, size, old);
    nw = scalar_from(kind, size, op == 'a' ? cur + x : x);
  } while (!cas_bits(p, size, &old, nw));
  lua_pushnumber(L, scalar_get(kind, size, old));
  return 1;
}

static const luaL_Reg ref_m[] = {
  {"info", r_info}, {"value_op", r_value_op}, {NULL, NULL}
};


void pcr__larray_open(lua_State *L) {
  static const luaL_Reg fns[] = { {"array_new", l_array_new}, {NULL, NULL} };
  pcr_hkind k = { "pcrun.ObjRef", ref_m, NULL, 0, -1, NULL, NULL, NULL,
                  NULL, NULL, NULL, NULL, NULL };
  K_REF = pcr__handle_register(L, &k);
  luaL_register(L, NULL, fns);
}
