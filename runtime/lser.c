/* lser.c -- the serializer's Lua-facing functions: pcrun.encode,
   pcrun.decode, pcrun.register_type, refresh_names and cdhook. The engine
   (ser.c, ser_enc.c, ser_dec.c) is kept apart from its binding, as LuaJIT
   keeps lj_serialize.c apart from lib_buffer.c. */
#include <math.h>
#include <lua.h>
#include <lauxlib.h>

#include "ser.h"
#include "ser_int.h"

/* cdhook(ctype_id, mt): cdata of that ctype cross by mt.__serialize. */
static int l_cdhook(lua_State *L)
{
  luaL_checknumber(L, 1);
  luaL_checktype(L, 2, LUA_TTABLE);
  pcr__ser_cdhooks(L);
  lua_pushvalue(L, 1);
  lua_pushvalue(L, 2);
  lua_rawset(L, -3);
  return 0;
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
  /* Not a message: the output may be decoded any number of times. */
  const char *p = pcr__ser_encode_state(L, lua_touserdata(L, 2), 2, 1, &n,
                                        root, 0);
  lua_pushlstring(L, p, n);
  return 1;
}

static int ser_decode(lua_State *L)
{
  size_t n, max = 0;
  int flags = 0;
  if (lua_type(L, 1) != LUA_TSTRING)
    return luaL_error(L, "pcrun.decode: expected a string, got %s",
                      luaL_typename(L, 1));
  const char *s = lua_tolstring(L, 1, &n);
  if (lua_istable(L, 2)) {
    lua_getfield(L, 2, "trusted");
    lua_getfield(L, 2, "bytecode");
    if (lua_toboolean(L, -1) || lua_toboolean(L, -2)) flags = PCR_SER_TRUSTED;
    lua_getfield(L, 2, "max_bytes");
    double m = lua_tonumber(L, -1);
    if (!lua_isnil(L, -1) && (lua_type(L, -1) != LUA_TNUMBER || !(m >= 1) ||
                              m != floor(m)))
      return luaL_error(L, "pcrun.decode: max_bytes must be a positive "
                        "integer");
    max = lua_isnil(L, -1) ? 0 : m < 0x1p62 ? (size_t)m : (size_t)1 << 62;
  } else if (!lua_isnoneornil(L, 2)) {
    return luaL_error(L, "pcrun.decode: options must be a table, got %s",
                      luaL_typename(L, 2));
  }
  pcr__ser_decode_state(L,
      &((sstate *)lua_touserdata(L, lua_upvalueindex(1)))->fl, s, n, flags,
      max);
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
  if (!lua_isnoneornil(L, 3) && !lua_istable(L, 3))
    return luaL_error(L, "pcrun.register_type: '%s': opts must be a table, "
                      "got %s", name, luaL_typename(L, 3));
  lua_getfield(L, 2, "__serialize");
  lua_getfield(L, 2, "__deserialize");
  if (!lua_isnil(L, -2) && !lua_isfunction(L, -1))
    return luaL_error(L, "pcrun.register_type: '%s' has __serialize but no "
                      "__deserialize function", name);
  int cap = 0;
  if (lua_istable(L, 3)) {
    lua_getfield(L, 3, "capability");
    cap = lua_toboolean(L, -1);
  }
  lua_settop(L, 2);
  sstate *S = pcr__ser_getstate(L);
  lua_getfenv(L, -1);
  lua_rawgeti(L, -1, E_TYPES);
  lua_pushvalue(L, 1);
  lua_pushvalue(L, 2);
  lua_rawset(L, -3);
  if (cap) {  /* decoded only with trusted; a mark that never comes off */
    lua_rawgeti(L, -2, E_CAPS);
    lua_pushvalue(L, 2);
    lua_pushboolean(L, 1);
    lua_rawset(L, -3);
  }
  S->names_ok = 0;
  lua_settop(L, 2);
  return 1;
}

/* Whether this state's serializer reads tables in place (the self-test
   passed): pcrun.info() reports it. */
static int ser_fast(lua_State *L)
{
  lua_pushboolean(L, ((sstate *)lua_touserdata(L, lua_upvalueindex(1)))->fl.ok);
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
    { "ser_fast", ser_fast },
    { "cdhook", l_cdhook },
    { NULL, NULL }
  };
  pcr__ser_getstate(L);
  luaL_setfuncs(L, fns, 1);
  lua_pushinteger(L, PCR_SER_VERSION);
  lua_setfield(L, -2, "format_version");
}
