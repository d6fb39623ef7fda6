/* fuzz_decode.c -- libFuzzer target for the decoder on untrusted input.
   Built and run by tests/fuzz.sh (ctest's fuzz_decode, make fuzz); seeded
   by tests/fuzz_seeds.lua, which registers the same types. Each input is
   decoded twice without trusted: with no cap (the structural bound alone)
   and with max_bytes at a few times its size (the budget errors). */
#include <stddef.h>
#include <stdint.h>
#include <stdlib.h>

#include <lua.h>
#include <lauxlib.h>
#include <lualib.h>

#include "../ser_int.h"

static size_t maxbytes;
static int capbuilt;  /* set when C's __deserialize ran: must never be */

static int cap_deserialize(lua_State *L)
{
  capbuilt = 1;
  lua_settop(L, 1);
  return 1;
}

static int decode(lua_State *L)
{
  const char *p = lua_touserdata(L, 1);
  size_t n = (size_t)lua_tointeger(L, 2);
  pcr__ser_decode_state(L, NULL, p, n, 0, maxbytes);
  return 1;
}

static lua_State *fresh(void)
{
  lua_State *L = luaL_newstate();
  if (!L) abort();
  luaL_openlibs(L);
  lua_newtable(L);
  pcr__ser_open(L);
  lua_setglobal(L, "ser");
  /* Types and a ctype as tests/fuzz_seeds.lua has them, so that every tag
     reaches code: T plain data, C a capability (always refused here). */
  if (luaL_dostring(L,
        "require('ffi').cdef 'struct fz_point { double x, y; };'\n"
        "ser.register_type('T', {\n"
        "  __serialize = function(o) return o[1] end,\n"
        "  __deserialize = function(v) return {v} end})"))
    abort();
  lua_getglobal(L, "ser");
  lua_getfield(L, -1, "register_type");
  lua_pushliteral(L, "C");
  lua_createtable(L, 0, 1);
  lua_pushcfunction(L, cap_deserialize);
  lua_setfield(L, -2, "__deserialize");
  lua_createtable(L, 0, 1);
  lua_pushboolean(L, 1);
  lua_setfield(L, -2, "capability");
  lua_call(L, 3, 0);
  lua_settop(L, 0);
  return L;
}

static void run(lua_State *L, const char *buf, size_t size, size_t cap)
{
  maxbytes = cap;
  lua_pushcfunction(L, decode);
  lua_pushlightuserdata(L, (void *)buf);
  lua_pushinteger(L, (lua_Integer)size);
  lua_pcall(L, 2, 1, 0);
  if (lua_gettop(L) != 1) abort();  /* exactly one value or one error */
  if (capbuilt) abort();  /* a capability was built without trusted */
  lua_settop(L, 0);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
  static lua_State *L;
  static unsigned runs;
  if (!L) L = fresh();
  /* The copy has exactly size bytes, so ASan sees any over-read. */
  char *buf = malloc(size ? size : 1);
  if (!buf) abort();
  for (size_t i = 0; i < size; i++) buf[i] = (char)data[i];
  run(L, buf, size, 0);
  run(L, buf, size, 4 * size + 256);
  free(buf);
  if (++runs % 4096 == 0) lua_gc(L, LUA_GCCOLLECT, 0);
  return 0;
}
