-- The pcrun command, run as a subprocess: arguments, options, exit
-- statuses, error reports and Ctrl-C.
local helpers = require "helpers"
local pcrun = require "pcrun"

local has = helpers.assert_has
local run = helpers.run_cli

-- A loop that waits without burning a CPU.
local SLEEPER = [[
local ffi = require "ffi"
pcall(ffi.cdef, "int poll(void *fds, unsigned long nfds, int timeout);")
local function sleep(s) ffi.C.poll(nil, 0, s * 1000) end
]]

local function with_script(src, fn)
  local path = helpers.script(src)
  local ok, err = pcall(fn, path)
  os.remove(path)
  if not ok then error(err, 0) end
end

-- Between printing its pids and reaching the code a test signals, a
-- script stalls as a CLI the scheduler left waiting would: Ctrl-C sent on
-- the pids line alone lands before that code, every time.
local STALL = [[
local t = os.clock() + 0.3
while os.clock() < t do end
]]

-- Kill the CLI of h and raise what it printed, what not having happened.
local function abandon(h, what)
  helpers.kill(h.pid, helpers.SIGKILL)
  local r = helpers.wait_cli(h, 5)
  os.remove(h.script)
  error("the script " .. what .. ": " .. r.stdout .. r.stderr, 3)
end

-- Wait until the CLI of h is where its test signals it: asleep in its
-- blocking call, or (ready, a pattern) past printing that line.
local function wait_ready(h, me, ready)
  local ok
  if ready then ok = helpers.wait_output(h, ready, 10)
  else ok = helpers.wait_asleep(me, 10) end
  if not ok then abandon(h, "did not get ready") end
end

-- Start a script that forks two children sleeping in a loop, prints
-- "pids <pcrun> <child> <child>" and then runs tail (by default it blocks
-- in recv); return the handle and the three pids once the script is asleep
-- in tail's wait, or has printed a line matching ready.
local function start_blocked(extra_opts, tail, ready)
  local path = helpers.script(SLEEPER .. [[
    local pcrun = require "pcrun"
    local a, b = pcrun.pipe()
    local ps = {}
    for i = 1, 2 do
      ps[i] = pcrun.process(function()
        while true do sleep(0.05) end
      end):start()
    end
    print("pids", pcrun.getpid(), ps[1].pid, ps[2].pid)
    io.stdout:flush()
  ]] .. STALL .. (tail or "a:recv()\nprint('not reached')\n"))
  local h = helpers.spawn_cli({ path }, extra_opts)
  h.script = path
  local me, c1, c2 = helpers.wait_output(h, "pids%s+(%d+)%s+(%d+)%s+(%d+)",
                                         10)
  if not me then abandon(h, "did not start") end
  wait_ready(h, tonumber(me), ready)
  return h, tonumber(me), tonumber(c1), tonumber(c2)
end

