/* fuzz_decode.c -- libFuzzer target for pcr__ser_decode on untrusted input.
   Built and run by tests/fuzz.sh (ctest's fuzz_decode). */
#include <stddef.h>
#include <stdint.h>
#include <stdlib.h>

#include <lua.h>
#include <lauxlib.h>
#include <lualib.h>

#include "../ser.h"

static int decode(lua_State *L)
{
  const char *p = lua_touserdata(L, 1);
  size_t n = (size_t)lua_tointeger(L, 2);
  pcr__ser_decode(L, p, n, 0);
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
  /* A registered type and a named ctype, so that those tags reach code. */
  if (luaL_dostring(L,
        "require('ffi').cdef 'struct fz_point { double x, y; };'\n"
        "ser.register_type('T', {\n"
        "  __serialize = function(o) return o[1] end,\n"
        "  __deserialize = function(v) return {v} end})"))
    abort();
  lua_settop(L, 0);
  return L;
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
  lua_pushcfunction(L, decode);
  lua_pushlightuserdata(L, buf);
  lua_pushinteger(L, (lua_Integer)size);
  lua_pcall(L, 2, 1, 0);
  if (lua_gettop(L) != 1) abort();  /* exactly one value or one error */
  lua_settop(L, 0);
  free(buf);
  if (++runs % 4096 == 0) lua_gc(L, LUA_GCCOLLECT, 0);
  return 0;
}
