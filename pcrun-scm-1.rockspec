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
dependencies = { "lua >= 5.1, < 5.2" }
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