describe("pcrun (the CLI)", function()
  after_each(function()
    helpers.assert_no_children()
  end)

  it("runs a script with its arguments in the global arg and in ...",
     function()
    with_script([[
      print(arg[0] == ... and "bad" or "ok")
      print(#arg, arg[1], arg[2], arg[3])
      print(select("#", ...), ...)
    ]], function(path)
      local r = run { path, "a", "b c", "" }
      assert.are.equal(0, r.status)
      assert.are.equal("ok\n3\ta\tb c\t\n3\ta\tb c\t\n", r.stdout)
      assert.are.equal("", r.stderr)
    end)
    with_script("print(arg[0])", function(path)
      local r = run { path }
      assert.are.equal(path .. "\n", r.stdout)
    end)
  end)

  it("runs -e code", function()
    local r = run { "-e", "print(6 * 7)" }
    assert.are.equal(0, r.status)
    assert.are.equal("42\n", r.stdout)
    assert.are.equal("", r.stderr)
  end)

  it("runs several -e in order, then the script", function()
    with_script("print(x)", function(path)
      local r = run { "-e", "x = 1", "-e", "x = x + 1 print('e', x)", path }
      assert.are.equal(0, r.status)
      assert.are.equal("e\t2\n2\n", r.stdout)
    end)
  end)

  it("requires -l module into a global of that name", function()
    local r = run { "-l", "pcrun", "-e",
                    "print(type(pcrun), pcrun.version, pcrun.cpu_count() > 0)" }
    assert.are.equal(0, r.status)
    assert.are.equal("table\t" .. pcrun.version .. "\ttrue\n", r.stdout)
  end)

  it("exits 1 when -l names a missing module", function()
    local r = run { "-l", "no_such_module_xyz", "-e", "print('ran')" }
    assert.are.equal(1, r.status)
    assert.are.equal("", r.stdout)
    has(r.stderr, "module 'no_such_module_xyz' not found")
  end)

  it("sets the default pool size with -n", function()
    local code = "print(require('pcrun.core').default_workers())"
    local r = run { "-n", "3", "-e", code }
    assert.are.equal(0, r.status)
    assert.are.equal("3\n", r.stdout)
    r = run { "-e", code }
    assert.are.equal(tostring(pcrun.cpu_count()) .. "\n", r.stdout)
  end)

  it("rejects -n without a positive integer", function()
    for _, bad in ipairs { "0", "-2", "x", "3x", "" } do
      local r = run { "-n", bad, "-e", "print('ran')" }
      assert.are.equal(1, r.status)
      assert.are.equal("", r.stdout)
      has(r.stderr, "-n must be a positive integer")
    end
  end)

  it("exits 1 when an option lacks its argument", function()
    for _, opt in ipairs { "-e", "-l", "-n" } do
      local r = run { opt }
      assert.are.equal(1, r.status)
      has(r.stderr, "'" .. opt .. "' needs an argument")
    end
  end)

  it("prints the version with -v and --version", function()
    for _, opt in ipairs { "-v", "--version" } do
      local r = run { opt }
      assert.are.equal(0, r.status)
      assert.are.equal(1, r.stdout:find("pcrun " .. pcrun.version, 1, true))
      has(r.stdout, "LuaJIT")
      assert.are.equal("", r.stderr)
    end
  end)

  it("prints what a bug report needs with --version", function()
    local info = pcrun.info()
    local want = ("pcrun %s\n%s (%s)\nserializer fast path: on\n"
                  .. "arena: 64 MiB\ncpus: %d\n")
      :format(pcrun.version, jit.version, info.gc64 and "GC64" or "non-GC64",
              pcrun.cpu_count())
    if not info.ser_fast then
      want = want:gsub("path: on", "path: off (tables go through the Lua API)")
    end
    local r = helpers.run_cli({ "--version" }, nil,
                              { env = { PCRUN_ARENA = "64M" } })
    assert.are.equal(0, r.status, r.stderr)
    assert.are.equal(want, r.stdout)
    r = helpers.run_cli({ "--version" }, nil,
                        { env = { PCRUN_ARENA = "64M", PCRUN_SER_NOFAST = 1 } })
    has(r.stdout, "serializer fast path: off (tables go through the Lua API)")
  end)

  it("describes the runtime with pcrun.info()", function()
    local info = pcrun.info()
    assert.are.equal(pcrun.version, info.version)
    assert.are.equal(jit.version, info.luajit)
    assert.are.equal(require("ffi").abi("gc64"), info.gc64)
    assert.are.equal(pcrun.arena().size, info.arena)
    assert.are.equal(pcrun.cpu_count(), info.cpus)
    assert.are.equal("boolean", type(info.ser_fast))
    -- The fast path's self-test holds on every LuaJIT 2.1 in GC64 mode,
    -- and on x86-64 without GC64 too (32-bit references).
    if info.gc64 or jit.arch == "x64" then assert.is_true(info.ser_fast) end
    local r = helpers.run_cli({ "-e",
      "io.write(tostring(require('pcrun').info().ser_fast))" }, nil,
      { env = { PCRUN_SER_NOFAST = 1 } })
    assert.are.equal("false", r.stdout)
  end)

  it("prints the usage with -h and --help", function()
    for _, opt in ipairs { "-h", "--help" } do
      local r = run { opt }
      assert.are.equal(0, r.status)
      has(r.stdout, "usage: pcrun", "-e", "-l", "-n", "--version", "--help")
      assert.are.equal("", r.stderr)
    end
  end)

  it("runs the script read from stdin with -", function()
    local r = run({ "-", "x", "y" }, "print('from stdin', arg[0], ...)\n")
    assert.are.equal(0, r.status)
    assert.are.equal("from stdin\t-\tx\ty\n", r.stdout)
  end)

  it("treats arguments after the script as the script's, not options",
     function()
    with_script("print(...)", function(path)
      local r = run { path, "-v", "-e", "x" }
      assert.are.equal(0, r.status)
      assert.are.equal("-v\t-e\tx\n", r.stdout)
    end)
  end)

  it("reports an uncaught error with a traceback and exits 1", function()
    with_script([[
      local function fail() error("boom at depth") end
      print("before")
      fail()
      print("after")
    ]], function(path)
      local r = run { path }
      assert.are.equal(1, r.status)
      assert.are.equal("before\n", r.stdout)
      has(r.stderr, path .. ":1: boom at depth", "stack traceback",
          "in function 'fail'")
    end)
  end)

  it("reports an error raised by -e with a traceback and exits 1",
     function()
    local r = run { "-e", "error('from e')" }
    assert.are.equal(1, r.status)
    has(r.stderr, "from e", "stack traceback")
  end)

  it("reports a non-string error object and exits 1", function()
    local r = run { "-e", "error({})" }
    assert.are.equal(1, r.status)
    has(r.stderr, "(error object is a table value)")
  end)

  it("exits 1 on a syntax error without running anything", function()
    with_script("print('ran')\nlocal x = = 1\n", function(path)
      local r = run { path }
      assert.are.equal(1, r.status)
      assert.are.equal("", r.stdout)
      has(r.stderr, path .. ":2:", "near '='")
    end)
  end)

  it("exits 1 with a message naming a missing script", function()
    local r = run { "/nonexistent/dir/script.lua" }
    assert.are.equal(1, r.status)
    has(r.stderr, "cannot open /nonexistent/dir/script.lua")
  end)

  it("exits 1 on an unknown option", function()
    local r = run { "--bogus", "-e", "print('ran')" }
    assert.are.equal(1, r.status)
    assert.are.equal("", r.stdout)
    has(r.stderr, "unrecognized option '--bogus'", "usage: pcrun")
  end)

  it("exits with the status given to os.exit", function()
    assert.are.equal(3, run({ "-e", "os.exit(3)" }).status)
    assert.are.equal(0, run({ "-e", "os.exit(true)" }).status)
    assert.are.equal(1, run({ "-e", "os.exit(false)" }).status)
  end)

  it("kills the script's children when an uncaught error ends it",
     function()
    with_script(SLEEPER .. [[
      local pcrun = require "pcrun"
      local p = pcrun.process(function() while true do sleep(0.05) end end)
      p:start()
      print(p.pid)
      error("giving up")
    ]], function(path)
      local r = run({ path }, nil, { timeout = 10 })
      assert.are.equal(1, r.status)
      has(r.stderr, "giving up")
      local pid = tonumber(r.stdout:match("%d+"))
      assert.is_number(pid)
      assert.is_nil(helpers.proc_stat(pid))  -- not even a zombie
    end)
  end)

  it("exits 130 on Ctrl-C (SIGINT) while blocked in recv and leaves no "
     .. "child", function()
    local h, me, c1, c2 = start_blocked()
    assert.are.equal(h.pid, me)
    assert.is_false(helpers.is_dead(c1))
    assert.is_false(helpers.is_dead(c2))
    helpers.kill(me, helpers.SIGINT)
    local r = helpers.wait_cli(h, 10)
    os.remove(h.script)
    assert.are.equal(130, r.status)  -- an exit, not a death by SIGINT
    assert.is_nil(r.stdout:find("not reached", 1, true))
    -- the children are gone, reaped by pcrun: not even zombies
    assert.is_nil(helpers.proc_stat(c1))
    assert.is_nil(helpers.proc_stat(c2))
  end)

  it("reports Ctrl-C as an 'interrupted' error with a traceback", function()
    local h, me = start_blocked()
    helpers.kill(me, helpers.SIGINT)
    local r = helpers.wait_cli(h, 10)
    os.remove(h.script)
    assert.are.equal(130, r.status)
    has(r.stderr, "interrupted", "stack traceback")
  end)

  it("lets a script catch Ctrl-C as an error, clear it and go on", function()
    local h, me, c1, c2 = start_blocked(nil, [[
      local ok, err = pcall(a.recv, a)
      print("caught", ok, err, pcrun.interrupted())
      pcrun.clear_interrupt()
      for _, p in ipairs(ps) do p:terminate() p:join() end
      print("codes", ps[1].exitcode, ps[2].exitcode)
    ]])
    helpers.kill(me, helpers.SIGINT)
    local r = helpers.wait_cli(h, 10)
    os.remove(h.script)
    assert.are.equal(0, r.status)
    has(r.stdout, "caught\tfalse\tinterrupted\ttrue\n", "codes\t-15\t-15")
    assert.is_nil(helpers.proc_stat(c1))
    assert.is_nil(helpers.proc_stat(c2))
  end)

  -- A pool whose two workers run 30 s tasks, 20 futures of them; each
  -- result is waited for under pcall, as scripts often do.
  local SWALLOW = [[
    local pcrun = require "pcrun"
    local pool = pcrun.pool(2)
    local fs = {}
    for i = 1, 20 do
      fs[i] = pool:submit(function(x)
        local t = os.time() + 30
        while os.time() < t do end
        return x
      end, i)
    end
    local pids = pool:pids()
    print("pids", pcrun.getpid(), pids[1], pids[2])
    io.stdout:flush()
  ]] .. STALL .. [[
    local failed, msgs = 0, {}
    for _, f in ipairs(fs) do
      local ok, err = pcall(f.result, f)
      if not ok then failed, msgs[err] = failed + 1, true end
    end
    for m in pairs(msgs) do print("msg", m) end
    local q = pcrun.queue()
    print("get", pcall(q.get, q))
    print("map", pcall(pool.map, pool, function(x) return x end, { 1 }))
    print("failed", failed)
  ]]

  local function start_swallow(tail)
    local path = helpers.script(SWALLOW .. (tail or ""))
    local h = helpers.spawn_cli({ path })
    h.script = path
    local me, w1, w2 = helpers.wait_output(h,
      "pids%s+(%d+)%s+(%d+)%s+(%d+)", 10)
    assert(me, "the script did not start")
    wait_ready(h, tonumber(me))  -- asleep in the first result
    return h, tonumber(me), tonumber(w1), tonumber(w2)
  end

  it("keeps Ctrl-C pending: a script that swallows it still stops, "
     .. "its tasks stopped, and exits 130", function()
    local h, me, w1, w2 = start_swallow()
    local t0 = helpers.now()
    helpers.kill(me, helpers.SIGINT)
    local r = helpers.wait_cli(h, 20)
    os.remove(h.script)
    assert.are.equal(130, r.status)
    assert.is_true(helpers.now() - t0 < 10, "the 30 s tasks ran on")
    -- every wait raised exactly "interrupted", no path in front
    has(r.stdout, "msg\tinterrupted\n", "get\tfalse\tinterrupted\n",
        "map\tfalse\tinterrupted\n", "failed\t20\n")
    assert.is_nil(r.stdout:find("msg\t[^i]"))
    assert.are.equal("pcrun: interrupted\n", r.stderr)
    assert.is_nil(helpers.proc_stat(w1))
    assert.is_nil(helpers.proc_stat(w2))
  end)

  it("cancels the pool's work at Ctrl-C, and a cleared script goes on "
     .. "with the same pool", function()
    local h, me = start_swallow([[
      pcrun.clear_interrupt()
      local t = os.time()
      print("again", #pool:map(function(x) return x end, { 1, 2, 3 }),
            os.time() - t < 5)
    ]])
    helpers.kill(me, helpers.SIGINT)
    local r = helpers.wait_cli(h, 20)
    os.remove(h.script)
    assert.are.equal(0, r.status)
    has(r.stdout, "failed\t20\n", "again\t3\ttrue\n")
  end)

  it("exits 130 at once on a second Ctrl-C, its children reaped",
     function()
    -- Swallows every error and never waits in pcrun. The outer pcall
    -- catches an interrupt raised between two turns of the inner loop.
    local h, me, c1, c2 = start_blocked(nil, [[
      local function busy() local t = os.clock() + 0.05
        while os.clock() < t do end end
      local function caught() print("caught") io.stdout:flush() end
      local said
      while true do
        local ok = pcall(function()
          if not said then said = true print("ready") io.stdout:flush() end
          while true do if not pcall(busy) then caught() end end
        end)
        if not ok then caught() end
      end
    ]], "\nready\n")
    helpers.kill(me, helpers.SIGINT)
    -- a second SIGINT sent before the first is handled would merge with it
    helpers.wait_output(h, "\ncaught\n", 10)
    if helpers.is_dead(me) then
      local r = helpers.wait_cli(h, 5)
      os.remove(h.script)
      error(("the first Ctrl-C ended it: status %s, stderr %q")
            :format(r.status, r.stderr))
    end
    helpers.kill(me, helpers.SIGINT)
    local r = helpers.wait_cli(h, 5)
    os.remove(h.script)
    assert.are.equal(130, r.status)
    has(r.stderr, "pcrun: interrupted\n")
    assert.is_nil(helpers.proc_stat(c1))
    assert.is_nil(helpers.proc_stat(c2))
  end)

  it("exits 130 when Ctrl-C reaches the whole process group", function()
    -- a terminal sends SIGINT to every process of the foreground group:
    -- the children ignore it and the parent tears them down
    local h, me, c1, c2 = start_blocked { pgroup = true }
    helpers.kill(-me, helpers.SIGINT)
    local r = helpers.wait_cli(h, 10)
    os.remove(h.script)
    assert.are.equal(130, r.status)
    assert.is_nil(helpers.proc_stat(c1))
    assert.is_nil(helpers.proc_stat(c2))
  end)

  it("waits for a child still running when the script ends", function()
    with_script(SLEEPER .. [[
      local pcrun = require "pcrun"
      local a, b = pcrun.pipe()
      pcrun.process(function() sleep(0.2) b:send("late") end):start()
      print("script done")
    ]], function(path)
      local r = run({ path }, nil, { timeout = 10 })
      assert.are.equal(0, r.status)
      assert.are.equal("script done\n", r.stdout)
    end)
  end)
end)
