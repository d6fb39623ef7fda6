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

  -- -- 9. smaller ones ------------------------------------------------------

  it("says that workers were forked before a global was defined",
     forked(20, function()
    local p = mkpool(1)
    rawset(_G, "firsthour_later", function(x) return x end)
    local err = errof(p.map, p, function(x)
      return firsthour_later(x)  -- luacheck: ignore
    end, { 1 })
    rawset(_G, "firsthour_later", nil)
    has(err, "worker 1: task 1: ", "attempt to call global 'firsthour_later' "
        .. "(a nil value) (the workers were forked when the pool was "
        .. "created: a global defined later does not exist in them)")
  end))

  it("pcrun.now and pcrun.sleep", function()
    assert.are.equal(require("pcrun.core").now, pcrun.now)
    local t = pcrun.now()
    pcrun.sleep(0.05)
    assert.is_true(pcrun.now() - t >= 0.05)
    pcrun.sleep(0)
    for _, bad in ipairs { -1, "1", 0 / 0 } do
      assert.are.equal("pcrun.sleep: seconds must be a non-negative number",
                       errof(pcrun.sleep, bad))
    end
  end)

  it("pcrun.worker() gives a worker its index and pool", forked(20,
     function()
    assert.is_nil(pcrun.worker())
    local p = mkpool(2)
    local q = mkpool(1)
    local ws = p:map(function() pcrun.sleep(0.01) return pcrun.worker() end,
                     { 1, 2, 3, 4, 5, 6 }, 1)
    local idx = {}
    for _, w in ipairs(ws) do
      assert.are.equal(2, w.n)
      assert.are.equal(ws[1].pool, w.pool)
      idx[w.index] = true
    end
    assert.is_true(idx[1] or idx[2])
    for i in pairs(idx) do assert.is_true(i == 1 or i == 2) end
    local wq = q:apply(pcrun.worker)
    assert.are.equal(1, wq.index)
    assert.are_not.equal(ws[1].pool, wq.pool)
  end))

  it("says n and ptr of an array are read-only", function()
    local a = pcrun.array("double", 3)
    assert.are.equal("pcrun.Array: n is read-only",
                     errof(function() a.n = 10 end))
    assert.are.equal("pcrun.Array: ptr is read-only",
                     errof(function() a.ptr = nil end))
    assert.are.equal(3, a.n)
    assert.are.equal(3, #a)
    a[2] = 7
    assert.are.equal(7, a.ptr[2])
  end)

  it("refuses to encode a ctype with a message of its own", function()
    assert.are.equal("pcrun.encode: value: cannot send a ctype (ctype<"
      .. "unsigned char [?]>); send its declaration as a string and call "
      .. "ffi.typeof on the other side",
      errof(pcrun.encode, ffi.typeof("uint8_t[?]")))
    assert.are.equal("pcrun.encode: value.t: cannot send a ctype (ctype<"
      .. "int>); send its declaration as a string and call ffi.typeof on "
      .. "the other side", errof(pcrun.encode, { t = ffi.typeof("int") }))
  end)

  it("blames semaphore errors on the caller, as other constructors",
     function()
    for _, f in ipairs { pcrun.semaphore, pcrun.bounded_semaphore,
                         pcrun.queue } do
      local ok, err = pcall(function() f(-1) end)
      assert.is_false(ok)
      assert.is_truthy(err:find("^[^:]*firsthour_spec%.lua:%d+: pcrun%."),
                       err)
    end
  end)

  it("pcrun.with_pool closes and joins on return, terminates on error",
     forked(30, function()
    local pids
    local a, b = pcrun.with_pool(2, { chunksize = 2 }, function(p)
      pids = p:pids()
      return p:map(function(x) return x + 1 end, { 1, 2, 3 }), "two"
    end)
    assert.are.same({ 2, 3, 4 }, a)
    assert.are.equal("two", b)
    for _, pid in ipairs(pids) do assert.is_true(helpers.wait_gone(pid, 5)) end
    local seen
    local ok, err = pcall(pcrun.with_pool, 1, function(p)
      seen = p
      p:submit(function() pcrun.sleep(30) end)
      error({ why = "mine" })
    end)
    assert.is_false(ok)
    assert.are.equal("mine", err.why)
    assert.are.equal("terminated", seen.state)
    assert.are.equal(3, pcrun.with_pool(function(p)
      return p:apply(function() return 3 end)
    end))
    assert.are.equal("pcrun.with_pool: unknown option 'chunk_size' (did "
      .. "you mean 'chunksize'?)",
      errof(pcrun.with_pool, 1, { chunk_size = 1 }, print))
    assert.are.equal("pcrun.with_pool: expected ([n] [, opts], fn) with fn "
      .. "a function, got number", errof(pcrun.with_pool, 2))
    assert.are.equal(0, #helpers.children())
  end))

  -- -- 6. futures at scale -------------------------------------------------

  it("submits of one function travel together, and a cancelled one never "
     .. "runs", forked(30, function()
    local p = mkpool(1)
    local ran = pcrun.value("int64_t", 0)
    local block = p:submit(function() pcrun.sleep(0.3) end)  -- worker busy
    local fs = {}
    for i = 1, 200 do
      fs[i] = p:submit(function(x) ran:add(1) return x end, i)
    end
    local cancelled = 0
    for i = 2, 200, 2 do
      if fs[i]:cancel() then cancelled = cancelled + 1 end
    end
    assert.is_true(cancelled >= 90, "cancelled " .. cancelled)
    block:result()
    local sum, n = 0, 0
    for f in pcrun.as_completed(fs) do
      if not f:cancelled() then sum, n = sum + f:result(), n + 1 end
    end
    assert.are.equal(200 - cancelled, n)
    assert.are.equal(200 - cancelled, ran:load())
    for i = 2, 200, 2 do
      if fs[i]:cancelled() then
        assert.are.equal("cancelled", fs[i]:error())
      end
    end
  end))

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
