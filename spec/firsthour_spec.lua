-- What a new user meets in the first hour (issue 11): functions that
-- cannot cross, imap_unordered's shape, strict options, error values,
-- futures at scale.
local helpers = require "helpers"
local pcrun = require "pcrun"
local ffi = require "ffi"

local has = helpers.assert_has

local mkpool, finish_all, forked = helpers.pool_tracker(pcrun)

local function range(n)
  local t = {}
  for i = 1, n do t[i] = i end
  return t
end

-- The error of fn(...), without the caller's position.
local function errof(fn, ...)
  local ok, err = pcall(fn, ...)
  assert(not ok, "expected an error, got none")
  return (tostring(err):gsub("^[^:]*%.lua:%d+: ", ""))
end

local LIB = "cannot send a userdata (an ffi.load library; load it inside "
            .. "the task or in the pool's initializer)"

describe("first hour", function()
  after_each(function()
    finish_all(false)
    helpers.assert_no_children()
  end)

  -- -- 1. a task function that cannot cross -------------------------------

  it("raises in the caller when a task function captures an ffi library, "
     .. "and the pool stays usable", forked(30, function()
    local z = ffi.load("z")
    local p = mkpool(2)
    local bad = function(x) return z and x end
    assert.are.equal("pcrun.Pool:map: fn: upvalue 'z': " .. LIB,
                     errof(p.map, p, bad, { 1, 2 }))
    assert.are.equal("pcrun.Pool:starmap: fn: upvalue 'z': " .. LIB,
                     errof(p.starmap, p, bad, { { 1 } }))
    assert.are.equal("pcrun.Pool:imap: fn: upvalue 'z': " .. LIB,
                     errof(p.imap, p, bad, { 1, 2 }))
    assert.are.equal("pcrun.Pool:imap_unordered: fn: upvalue 'z': " .. LIB,
                     errof(p.imap_unordered, p, bad, { 1, 2 }))
    assert.are.equal("pcrun.Pool:submit: fn: upvalue 'z': " .. LIB,
                     errof(p.submit, p, bad, 1))
    assert.are.equal("pcrun.Pool:apply: fn: upvalue 'z': " .. LIB,
                     errof(p.apply, p, bad, 1))
    -- every later call works
    assert.are.same({ 2, 4 }, p:map(function(x) return 2 * x end, { 1, 2 }))
    assert.are.equal(9, p:submit(function(x) return x * x end, 3):result())
    local n = 0
    for _ in p:imap(function(x) return x end, range(5)) do n = n + 1 end
    assert.are.equal(5, n)
  end))

  it("names the upvalue holding a ctype", forked(20, function()
    local T = ffi.typeof("uint8_t[?]")
    local p = mkpool(1)
    assert.are.equal("pcrun.Pool:map: fn: upvalue 'T': cannot send a ctype "
      .. "(ctype<unsigned char [?]>); send its declaration as a string and "
      .. "call ffi.typeof on the other side",
      errof(p.map, p, function(x) return T(x) end, { 1 }))
    assert.are.same({ 1 }, p:map(function(x) return x end, { 1 }))
  end))

  it("says that a pool cannot be sent when a task captures one",
     forked(20, function()
    local p = mkpool(1)
    assert.are.equal("pcrun.Pool:map: fn: upvalue 'p': a pcrun.Pool cannot "
      .. "be sent to another process (a task may create its own pool)",
      errof(p.map, p, function(x) return p:map(tostring, { x }) end, { 1 }))
    -- a worker may create its own pool
    local r = p:apply(function()
      local q = pcrun.pool(1)
      local v = q:map(function(x) return x + 1 end, { 1, 2 })
      q:terminate()
      return v[2]
    end)
    assert.are.equal(3, r)
  end))

  it("fails the tasks, not the pool, when an upvalue stops crossing later",
     forked(20, function()
    -- one task per worker: each map meets a fresh worker, sent fn anew
    local p = mkpool(1, { maxtasksperchild = 1 })
    local up = 1
    local fn = function(x) return up and x end
    assert.are.same({ 1 }, p:map(fn, { 1 }))
    up = coroutine.create(print)
    assert.are.equal("task 1: cannot send its function: pcrun.encode: "
      .. "fn<upvalue up>: cannot send a coroutine", errof(p.map, p, fn, { 1 }))
    assert.are.equal("pcrun.Pool:map: fn: upvalue 'up': cannot send a "
      .. "coroutine", errof(p.map, p, fn, { 1 }))
    assert.are.same({ 6 }, p:map(function(x) return x end, { 6 }))
  end))

  -- -- 2. imap and imap_unordered: index first ----------------------------

  it("imap_unordered yields index, result and a nil result does not end "
     .. "the loop", forked(20, function()
    local p = mkpool(2)
    local seen, nils = 0, 0
    for i, r, e in p:imap_unordered(function(x)
      if x % 3 == 0 then return nil end
      return x * 10
    end, range(200)) do
      assert.is_number(i)
      if r == nil then nils = nils + 1 else assert.are.equal(i * 10, r) end
      seen = seen + 1
      assert.is_nil(e)
    end
    assert.are.equal(200, seen)
    assert.are.equal(66, nils)
    -- the same shape from imap, in order
    local k = 0
    for i, r in p:imap(function(x) if x == 2 then return nil end return x end,
                       range(4)) do
      k = k + 1
      assert.are.equal(k, i)
      assert.are.equal(i ~= 2 and i or nil, r)
    end
    assert.are.equal(4, k)
  end))

  -- -- 4. error values cross whole ----------------------------------------

  it("brings a table error back whole, with worker, task and traceback",
     forked(20, function()
    local p = mkpool(1)
    local ok, err = pcall(p.map, p, function(x)
      if x == 2 then error({ code = 42, list = { 1, 2 } }) end
      return x
    end, { 1, 2, 3 })
    assert.is_false(ok)
    assert.are.equal(pcrun.TaskError, getmetatable(err))
    assert.are.same({ code = 42, list = { 1, 2 } }, err.value)
    assert.are.equal(1, err.worker)
    assert.are.equal(2, err.task)
    has(err.traceback, "stack traceback:", "firsthour_spec.lua")
    has(tostring(err), "worker 1: task 2: error object (table: ")
    -- futures: f:error() and f:result()
    local f = p:submit(function() error(42, 0) end)  -- level 0: no text
    local e = f:error()
    assert.are.equal(pcrun.TaskError, getmetatable(e))
    assert.are.equal(42, e.value)
    assert.are.equal(1, e.task)
    local rok, rerr = pcall(f.result, f)
    assert.is_false(rok)
    assert.are.equal(e, rerr)
    -- string errors keep their text
    local serr = p:submit(function() error("plain", 0) end):error()
    assert.are.equal("string", type(serr))
    has(serr, "worker 1: task 1: plain")
  end))

  it("brings a registered type's error back with its metatable",
     forked(20, function()
    local MyErr = { __name = "spec.MyErr" }
    MyErr.__index = MyErr
    MyErr.__tostring = function(e) return "MyErr " .. e.code end
    MyErr.__serialize = function(e) return e.code end
    MyErr.__deserialize = function(c) return setmetatable({ code = c }, MyErr) end
    pcrun.register_type("spec.MyErr", MyErr)
    local p = mkpool(1)
    local found
    for _, r in pairs({ pcall(p.map, p, function()
      error(setmetatable({ code = 7 }, MyErr))
    end, { 1 }) }) do
      if type(r) == "table" then found = r end
    end
    assert.are.equal(MyErr, getmetatable(found.value))
    assert.are.equal(7, found.value.code)
    has(tostring(found), "worker 1: task 1: MyErr 7")
    -- imap and imap_unordered raise it too
    local iok, ierr = pcall(function()
      for _ in p:imap_unordered(function() error({ k = "v" }) end, { 1 }) do
      end
    end)
    assert.is_false(iok)
    assert.are.equal("v", ierr.value.k)
  end))

  it("sends the text of an error value that cannot cross", forked(20, function()
    local p = mkpool(1)
    local err = p:submit(function() error({ co = coroutine.create(print) })
    end):error()
    assert.are.equal("string", type(err))
    has(err, "worker 1: task 1: table: ", "cannot send a coroutine")
    assert.are.same({ 1 }, p:map(function(x) return x end, { 1 }))
  end))

  -- -- 6. futures at scale -------------------------------------------------

  it("collects 100,000 futures with as_completed and wait", forked(120,
     function()
    local p = mkpool(2)
    local n = 100000
    local fs = {}
    for i = 1, n do fs[i] = p:submit(function(x) return x end, i) end
    local sum, count = 0, 0
    for f in pcrun.as_completed(fs) do
      sum, count = sum + f:result(), count + 1
    end
    assert.are.equal(n, count)
    assert.are.equal(n * (n + 1) / 2, sum)
    fs = {}
    for i = 1, n do fs[i] = p:submit(function(x) return x end, i) end
    local done, not_done = pcrun.wait(fs)
    assert.are.equal(n, #done)
    assert.are.equal(0, #not_done)
  end))
end)
