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
build = {
  type = "builtin",
  modules = {
    ["pcrun.core"] = {
      sources = { "runtime/err.c", "runtime/shm.c", "runtime/futex.c",
                  "runtime/ring.c", "runtime/pipe.c", "runtime/proc.c",
                  "runtime/ser.c", "runtime/lpcrun.c" },
      defines = { "_GNU_SOURCE", "PCR_BUILDING" },
      incdirs = { "runtime" },
    },
    ["pcrun"] = "lua/pcrun/init.lua",
    ["pcrun.process"] = "lua/pcrun/process.lua",
    ["pcrun.pool"] = "lua/pcrun/pool.lua",
    ["pcrun.future"] = "lua/pcrun/future.lua",
  },
}
