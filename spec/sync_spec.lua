-- Locks, reentrant locks, semaphores, events, conditions and barriers
-- shared between processes.
local helpers = require "helpers"
local pcrun = require "pcrun"

local error_has = helpers.assert_error_has
local run = helpers.forked

-- Start n processes running fn(i); join them all; return them.
local function each_process(n, fn)
  local ps = {}
  for i = 1, n do ps[i] = pcrun.process(fn, i):start() end
  for _, p in ipairs(ps) do p:join() end
  for _, p in ipairs(ps) do assert.equal(0, p.exitcode) end
  return ps
end

describe("pcrun.lock", function()
  after_each(function()
    helpers.assert_no_children()
  end)

  it("is acquired, released and reports its state", function()
    local l = pcrun.lock()
    assert.is_false(l:locked())
    assert.is_true(l:acquire())
    assert.is_true(l:locked())
    assert.is_true(l:owned())
    l:release()
    assert.is_false(l:locked())
    assert.is_true(l:acquire(0))
    l:release()
  end)

  it("refuses a second acquire by its holder instead of deadlocking",
     function()
    local l = pcrun.lock()
    l:acquire()
    error_has("pcrun.Lock:acquire: this process already holds the lock",
              l.acquire, l)
    assert.is_false(l:acquire(0))
    local t0 = helpers.now()
    assert.is_false(l:acquire(0.05))
    assert.is_true(helpers.now() - t0 >= 0.045)
    l:release()
  end)

  it("times out while another process holds it, then gets it",
     run(20, function()
    local l, ev, go = pcrun.lock(), pcrun.event(), pcrun.event()
    local p = pcrun.process(function()
      l:acquire()
      ev:set()
      go:wait(10)  -- holds it until the parent has timed out on it
      l:release()
    end):start()
    assert.is_true(ev:wait(5))
    assert.is_false(l:acquire(0.05))
    assert.is_false(l:owned())
    error_has("pcrun.Lock:release: this process does not hold the lock",
              l.release, l)
    go:set()
    assert.is_true(l:acquire(5))
    l:release()
    p:join()
  end))

  it("keeps counts exact: 4 processes x 2000 increments under the lock",
     run(60, function()
    local l = pcrun.lock()
    local a = pcrun.array("int64_t", 1)
    each_process(4, function()
      for _ = 1, 2000 do
        l:acquire()
        local v = a[0]
        a[0] = v + 1
        l:release()
      end
    end)
    assert.equal(8000, tonumber(a[0]))
  end))

  it("runs fn under with() and releases on error too", function()
    local l = pcrun.lock()
    local a, b = l:with(function(x, y)
      assert.is_true(l:owned())
      return x + y, "two"
    end, 1, 2)
    assert.same({ 3, "two" }, { a, b })
    assert.is_false(l:locked())
    error_has("boom", l.with, l, function() error("boom") end)
    assert.is_false(l:locked())
    error_has("pcrun.Lock:with: fn must be a function, got nil", l.with, l, nil)
  end)

  it("passes to the next acquirer, with a warning, when its holder dies",
     run(20, function()
    local l, ev = pcrun.lock(), pcrun.event()
    local p = pcrun.process(function()
      l:acquire()
      ev:set()
      helpers.sleep(60)
    end):start()
    assert.is_true(ev:wait(5))
    p:kill()
    p:join()
    local ok, why = l:acquire(5)
    assert.is_true(ok)
    assert.equal("owner died", why)
    assert.is_true(l:owned())
    l:release()
    assert.is_true(l:acquire(0))
  end))

  it("wakes a waiter blocked on it when its holder is killed",
     run(20, function()
    local l, ev, out = pcrun.lock(), pcrun.event(), pcrun.queue()
    local holder = pcrun.process(function()
      l:acquire()
      ev:set()
      helpers.sleep(60)
    end):start()
    assert.is_true(ev:wait(5))
    local waiter = pcrun.process(function()
      out:put({ l:acquire(10) })
    end):start()
    helpers.sleep(0.1)
    holder:kill()
    holder:join()
    assert.same({ true, "owner died" }, out:get(10))
    waiter:join()
  end))
end)

