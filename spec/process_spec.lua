-- pcrun.process: Python's multiprocessing.Process for one Lua function.
local helpers = require "helpers"
local pcrun = require "pcrun"

local has = helpers.assert_has
local error_has = helpers.assert_error_has

-- A loop that waits without burning a CPU: for children that must stay
-- alive until the test signals them.
local SLEEPER = [[
local ffi = require "ffi"
pcall(ffi.cdef, "int poll(void *fds, unsigned long nfds, int timeout);")
local function sleep(s) ffi.C.poll(nil, 0, s * 1000) end
]]

local function sleep_forever()
  while true do helpers.sleep(0.05) end
end

describe("pcrun.process", function()
  after_each(function()
    helpers.assert_no_children()
  end)

  it("runs fn in a child with the given arguments", function()
    local a, b = pcrun.pipe()
    local p = pcrun.process(function(conn, x, s, y)
      conn:send(x + y)
      conn:send(s)
      conn:send(conn == b and "same" or "other")
    end, b, 40, "hi", 2)
    p:start()
    assert.are.equal(42, a:recv(5))
    assert.are.equal("hi", a:recv(5))
    assert.are.equal("same", a:recv(5))
    assert.is_true(p:join(5))
    assert.are.equal(0, p.exitcode)
    a:close()
    b:close()
  end)

  it("passes nil arguments and trailing nils through", function()
    local a, b = pcrun.pipe()
    local p = pcrun.process(function(conn, x, y, z)
      conn:send(select("#", x, y, z) == 3 and x == nil and z == nil
                and "ok" or "bad")
      conn:send(y)
    end, b, nil, 7, nil):start()
    assert.are.equal("ok", a:recv(5))
    assert.are.equal(7, a:recv(5))
    assert.is_true(p:join(5))
    a:close()
    b:close()
  end)

  it("runs fn in a separate process with its own pid", function()
    local a, b = pcrun.pipe()
    local p = pcrun.process(function() b:send(pcrun.getpid()) end)
    assert.is_nil(p.pid)
    p:start()
    assert.is_number(p.pid)
    assert.are_not.equal(pcrun.getpid(), p.pid)
    assert.are.equal(p.pid, a:recv(5))
    assert.is_true(p:join(5))
    a:close()
    b:close()
  end)

  it("does not share globals with the parent after the fork", function()
    _G.pcrun_spec_value = 1
    local a, b = pcrun.pipe()
    local p = pcrun.process(function()
      b:send(_G.pcrun_spec_value)   -- inherited from the parent
      _G.pcrun_spec_value = 2       -- changes only the child's copy
    end):start()
    assert.are.equal(1, a:recv(5))
    assert.is_true(p:join(5))
    assert.are.equal(1, _G.pcrun_spec_value)
    _G.pcrun_spec_value = nil
    a:close()
    b:close()
  end)

  it("returns self from start so calls can chain", function()
    local p = pcrun.process(function() end)
    assert.are.equal(p, p:start())
    assert.is_true(p:join(5))
  end)

  it("has exitcode 0 after fn returns", function()
    local p = pcrun.process(function() return 5 end):start()
    assert.is_true(p:join(5))
    assert.are.equal(0, p.exitcode)
  end)

  it("leaves exitcode nil until the process has been joined", function()
    local p = pcrun.process(sleep_forever)
    assert.is_nil(p.exitcode)
    p:start()
    assert.is_nil(p.exitcode)
    p:kill()
    assert.is_true(p:join(5))
    assert.are.equal(-9, p.exitcode)
  end)

  it("has the code given to os.exit as exitcode", function()
    for _, n in ipairs { 0, 3, 255 } do
      local p = pcrun.process(function() os.exit(n) end):start()
      assert.is_true(p:join(5))
      assert.are.equal(n, p.exitcode)
    end
  end)

  it("has exitcode 1 when fn raises an error", function()
    local p = pcrun.process(function()
      -- keep busted's output clean: the report goes to io.stderr
      io.stderr = assert(io.open("/dev/null", "w"))  -- luacheck: ignore 122
      error("expected failure")
    end):start()
    assert.is_true(p:join(5))
    assert.are.equal(1, p.exitcode)
  end)

  it("writes the error and a traceback to the child's stderr", function()
    local script = helpers.script [[
      local pcrun = require "pcrun"
      local function inner() error("boom in the child") end
      local p = pcrun.process(function() inner() end):start()
      assert(p:join(10))
      print("exitcode", p.exitcode)
    ]]
    local r = helpers.run_cli { script }
    os.remove(script)
    assert.are.equal(0, r.status)
    assert.are.equal("exitcode\t1\n", r.stdout)
    has(r.stderr, "boom in the child", "stack traceback", "in function 'inner'")
  end)

  it("has exitcode -15 after terminate", function()
    local p = pcrun.process(sleep_forever):start()
    p:terminate()
    assert.is_true(p:join(5))
    assert.are.equal(-15, p.exitcode)
  end)

  it("has exitcode -9 after kill", function()
    local p = pcrun.process(sleep_forever):start()
    p:kill()
    assert.is_true(p:join(5))
    assert.are.equal(-9, p.exitcode)
  end)

  it("ignores terminate and kill once the process has ended", function()
    local p = pcrun.process(function() end):start()
    assert.is_true(p:join(5))
    p:terminate()
    p:kill()
    assert.are.equal(0, p.exitcode)
  end)

  it("returns false from join(timeout) while the process runs", function()
    local p = pcrun.process(sleep_forever):start()
    local t0 = helpers.now()
    assert.is_false(p:join(0.2))
    assert.is_true(helpers.now() - t0 >= 0.19)  -- it did wait
    assert.is_false(p:join(0))
    assert.is_nil(p.exitcode)
    p:terminate()
    assert.is_true(p:join(5))
  end)

  it("returns true from join on every call once ended", function()
    local p = pcrun.process(function() os.exit(4) end):start()
    assert.is_true(p:join(5))
    assert.is_true(p:join())
    assert.is_true(p:join(0))
    assert.are.equal(4, p.exitcode)
  end)

  it("reports is_alive true while running and false after", function()
    local a, b = pcrun.pipe()
    -- The child keeps to end b and the parent to end a: a child reading
    -- on a could take its own "up" before the parent saw it.
    local p = pcrun.process(function()
      b:send("up")
      b:recv()  -- until the parent says stop
    end):start()
    assert.are.equal("up", a:recv(5))
    assert.is_true(p:is_alive())
    a:send("stop")
    assert.is_true(p:join(5))
    assert.is_false(p:is_alive())
    a:close()
    b:close()
  end)

  it("reports is_alive false for a child that ended unjoined", function()
    local p = pcrun.process(function() end):start()
    assert.is_true(helpers.wait_dead(p.pid, 5))
    assert.is_false(p:is_alive())
    assert.are.equal(0, p.exitcode)  -- is_alive reaped it
  end)

  it("raises when started twice", function()
    local p = pcrun.process(function() end):start()
    error_has("pcrun.Process:start: a process can only be started once",
              function() p:start() end)
    assert.is_true(p:join(5))
    error_has("can only be started once", function() p:start() end)
  end)

  it("lists the children that still run in active_children", function()
    helpers.with_timeout(20, function()
      local base = #pcrun.active_children()
      local a = pcrun.process(sleep_forever):start()
      local b = pcrun.process(function() end):start()
      assert.is_true(helpers.wait_dead(b.pid, 5))
      local kids = pcrun.active_children()  -- reaps b
      assert.are.equal(base + 1, #kids)
      local found = false
      for _, k in ipairs(kids) do if k == a then found = true end end
      assert.is_true(found)
      assert.are.equal(0, b.exitcode)
      a:kill()
      assert.is_true(a:join(5))
      assert.are.equal(base, #pcrun.active_children())
    end)
  end)

  it("names the current and parent processes", function()
    helpers.with_timeout(20, function()
      local me = pcrun.current_process()
      assert.are.equal(pcrun.Process, getmetatable(me))
      assert.are.equal(pcrun.getpid(), me.pid)
      assert.is_true(me:is_alive())
      error_has("pcrun.Process:join: not a child of this process",
                me.join, me)
      local q = pcrun.queue()
      local p = pcrun.process(function()
        local c, par = pcrun.current_process(), pcrun.parent_process()
        q:put({ c.name, c.pid, par.name, par.pid, par:is_alive(),
                #pcrun.active_children() })
      end)
      p.name = "worker-a"
      p:start()
      assert.are.same({ "worker-a", p.pid, me.name, pcrun.getpid(), true, 0 },
                      q:get(10))
      assert.is_true(p:join(5))
      assert.is_truthy(pcrun.process(function() end).name:find("^Process%-%d+$"))
      -- pool workers: name, pid and worker index
      local pool = pcrun.pool(2)
      local got = pool:map(function()
        local c = pcrun.current_process()
        return { c.name, c.worker, c.pid, pcrun.parent_process().pid }
      end, { 1, 2, 3, 4 }, 1)
      local pids = {}
      for _, pid in ipairs(pool:pids()) do pids[pid] = true end
      for _, g in ipairs(got) do
        assert.are.equal("PoolWorker-" .. g[2], g[1])
        assert.is_true(pids[g[3]])
        assert.are.equal(pcrun.getpid(), g[4])
      end
      pool:close()
      pool:join()
    end)
  end)

  it("close releases an ended process; its methods then raise", function()
    helpers.with_timeout(20, function()
      local p = pcrun.process(sleep_forever):start()
      error_has("pcrun.Process:close: the process is still running",
                p.close, p)
      p:kill()
      assert.is_true(p:join(5))
      p:close()
      error_has("pcrun.Process:join: the process is closed", p.join, p)
      error_has("pcrun.Process:is_alive: the process is closed",
                p.is_alive, p)
      error_has("pcrun.Process:kill: the process is closed", p.kill, p)
      local q = pcrun.process(function() end)
      q:close()  -- never started: allowed, as in Python
      error_has("pcrun.Process:start: the process is closed", q.start, q)
      error_has("pcrun.Process:close: call it as p:close()", p.close, {})
    end)
  end)

  it("is not alive before start, as in Python", function()
    local p = pcrun.process(function() end)
    assert.is_false(p:is_alive())
    p:start()
    assert.is_true(p:join(5))
    assert.is_false(p:is_alive())
    error_has("pcrun.Process:is_alive: call it as p:is_alive()",
              p.is_alive, {})
  end)

  it("raises when joined, tested or signalled before start", function()
    local p = pcrun.process(function() end)
    error_has("pcrun.Process:join: process not started",
              function() p:join() end)
    error_has("pcrun.Process:terminate: process not started",
              function() p:terminate() end)
    error_has("pcrun.Process:kill: process not started",
              function() p:kill() end)
  end)

  it("raises when a method is called with a dot", function()
    local p = pcrun.process(function() end)
    error_has("pcrun.Process:start: call it as p:start()",
              function() p.start() end)
    p:start()
    error_has("pcrun.Process:join: call it as p:join()",
              function() p.join() end)
    assert.is_true(p:join(5))
  end)

  it("raises when join's timeout is not a number", function()
    local p = pcrun.process(function() end):start()
    error_has("pcrun.Process:join: timeout must be a number",
              function() p:join("1") end)
    error_has("pcrun.Process:join: timeout must be a number",
              function() p:join(0 / 0) end)
    assert.is_true(p:join(5))
  end)

  it("runs a 'module.function' string", function()
    local a, b = pcrun.pipe()
    local p = pcrun.process("helpers.send_back", b, "by name", 2, 3)
    p:start()
    assert.are.equal("by name", a:recv(5))
    assert.are.equal(5, a:recv(5))
    assert.is_true(p:join(5))
    assert.are.equal(0, p.exitcode)
    a:close()
    b:close()
  end)

  it("runs a function of a standard library by name", function()
    local p = pcrun.process("os.exit", 6):start()
    assert.is_true(p:join(5))
    assert.are.equal(6, p.exitcode)
  end)

  it("fails the child when the named function does not exist", function()
    local script = helpers.script [[
      local pcrun = require "pcrun"
      local p = pcrun.process("os.no_such_function"):start()
      assert(p:join(10))
      local q = pcrun.process("no_such_module.fn"):start()
      assert(q:join(10))
      print(p.exitcode, q.exitcode)
    ]]
    local r = helpers.run_cli { script }
    os.remove(script)
    assert.are.equal(0, r.status)
    assert.are.equal("1\t1\n", r.stdout)
    has(r.stderr, "'os.no_such_function' is not a function",
        "module 'no_such_module' not found")
  end)

  it("raises an error naming pcrun.process for a bad fn", function()
    for _, bad in ipairs { 42, true, {}, "nodot" } do
      local err = error_has("pcrun.process: fn must be a function or a "
                            .. "'module.function' string, got " .. type(bad),
                            function() pcrun.process(bad) end)
      has(err, "process_spec.lua:")  -- blamed on the caller
    end
    error_has("pcrun.process: fn must be", function() pcrun.process() end)
  end)

  it("shows pid and state in tostring", function()
    local p = pcrun.process(function() os.exit(2) end)
    has(tostring(p), "pcrun.Process", "new")
    p:start()
    assert.is_true(p:join(5))
    has(tostring(p), "pcrun.Process(pid=" .. p.pid, "exitcode=2")
  end)

  it("runs many processes at once and joins each", function()
    local a, b = pcrun.pipe()
    local ps = {}
    for i = 1, 8 do
      ps[i] = pcrun.process(function() b:send(i); os.exit(i) end):start()
    end
    local seen, joined, codes = {}, {}, {}
    for _ = 1, 8 do seen[a:recv(5)] = true end
    for i = 1, 8 do
      joined[i] = ps[i]:join(5)
      codes[i] = ps[i].exitcode
    end
    a:close()
    b:close()
    for i = 1, 8 do
      assert.is_true(seen[i])
      assert.is_true(joined[i])
    end
    assert.are.same({ 1, 2, 3, 4, 5, 6, 7, 8 }, codes)
  end)

  it("keeps the exit code of a process that ended before another started",
     function()
    local p = pcrun.process(function() os.exit(3) end):start()
    assert.is_true(helpers.wait_dead(p.pid, 5))  -- ended, not yet joined
    local q = pcrun.process(function() end):start()
    assert.is_true(q:join(5))
    assert.is_true(p:join(5))
    assert.are.equal(3, p.exitcode)
    assert.is_false(p:is_alive())
  end)

  it("lets a child start and join its own children", function()
    local a, b = pcrun.pipe()
    local p = pcrun.process(function()
      local q = pcrun.process(function() os.exit(9) end):start()
      assert(q:join(5))
      b:send(q.exitcode)
    end):start()
    assert.are.equal(9, a:recv(5))
    assert.is_true(p:join(5))
    assert.are.equal(0, p.exitcode)
    a:close()
    b:close()
  end)

  it("reaps a dropped process that ended when the next one starts",
     function()
    local p = pcrun.process(function() end):start()
    local pid = p.pid
    p = nil  -- luacheck: ignore 311 (dropped on purpose)
    collectgarbage()
    assert.is_true(helpers.wait_dead(pid, 5))
    local q = pcrun.process(function() end):start()
    assert.is_true(helpers.wait_gone(pid, 1))
    assert.is_true(q:join(5))
  end)

  it("counts the CPUs of the affinity mask in cpu_count", function()
    local f = assert(io.popen("nproc"))
    local n = tonumber(f:read("*l"))
    f:close()
    assert.are.equal(n, pcrun.cpu_count())
    -- and the mask as the kernel reports it
    local list = helpers.read_file("/proc/self/status")
                   :match("Cpus_allowed_list:%s*(%S+)")
    local count = 0
    for range in list:gmatch("[^,]+") do
      local lo, hi = range:match("^(%d+)%-(%d+)$")
      count = count + (lo and tonumber(hi) - tonumber(lo) + 1 or 1)
    end
    assert.are.equal(count, pcrun.cpu_count())
  end)

  it("counts one CPU when the mask allows only one", function()
    local f = io.popen("command -v taskset")
    local taskset = f:read("*l")
    f:close()
    if not taskset then pending("taskset is not installed") return end
    local out = io.popen(("taskset -c 0 %q -e %q"):format(helpers.bin,
                  "print(require('pcrun').cpu_count())"))
    local s = out:read("*a")
    out:close()
    assert.are.equal("1\n", s)
  end)

  it("kills the child when the parent dies", function()
    local script = helpers.script(SLEEPER .. [[
      local pcrun = require "pcrun"
      local p = pcrun.process(function()
        while true do sleep(0.05) end
      end):start()
      print("child", p.pid)
      io.stdout:flush()
      p:join()
    ]])
    local h = helpers.spawn_cli { script }
    local pid = tonumber(helpers.wait_output(h, "child%s+(%d+)\n", 10))
    local was_alive = pid and not helpers.is_dead(pid)
    helpers.kill(h.pid, helpers.SIGKILL)
    local r = helpers.wait_cli(h, 5)
    os.remove(script)
    assert.is_number(pid)
    assert.is_true(was_alive)
    assert.are.equal(-9, r.status)
    assert.is_true(helpers.wait_dead(pid, 1))
  end)

  it("leaves no zombie once dropped processes are collected and the "
     .. "script exits", function()
    local script = helpers.script [[
      local pcrun = require "pcrun"
      for i = 1, 3 do
        local p = pcrun.process(function() end):start()
        print(p.pid)
      end
      local q = pcrun.process(function() os.exit(1) end):start()
      print(q.pid)
      q = nil
      collectgarbage()
      collectgarbage()
    ]]
    local r = helpers.run_cli { script }
    os.remove(script)
    assert.are.equal(0, r.status)
    local n = 0
    for pid in r.stdout:gmatch("%d+") do
      n = n + 1
      -- a zombie left unreaped would have been re-parented to us
      assert.is_nil(helpers.proc_stat(tonumber(pid)))
    end
    assert.are.equal(4, n)
  end)

  it("waits for running children when the script ends, as Python does",
     function()
    local mark = os.tmpname()
    os.remove(mark)
    local script = helpers.script(SLEEPER .. ([[
      local pcrun = require "pcrun"
      pcrun.process(function()
        sleep(0.3)
        local f = io.open(%q, "w") f:write("done") f:close()
      end):start()
    ]]):format(mark))
    local r = helpers.run_cli { script }
    os.remove(script)
    assert.are.equal(0, r.status)
    assert.are.equal("done", helpers.read_file(mark))
    os.remove(mark)
  end)

  it("terminates daemon children when the script ends", function()
    local script = helpers.script(SLEEPER .. [[
      local pcrun = require "pcrun"
      local p = pcrun.process(function() while true do sleep(0.05) end end)
      p.daemon = true
      p:start()
      print(p.pid)
    ]])
    local r = helpers.run_cli({ script }, nil, { timeout = 10 })
    os.remove(script)
    assert.are.equal(0, r.status)
    local pid = tonumber(r.stdout:match("%d+"))
    assert.is_number(pid)
    assert.is_nil(helpers.proc_stat(pid))
  end)
end)
