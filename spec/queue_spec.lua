-- pcrun.queue and pcrun.joinable_queue: multi-producer, multi-consumer
-- queues in the shared arena.
local helpers = require "helpers"
local pcrun = require "pcrun"

local error_has = helpers.assert_error_has
local run = helpers.forked

describe("pcrun.queue", function()
  after_each(function()
    helpers.assert_no_children()
  end)

  it("is first in, first out within one process", function()
    local q = pcrun.queue()
    for i = 1, 1000 do q:put(i) end
    assert.equal(1000, q:qsize())
    for i = 1, 1000 do assert.equal(i, q:get()) end
    assert.is_true(q:empty())
  end)

  it("carries every kind of value, from a boolean to a 100 MB string",
     function()
    local q = pcrun.queue()
    local big = string.rep("0123456789", 10 * 1024 * 1024)
    local t = { a = 1, b = { 2, 3, "x" }, [true] = false }
    local values = { true, false, 0, -1.5, 2^53, "", "s\0z", t, big,
                     string.rep("y", 70000) }
    for _, v in ipairs(values) do q:put(v) end
    q:put(nil)
    for i, v in ipairs(values) do
      local got = q:get()
      if type(v) == "table" then
        assert.same(v, got)
      else
        assert.equal(v, got, "value " .. i)
      end
    end
    assert.is_nil(q:get(0))
    assert.is_true(q:empty())
  end)

  it("takes far more small items than one ring segment holds, without a "
     .. "consumer", function()
    local q = pcrun.queue()
    for i = 1, 300000 do q:put(i) end
    assert.equal(300000, q:qsize())
    local s = 0
    for _ = 1, 300000 do s = s + q:get() end
    assert.equal(300000 * 300001 / 2, s)
  end)

  it("carries a 1 MB table of numbers intact", function()
    local q = pcrun.queue()
    local t = {}
    for i = 1, 131072 do t[i] = i * 0.5 end
    q:put(t)
    assert.same(t, q:get())
  end)

  it("bounds itself by maxsize: put times out, put_nowait raises", function()
    local q = pcrun.queue(2)
    assert.equal(2, q:maxsize())
    assert.is_true(q:put(1))
    assert.is_true(q:put(2))
    assert.is_true(q:full())
    local t0 = helpers.now()
    local ok, why = q:put(3, 0.1)
    assert.is_nil(ok)
    assert.equal("timeout", why)
    assert.is_true(helpers.now() - t0 >= 0.09)
    error_has("pcrun.Queue:put_nowait: queue is full", q.put_nowait, q, 3)
    assert.equal(1, q:get())
    assert.is_true(q:put_nowait(3))
    assert.same({ 2, 3 }, { q:get(), q:get() })
  end)

  it("returns nil, 'timeout' from get(timeout) and raises from get_nowait "
     .. "when empty", function()
    local q = pcrun.queue()
    local t0 = helpers.now()
    local v, why = q:get(0.1)
    assert.is_nil(v)
    assert.equal("timeout", why)
    assert.is_true(helpers.now() - t0 >= 0.09)
    error_has("pcrun.Queue:get_nowait: queue is empty", q.get_nowait, q)
    q:put("x")
    assert.equal("x", q:get_nowait())
  end)

  it("drains what is left after close, then raises end of queue",
     function()
    local q = pcrun.queue()
    q:put(1)
    q:put(2)
    q:close()
    assert.is_true(q:closed())
    error_has("pcrun.Queue:put: queue is closed", q.put, q, 3)
    assert.equal(1, q:get())
    assert.equal(2, q:get())
    error_has("pcrun.Queue:get: queue is closed and empty", q.get, q)
    error_has("closed and empty", q.get, q, 1)
  end)

  it("shutdown() closes; shutdown(true) also drops what waits", function()
    local q = pcrun.queue()
    q:put(1) q:put("two") q:put({ 3 })
    assert.equal(0, q:shutdown())  -- as close: the items stay
    error_has("pcrun.Queue:put: queue is closed", q.put, q, 4)
    assert.equal(1, q:get())
    assert.equal(2, q:shutdown(true))
    error_has("pcrun.Queue:get: queue is closed and empty", q.get, q, 1)
    assert.equal(0, q:shutdown(true))  -- again: nothing left
    collectgarbage() collectgarbage()
    local used = pcrun.arena().used
    local r = pcrun.queue()
    r:put(pcrun.lock()) r:put(("x"):rep(100000))
    assert.equal(2, r:shutdown(true))
    collectgarbage() collectgarbage()
    r = nil  -- luacheck: ignore
    collectgarbage() collectgarbage()
    assert.equal(used, pcrun.arena().used)
    error_has("pcrun.Queue:shutdown: immediate must be a boolean, got number",
              q.shutdown, q, 1)
    error_has("pcrun.Queue:shutdown: call it as q:shutdown()",
              q.shutdown, {})
  end)

  it("wakes a consumer blocked in another process on shutdown(true)",
     run(20, function()
    local q = pcrun.queue()
    local p = pcrun.process(function()
      local ok, err = pcall(q.get, q, 10)
      os.exit((not ok and err:find("closed and empty", 1, true)) and 0 or 1)
    end):start()
    helpers.sleep(0.2)
    q:shutdown(true)
    assert.is_true(p:join(10))
    assert.equal(0, p.exitcode)
  end))

  it("iterates with iter() until closed and drained", function()
    local q = pcrun.queue()
    for i = 1, 5 do q:put(i) end
    q:close()
    local got = {}
    for v in q:iter() do got[#got + 1] = v end
    assert.same({ 1, 2, 3, 4, 5 }, got)
  end)

  it("wakes a consumer blocked in another process on put and on close",
     run(20, function()
    local q, back = pcrun.queue(), pcrun.queue()
    local p = pcrun.process(function()
      back:put(q:get())
      local ok, err = pcall(q.get, q)
      back:put(not ok and tostring(err) or "no error")
    end):start()
    helpers.sleep(0.1)
    q:put("hello")
    assert.equal("hello", back:get(5))
    helpers.sleep(0.1)
    q:close()
    assert.matches("closed and empty", back:get(5))
    p:join()
    assert.equal(0, p.exitcode)
  end))

  it("keeps numbers and other values in order through a small bounded "
     .. "queue between processes", run(30, function()
    local q = pcrun.queue(3)
    local p = pcrun.process(function()
      for i = 1, 20000 do
        if i % 7 == 0 then q:put({ i }) elseif i % 11 == 0 then q:put(tostring(i))
        else q:put(i) end
      end
    end):start()
    for i = 1, 20000 do
      local v = q:get(10)
      if type(v) == "table" then v = v[1] elseif type(v) == "string" then
        v = tonumber(v) end
      assert.equal(i, v)
    end
    p:join()
    assert.equal(0, p.exitcode)
  end))

  it("delivers every item exactly once, in order per producer, with 4 "
     .. "producers and 3 consumers", run(60, function()
    local q, out = pcrun.queue(64), pcrun.queue()
    local N, K = 4, 5000
    local ps = {}
    for w = 1, N do
      ps[#ps + 1] = pcrun.process(function()
        for i = 1, K do q:put({ w, i }) end
      end):start()
    end
    for _ = 1, 3 do
      ps[#ps + 1] = pcrun.process(function()
        local last, got = {}, {}
        for v in q:iter() do
          local w, i = v[1], v[2]
          assert((last[w] or 0) < i, "out of order")
          last[w] = i
          got[#got + 1] = w * 1e6 + i
        end
        out:put(got)
      end):start()
    end
    for w = 1, N do ps[w]:join() end
    q:close()
    local seen, total = {}, 0
    for _ = 1, 3 do
      for _, key in ipairs(out:get(20)) do
        assert.is_nil(seen[key])
        seen[key] = true
        total = total + 1
      end
    end
    for i = N + 1, #ps do ps[i]:join() end
    assert.equal(N * K, total)
  end))

  it("loses no message when a consumer blocked in get is killed",
     run(20, function()
    local q = pcrun.queue()
    local victims = {}
    for i = 1, 3 do
      victims[i] = pcrun.process(function() q:get() end):start()
    end
    helpers.sleep(0.2)  -- all three asleep in get
    for _, p in ipairs(victims) do p:kill() end
    for _, p in ipairs(victims) do p:join() end
    q:put("survivor")
    local back = pcrun.queue()
    local p = pcrun.process(function() back:put(q:get(5)) end):start()
    assert.equal("survivor", back:get(5))
    p:join()
    -- and the queue still works for this process
    q:put(1)
    assert.equal(1, q:get(1))
  end))

  it("stays usable and loses no whole message when a producer is killed "
     .. "mid-stream", run(30, function()
    for round = 1, 3 do
      local q, putting = pcrun.queue(), pcrun.event()
      local p = pcrun.process(function()
        local blob = string.rep("z", 100000 * round)
        for i = 1, 1e9 do
          q:put({ i, blob })
          if i == 1 then putting:set() end
        end
      end):start()
      -- Killed once it has put something: on a loaded machine the child
      -- may not have run at all after a fixed sleep.
      assert.is_true(putting:wait(20))
      helpers.sleep(0.05 * round)
      p:kill()
      p:join()
      local expect = 1
      while true do
        local v = q:get(0)
        if v == nil then break end
        assert.equal(expect, v[1])
        assert.equal(100000 * round, #v[2])
        expect = expect + 1
      end
      assert.is_true(expect > 1, "the producer put something")
      q:put("after")
      assert.equal("after", q:get(1))
    end
  end))

  it("crosses processes through pipes, queues and pool tasks",
     run(30, function()
    local q, holder = pcrun.queue(), pcrun.queue()
    holder:put(q)
    local q2 = holder:get()
    assert.equal(q, q2)
    q2:put("via a queue")
    assert.equal("via a queue", q:get())
    local a, b = pcrun.pipe()
    a:send(q)
    local p = pcrun.process(function()
      local qq = b:recv()
      qq:put("via a pipe")
    end):start()
    assert.equal("via a pipe", q:get(5))
    p:join()
    local pool = pcrun.pool(2)
    pool:map(function(x) q:put(x * 2) end, { 1, 2, 3 })  -- an upvalue
    pool:close()
    pool:join()
    local got = {}
    for _ = 1, 3 do got[#got + 1] = q:get(5) end
    table.sort(got)
    assert.same({ 2, 4, 6 }, got)
  end))

  it("frees its arena memory: a million queues created and dropped",
     run(120, function()
    for _ = 1, 1000 do pcrun.queue():put(1) end
    collectgarbage()
    collectgarbage()
    local before = pcrun.arena().used
    for i = 1, 1000000 do
      local q = pcrun.queue()
      if i % 1000 == 0 then q:put(i) end
    end
    collectgarbage()
    collectgarbage()
    assert.equal(before, pcrun.arena().used)
  end))

  it("gives back the objects in its unread items when it is freed",
     function()
    collectgarbage()
    collectgarbage()
    local before = pcrun.arena().used
    ;(function()
      local q = pcrun.queue()
      for _ = 1, 100 do  -- queues as items: busted keeps sent cdata alive
        q:put({ pcrun.queue(), pcrun.event(), n = 1 })
      end
      q:put(string.rep("y", 100000))  -- a big one, in its own block
      q:put({ pcrun.lock(), string.rep("z", 100000) })
    end)()
    collectgarbage()
    collectgarbage()
    assert.equal(before, pcrun.arena().used)
  end)

  it("frees a queue's unread items with it", function()
    collectgarbage()
    local before = pcrun.arena().used
    do
      local q = pcrun.queue()
      for i = 1, 1000 do q:put(i) end
      q:put(string.rep("x", 1e6))
    end
    collectgarbage()
    collectgarbage()
    assert.equal(before, pcrun.arena().used)
  end)

  it("gives back the references of the objects in a put that failed", function()
    local q = pcrun.queue(1)
    q:put(0)
    collectgarbage()
    local used = pcrun.arena().used
    for _ = 1, 50 do  -- not arrays: busted would keep sent cdata alive
      local x = pcrun.queue()
      assert.is_false(pcall(q.put_nowait, q, { x }))
      assert.is_nil(q:put({ x }, 0.001))
    end
    q:get()
    q:put(1)  -- the next message's start drops what a failure left
    collectgarbage()
    collectgarbage()
    assert.equal(used, pcrun.arena().used)
  end)

  it("checks its arguments", function()
    error_has("pcrun.queue: maxsize must be a positive integer",
              pcrun.queue, 0)
    error_has("pcrun.queue: maxsize must be a positive integer",
              pcrun.queue, 1.5)
    error_has("pcrun.queue: maxsize must be a positive integer",
              pcrun.queue, "3")
    error_has("pcrun.joinable_queue: maxsize must be a positive integer",
              pcrun.joinable_queue, -1)
    local q = pcrun.queue()
    error_has("pcrun.Queue:get: timeout must be a number, got string",
              q.get, q, "x")
    error_has("pcrun.Queue:put: timeout must be a number, got table",
              q.put, q, 1, {})
    error_has("pcrun.Queue:get: call it as obj:get(...)", q.get)
    error_has("pcrun.Queue:put: call it as obj:put(...)", q.put, {}, 1)
    error_has("pcrun.Queue:iter: call it as q:iter()", q.iter, {})
    error_has("value: cannot send a coroutine", q.put, q,
              coroutine.create(print))
    assert.is_true(q:empty())  -- a failed encode put nothing
    error_has("pcrun.JoinableQueue:task_done: call it as",
              pcrun.JoinableQueue.__index.task_done, q)
  end)
end)

describe("pcrun.joinable_queue", function()
  after_each(function()
    helpers.assert_no_children()
  end)

  it("counts puts until task_done, and join waits for them", run(20,
     function()
    local q = pcrun.joinable_queue()
    for i = 1, 10 do q:put(i) end
    assert.is_false(q:join(0.05))
    local p = pcrun.process(function()
      for _ = 1, 10 do
        q:get()
        q:task_done()
      end
    end):start()
    assert.is_true(q:join(10))
    p:join()
    error_has("pcrun.JoinableQueue:task_done: called more times than there "
              .. "were items", q.task_done, q)
  end))

  it("shutdown(true) counts the dropped items done, so join returns",
     function()
    local q = pcrun.joinable_queue()
    for i = 1, 5 do q:put(i) end
    assert.equal(1, q:get())
    assert.is_false(q:join(0.05))
    assert.equal(4, q:shutdown(true))
    assert.is_false(q:join(0.05))  -- the item taken is not done yet
    q:task_done()
    assert.is_true(q:join(1))
    error_has("pcrun.JoinableQueue:shutdown: immediate must be a boolean",
              q.shutdown, q, "yes")
  end)

  it("has the queue's methods", function()
    local q = pcrun.joinable_queue(1)
    q:put("a")
    assert.is_true(q:full())
    assert.equal("a", q:get_nowait())
    q:task_done()
    assert.is_true(q:join(0))
  end)
end)
