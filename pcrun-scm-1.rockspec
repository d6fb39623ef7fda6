package = "pcrun"
version = "scm-1"
source = { url = "git+file:///work/main" }
description = {
  summary = "Parallel compute runtime for LuaJIT: processes, pools, pipes",
  detailed = [[
    Forks isolated LuaJIT states and gives scripts processes, pools with
    map and futures, and pipes through a shared memory arena. Linux only.
  ]],
  license = "MIT",
}
-- LuaJIT is Lua 5.1: with a luarocks that defaults to another version,
-- say so (luarocks --lua-version=5.1 make, or `make rock`).
dependencies = { "lua ~> 5.1" }
-- CMake, not the builtin type: the builtin type puts LUA_INCDIR (plain
-- Lua 5.1 headers on Debian) ahead of LuaJIT's, whose API pcrun needs.
build = {
  type = "cmake",
  variables = {
    CMAKE_INSTALL_PREFIX = "$(PREFIX)",
    PCR_LUA_INSTALL_DIR = "$(LUADIR)",
    PCR_LUA_CINSTALL_DIR = "$(LIBDIR)",
    PCR_FUZZ = "OFF",
    PCR_LUA_ONLY = "ON",
  },
}
