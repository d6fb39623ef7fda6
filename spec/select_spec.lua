-- pcrun.select: wait on queues, connections, events and processes at once.
local helpers = require "helpers"
local pcrun = require "pcrun"

local error_has = helpers.assert_error_has
local run = helpers.forked

describe("pcrun.select", function()
  after_each(function()
    helpers.assert_no_children()
  end)

  it("returns the objects that are ready now", function()
    local q1, q2, e = pcrun.queue(), pcrun.queue(), pcrun.event()
    q2:put(1)
    e:set()
    local r = pcrun.select({ q1, q2, e })
    assert.equal(2, #r)
    assert.equal(q2, r[1])
    assert.equal(e, r[2])
  end)

  it("returns an empty list on timeout", function()
    local t0 = helpers.now()
    local r = pcrun.select({ pcrun.queue(), pcrun.event() }, 0.1)
    assert.same({}, r)
    assert.is_true(helpers.now() - t0 >= 0.09)
    assert.same({}, pcrun.select({ pcrun.queue() }, 0))
  end)

  it("counts a closed queue as ready, so its consumer sees the end",
     function()
    local q = pcrun.queue()
    q:close()
    assert.equal(q, pcrun.select({ q }, 1)[1])
  end)

  it("wakes on a put from another process", run(20, function()
    local qs = { pcrun.queue(), pcrun.queue(), pcrun.queue() }
    local p = pcrun.process(function()
      helpers.sleep(0.1)
      qs[3]:put("third")
    end):start()
    local r = pcrun.select(qs, 10)
    assert.equal(1, #r)
    assert.equal(qs[3], r[1])
    assert.equal("third", r[1]:get())
    p:join()
  end))

  it("wakes on a connection's message and on a process's exit",
     run(20, function()
    local a, b = pcrun.pipe()
    local p = pcrun.process(function()
      helpers.sleep(0.1)
      b:send("hi")
      b:recv(10)  -- exits once told to: the first select sees only a
    end):start()
    local r = pcrun.select({ a, p }, 10)
    assert.same({ a }, r)
    assert.equal("hi", a:recv())
    a:send("go")
    r = pcrun.select({ a, p }, 10)
    assert.equal(p, r[#r])
    p:join()
  end))

  it("mixes queues, events and processes", run(20, function()
    local q, e = pcrun.queue(), pcrun.event()
    local p = pcrun.process(function()
      helpers.sleep(0.1)
      e:set()
    end):start()
    local r = pcrun.select({ q, e, p }, 10)
    assert.equal(e, r[1])
    p:join()
  end))

  -- The pass looks at e before p: an event set between those two looks
  -- (here by p's is_alive, standing in for a child that sets it and
  -- exits) must be reported with the process, not missed.
  it("reports what became ready while it looked", run(20, function()
    local e = pcrun.event()
    local p = pcrun.process(function() end):start()
    p:join()
    local is_alive = p.is_alive
    p.is_alive = function(self)
      e:set()
      return is_alive(self)
    end
    local r = pcrun.select({ e, p }, 10)
    assert.equal(2, #r)
    assert.equal(e, r[1])
    assert.equal(p, r[2])
  end))

  it("checks its arguments", function()
    error_has("pcrun.select: objects must be a non-empty list",
              pcrun.select, {})
    error_has("pcrun.select: objects must be a non-empty list",
              pcrun.select, "q")
    error_has("pcrun.select: item 2 is not a queue, connection, event or "
              .. "process", pcrun.select, { pcrun.queue(), 42 })
    error_has("pcrun.select: item 1 is a process that was never started",
              pcrun.select, { pcrun.process(print) })
    error_has("pcrun.select: timeout must be a number", pcrun.select,
              { pcrun.queue() }, "1")
    local a, b = pcrun.pipe(false)
    error_has("pcrun.select: item 1 is not a readable connection",
              pcrun.select, { b })
    a:close()
  end)
end)