describe("pcrun.rlock", function()
  it("is reentrant for its holder and released as often as acquired",
     run(20, function()
    local r = pcrun.rlock()
    assert.is_true(r:acquire())
    assert.is_true(r:acquire())
    r:release()
    assert.is_true(r:owned())
    local out = pcrun.queue()
    local p = pcrun.process(function() out:put(r:acquire(0)) end):start()
    assert.is_false(out:get(5))
    p:join()
    r:release()
    assert.is_false(r:locked())
    error_has("pcrun.RLock:release: this process does not hold the lock",
              r.release, r)
    assert.equal(42, r:with(function() return r:with(function() return 42 end) end))
  end))
end)

describe("pcrun.semaphore", function()
  after_each(function()
    helpers.assert_no_children()
  end)

  it("counts acquires and releases", function()
    local s = pcrun.semaphore(2)
    assert.equal(2, s:get_value())
    assert.is_true(s:acquire())
    assert.is_true(s:acquire(0))
    assert.is_false(s:acquire(0))
    assert.is_false(s:acquire(0.02))
    s:release(2)
    assert.equal(2, s:get_value())
    assert.equal("x", s:with(function() return "x" end))
    assert.equal(2, s:get_value())
    assert.equal(1, pcrun.semaphore():get_value())
  end)

  it("bounds concurrency across processes", run(30, function()
    local s = pcrun.semaphore(2)
    local inside, peak = pcrun.value("int32_t", 0), pcrun.value("int32_t", 0)
    each_process(5, function()
      for _ = 1, 20 do
        s:with(function()
          local n = inside:add(1) + 1
          local m = peak:load()
          while n > m and not peak:cas(m, n) do m = peak:load() end
          helpers.sleep(0.001)
          inside:add(-1)
        end)
      end
    end)
    assert.equal(0, inside:load())
    assert.is_true(peak:load() <= 2)
    assert.equal(2, s:get_value())
  end))

  it("wakes a process blocked in acquire on release", run(20, function()
    local s, out = pcrun.semaphore(0), pcrun.queue()
    local p = pcrun.process(function() out:put(s:acquire(10)) end):start()
    helpers.sleep(0.1)
    s:release()
    assert.is_true(out:get(10))
    p:join()
  end))

  it("raises when a bounded semaphore is released too often", function()
    local b = pcrun.bounded_semaphore(1)
    error_has("pcrun.BoundedSemaphore:release: released more times than "
              .. "acquired", b.release, b)
    b:acquire()
    b:release()
    assert.equal(1, b:get_value())
    local s = pcrun.semaphore(0)
    s:release(3)  -- an unbounded one may go above its start value
    assert.equal(3, s:get_value())
  end)

  it("checks its arguments", function()
    error_has("pcrun.semaphore: value must be a non-negative integer",
              pcrun.semaphore, -1)
    error_has("pcrun.bounded_semaphore: value must be a non-negative "
              .. "integer", pcrun.bounded_semaphore, "2")
    local s = pcrun.semaphore()
    error_has("pcrun.Semaphore:release: n must be a positive integer",
              s.release, s, 0)
    error_has("pcrun.Semaphore:acquire: timeout must be a number",
              s.acquire, s, "soon")
  end)
end)

describe("pcrun.event", function()
  after_each(function()
    helpers.assert_no_children()
  end)

  it("is set, cleared and waited on", function()
    local e = pcrun.event()
    assert.is_false(e:is_set())
    assert.is_false(e:wait(0.02))
    e:set()
    assert.is_true(e:is_set())
    assert.is_true(e:wait())
    assert.is_true(e:wait(0))
    e:clear()
    assert.is_false(e:is_set())
  end)

  it("wakes every process waiting on it", run(20, function()
    local e, out = pcrun.event(), pcrun.queue()
    local ps = {}
    for i = 1, 3 do
      ps[i] = pcrun.process(function() out:put(e:wait(10)) end):start()
    end
    helpers.sleep(0.1)
    e:set()
    for _ = 1, 3 do assert.is_true(out:get(10)) end
    for _, p in ipairs(ps) do p:join() end
  end))
end)

