-- pcrun.transport_local: the interface between the pool's scheduler and
-- its workers (docs/transport.md), driven directly as the scheduler and a
-- second transport (MPI, issue 12) rely on it. The pool's behaviour on
-- top of it is pool_spec's.
local helpers = require "helpers"
local pcrun = require "pcrun"
local tl = require "pcrun.transport_local"

local forked = helpers.forked

-- A transport with a single worker; the slot is a plain table, as the
-- scheduler's are.
local function one(opts)
  opts = opts or {}
  local T = tl.new{ n = 1, size = 1, id = 1, initializer = opts.init,
                    initargs = { n = 0 } }
  local slot = { index = 1, t = T }
  T:spawn(slot)
  return T, slot
end

-- Wait for slot's next event (recv never blocks).
local function event(T, slot, secs)
  local deadline = helpers.now() + (secs or 10)
  while helpers.now() < deadline do
    local i = tl.wait({ slot }, 0.5, 0)
    if i then
      local ev, v = T:recv(slot)
      if ev then return ev, v end
    end
  end
  error("no event from the worker")
end

local function double(x) return x * 2 end

describe("pcrun.transport_local", function()
  it("runs a batch and replies with {id, results, errors, seconds}",
     forked(20, function()
    local T, slot = one()
    assert.is_number(slot.pid)
    assert.is_true(T:send(slot, { { 7, 1, { 1, 2, 3 }, 3, 1, double } }))
    local ev, msg = event(T, slot)
    assert.equal("reply", ev)
    assert.equal(7, msg[1][1])
    assert.same({ 2, 4, 6 }, msg[1][2])
    assert.is_number(msg[1][4])
    -- the function is cached by id: a later batch names it only
    assert.is_true(T:send(slot, { { 8, 1, { 5 }, 1, 1 } }))
    ev, msg = event(T, slot)
    assert.same({ 10 }, msg[1][2])
    T:stop(slot)
    assert.is_nil(slot.pid)
    T:close()
  end))

  it("reports a death with its exit code, chunk and item; the slot is down",
     forked(20, function()
    local T, slot = one()
    local pid = slot.pid
    local function die(x) if x == 3 then os.exit(5) end return x end
    assert.is_true(T:send(slot, { { 11, 1, { 1, 2, 3, 4 }, 4, 1, die } }))
    local ev, info = event(T, slot)
    assert.equal("dead", ev)
    assert.same({ pid = pid, code = 5, running = 11, at = 3 }, info)
    assert.is_nil(slot.pid)
    -- a replacement in the same slot
    T:spawn(slot)
    assert.is_true(slot.pid ~= pid)
    assert.is_true(T:send(slot, { { 12, 2, { 4 }, 1, 1, double } }))
    assert.equal("reply", (event(T, slot)))
    T:close()
  end))

  it("kill: the death comes back as an event; close reaps the rest",
     forked(20, function()
    local T, slot = one()
    local function spin() while true do end end
    assert.is_true(T:send(slot, { { 1, 1, { 0 }, 1, 1, spin } }))
    -- kill it once it runs the chunk (its running word is set), however
    -- late it starts
    local deadline = helpers.now() + 10
    while T.words[0] == 0 and helpers.now() < deadline do
      helpers.sleep(0.01)
    end
    T:kill(slot)
    local ev, info = event(T, slot)
    assert.equal("dead", ev)
    assert.equal(-9, info.code)
    assert.equal(1, info.running)
    T:spawn(slot)
    T:close()
    assert.equal(0, #helpers.children())
  end))

  it("send: nil and the error for a batch that cannot be encoded",
     forked(20, function()
    local T, slot = one()
    local ok, err = T:send(slot, { { 1, 1, { coroutine.create(print) }, 1, 1,
                                     double } })
    assert.is_nil(ok)
    helpers.assert_has(tostring(err), "coroutine")
    assert.has_error(function() T:check({ coroutine.create(print) }, "args") end)
    T:check({ 1, "x" }, "args")
    T:close()
  end))

  it("an initializer that raises is an 'init' event", forked(20, function()
    local T, slot = one{ init = function() error("no config") end }
    local ev, err = event(T, slot)
    assert.equal("init", ev)
    helpers.assert_has(err, "no config")
    T:close()
  end))

  it("close is a no-op in a forked child", forked(20, function()
    local T, slot = one()
    local pid = slot.pid
    local p = pcrun.process(function() T:close() end)
    p:start()
    p:join()
    assert.is_false(helpers.is_dead(pid))
    T:close()
    assert.is_true(helpers.is_dead(pid))
  end))
end)

describe("pcrun.transport_local.wait over two transport classes", function()
  -- A class with no descriptor to sleep on (as MPI's): its select polls.
  local function fakeclass()
    local cls = { blocking = false, calls = 0 }
    function cls.select(slots, timeout)
      cls.calls = cls.calls + 1
      assert.equal(0, timeout)  -- never waits in a mixed wait
      for k, s in ipairs(slots) do
        if s.at and helpers.now() >= s.at then return k end
      end
      return nil
    end
    return cls
  end

  local function localslot()
    local a, b = pcrun.pipe()
    return { t = { class = tl }, conn = a }, b
  end

  it("wakes on the other class's event while the pipe is silent",
     forked(20, function()
    local cls = fakeclass()
    local l = localslot()
    local r = { t = { class = cls }, at = helpers.now() + 0.05 }
    local t0 = helpers.now()
    assert.equal(2, tl.wait({ l, r }, 5, 0))
    assert.is_true(helpers.now() - t0 < 2)
    assert.is_true(cls.calls > 1)  -- polled between short waits
  end))

  it("wakes on the pipe with the other class silent", forked(20, function()
    local l, peer = localslot()
    local r = { t = { class = fakeclass() } }
    peer:send("hello")
    assert.equal(2, tl.wait({ r, l }, 5, 0))
  end))

  it("returns nil once the timeout passes", forked(20, function()
    local l = localslot()
    local r = { t = { class = fakeclass() } }
    local t0 = helpers.now()
    assert.is_nil(tl.wait({ l, r }, 0.2, 0))
    local dt = helpers.now() - t0
    assert.is_true(dt >= 0.19 and dt < 2, "waited " .. dt)
  end))
end)