describe("pcrun.condition", function()
  after_each(function()
    helpers.assert_no_children()
  end)

  it("hands items from a producer to a consumer with notify",
     run(20, function()
    local c = pcrun.condition()
    local box = pcrun.array("int32_t", 2)  -- [0] items ready, [1] done
    local p = pcrun.process(function()
      for _ = 1, 50 do
        c:with(function()
          box[0] = box[0] + 1
          c:notify()
        end)
      end
    end):start()
    local taken = 0
    while taken < 50 do
      c:acquire()
      assert.is_true(c:wait_for(function() return box[0] > 0 end, 10))
      taken = taken + box[0]
      box[0] = 0
      c:release()
    end
    p:join()
    assert.equal(50, taken)
  end))

  it("wakes all waiters with notify_all", run(20, function()
    local c, out = pcrun.condition(pcrun.lock()), pcrun.queue()
    local flag = pcrun.value("int32_t", 0)
    local ps = {}
    for i = 1, 3 do
      ps[i] = pcrun.process(function()
        c:with(function()
          out:put("waiting")
          out:put(c:wait_for(function() return flag:load() == 1 end, 10))
        end)
      end):start()
    end
    for _ = 1, 3 do assert.equal("waiting", out:get(10)) end
    c:with(function()
      flag:store(1)
      c:notify_all()
    end)
    for _ = 1, 3 do assert.is_true(out:get(10)) end
    for _, p in ipairs(ps) do p:join() end
  end))

  it("returns false from wait(timeout) and requires the lock", function()
    local c = pcrun.condition()
    error_has("pcrun.Condition:wait: the lock is not held by this process",
              c.wait, c, 0.01)
    error_has("pcrun.Condition:notify: the lock is not held",
              c.notify, c)
    c:acquire()
    local t0 = helpers.now()
    assert.is_false(c:wait(0.05))
    assert.is_true(helpers.now() - t0 >= 0.045)
    c:release()
    error_has("pcrun.condition: lock must be a pcrun.lock or pcrun.rlock",
              pcrun.condition, pcrun.semaphore())
  end)
end)

describe("pcrun.barrier", function()
  after_each(function()
    helpers.assert_no_children()
  end)

  it("releases all parties together, with distinct indices and the action "
     .. "run once", run(30, function()
    local runs = pcrun.value("int32_t", 0)
    local b = pcrun.barrier(4, function() runs:add(1) end)
    assert.equal(4, b:parties())
    local out = pcrun.queue()
    local ps = {}
    for i = 1, 3 do
      ps[i] = pcrun.process(function()
        for round = 1, 5 do out:put({ round, b:wait(10) }) end
      end):start()
    end
    local indices = {}
    for _ = 1, 5 do
      local idx = b:wait(10)
      indices[idx] = (indices[idx] or 0) + 1
    end
    for _, p in ipairs(ps) do p:join() end
    local per_round = {}
    for _ = 1, 15 do
      local r = out:get(5)
      per_round[r[1]] = (per_round[r[1]] or 0) + 1
      indices[r[2]] = (indices[r[2]] or 0) + 1
    end
    assert.same({ 3, 3, 3, 3, 3 }, per_round)
    assert.same({ [0] = 5, 5, 5, 5 }, indices)
    assert.equal(5, runs:load())
    assert.equal(0, b:n_waiting())
  end))

  it("uses its default timeout in wait, in every process", run(20,
     function()
    local b = pcrun.barrier(2, nil, 0.2)
    local t0 = helpers.now()
    error_has("pcrun.Barrier:wait: the barrier is broken", b.wait, b)
    local dt = helpers.now() - t0
    assert.is_true(dt >= 0.15 and dt < 5, "waited " .. dt)
    b:reset()
    -- a child that received it by message has the same default
    local q = pcrun.queue()
    q:put(b)
    local p = pcrun.process(function()
      local bb = q:get(5)
      local ok = pcall(bb.wait, bb)
      os.exit(ok and 1 or 0)
    end):start()
    assert.is_true(p:join(10))
    assert.are.equal(0, p.exitcode)
    b:reset()
    -- a timeout given to wait wins; both parties arriving pass
    local c = pcrun.barrier(2, nil, 0.05)
    local p2 = pcrun.process(function()
      helpers.sleep(0.3)
      c:wait(10)
    end):start()
    assert.is_number(c:wait(10))
    assert.is_true(p2:join(10))
    assert.are.equal(0, p2.exitcode)
    error_has("pcrun.barrier: timeout must be a non-negative number, got -1",
              pcrun.barrier, 2, nil, -1)
    error_has("pcrun.barrier: timeout must be a non-negative number, got "
              .. "string", pcrun.barrier, 2, nil, "1")
  end))

  it("breaks on a timeout, for every waiter, until reset", run(20, function()
    local b = pcrun.barrier(3)
    local out = pcrun.queue()
    local p = pcrun.process(function()
      out:put(select(2, pcall(b.wait, b, 10)))
    end):start()
    helpers.sleep(0.1)
    error_has("pcrun.Barrier:wait: the barrier is broken", b.wait, b, 0.05)
    assert.matches("the barrier is broken", out:get(10))
    p:join()
    assert.is_true(b:broken())
    error_has("the barrier is broken", b.wait, b, 1)
    b:reset()
    assert.is_false(b:broken())
    local b1 = pcrun.barrier(1)
    assert.equal(0, b1:wait())
  end))

  it("breaks when aborted and when the action fails", function()
    local b = pcrun.barrier(1, function() error("no luck") end)
    error_has("pcrun.Barrier:wait: the action failed", b.wait, b)
    assert.is_true(b:broken())
    local b2 = pcrun.barrier(2)
    b2:abort()
    error_has("the barrier is broken", b2.wait, b2)
  end)

  it("checks its arguments", function()
    error_has("pcrun.barrier: parties must be a positive integer",
              pcrun.barrier, 0)
    error_has("pcrun.barrier: action must be a function, got string",
              pcrun.barrier, 2, "f")
    local co = coroutine.create(print)
    collectgarbage()
    local used = pcrun.arena().used
    error_has("action<upvalue co>: cannot send a coroutine", pcrun.barrier, 2,
              function() return co end)
    assert.equal(used, pcrun.arena().used)
    local b = pcrun.barrier(2)
    error_has("pcrun.Barrier:wait: timeout must be a number", b.wait, b, "x")
    error_has("pcrun.Barrier:wait: call it as obj:wait(...)", b.wait, {})
  end)
end)

describe("shared objects", function()
  it("turn Ctrl-C into an 'interrupted' error in every blocking wait",
     function()
    local h = helpers.spawn_cli({ "-e", [[
      local pcrun = require "pcrun"
      local q, e, l = pcrun.queue(), pcrun.event(), pcrun.lock()
      local s, c, b = pcrun.semaphore(0), pcrun.condition(), pcrun.barrier(2)
      l:acquire()
      local waits = {
        function() return q:get() end,
        function() return e:wait() end,
        function() return l:acquire(60) end,
        function() return s:acquire() end,
        function() c:acquire() return c:wait() end,
        function() return b:wait() end,
      }
      for i, f in ipairs(waits) do
        io.write("ready", i, "\n") io.flush()
        -- stall as a CLI left waiting for a CPU would: Ctrl-C sent on the
        -- ready line alone lands before the pcall
        local t = os.clock() + 0.3
        while os.clock() < t do end
        local ok, err = pcall(f)
        pcrun.clear_interrupt()  -- else it stays pending: the next raises
        io.write("wait", i, " ", tostring(ok), " ", tostring(err), "\n")
        io.flush()
      end
    ]] })
    for i = 1, 6 do
      assert.is_not_nil(helpers.wait_output(h, "ready" .. i, 10))
      assert.is_true(helpers.wait_asleep(h.pid, 10), "asleep " .. i)
      helpers.kill(h.pid, helpers.SIGINT)
      assert.is_not_nil(helpers.wait_output(h, "wait" .. i .. " (%S+ [^\n]*)",
                                            10), "wait " .. i)
    end
    local r = helpers.wait_cli(h, 10)
    assert.equal(0, r.status, r.stderr)
    for i = 1, 6 do
      assert.matches("wait" .. i .. " false [^\n]*interrupted", r.stdout)
    end
  end)

  it("are freed when the last process drops them", function()
    collectgarbage()
    collectgarbage()
    local before = pcrun.arena().used
    for _ = 1, 100000 do
      local c = pcrun.condition()
      pcrun.barrier(2, function() end)
      pcrun.semaphore(3)
      c:acquire()
    end
    collectgarbage()
    collectgarbage()
    assert.equal(before, pcrun.arena().used)
  end)

  it("stay alive in a child after the parent drops its handle",
     run(20, function()
    local ev = pcrun.event()
    local go = pcrun.event()
    local p = pcrun.process(function()
      go:wait(10)
      ev:set()
    end):start()
    local weak = setmetatable({ ev }, { __mode = "v" })
    ev = nil
    collectgarbage()
    collectgarbage()
    assert.is_nil(weak[1])
    -- the child's reference keeps the event's memory; filling the arena
    -- with new objects must not hand it out again
    local keep = {}
    for i = 1, 1000 do keep[i] = pcrun.event() end
    go:set()
    p:join()
    assert.equal(0, p.exitcode)
    for i = 1, 1000 do assert.is_false(keep[i]:is_set()) end
  end))
end)
