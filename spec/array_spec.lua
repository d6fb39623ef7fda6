-- pcrun.array and pcrun.value: typed memory in the shared arena.
local helpers = require "helpers"
local pcrun = require "pcrun"
local ffi = require "ffi"

local error_has = helpers.assert_error_has
local run = helpers.forked

pcall(ffi.cdef, "typedef struct { double x, y; int32_t tag; } pcr_spec_pt;")

describe("pcrun.array", function()
  after_each(function()
    helpers.assert_no_children()
  end)

  it("is 0-based, zero-filled, with its length and an ffi pointer",
     function()
    local a = pcrun.array("double", 5)
    assert.equal(5, #a)
    assert.equal(5, a:len())
    for i = 0, 4 do assert.equal(0, a[i]) end
    a[4] = 2.5
    assert.equal(2.5, a.ptr[4])
    assert.is_true(ffi.istype("double *", a.ptr))
    assert.equal("double", a:ctype())
    assert.same({ 0, 0, 0, 0, 2.5 }, a:totable())
  end)

  it("takes an initial value: a number, a 1-based or a 0-based table",
     function()
    assert.same({ 7, 7, 7 }, pcrun.array("int32_t", 3, 7):totable())
    assert.same({ 1, 2, 3 }, pcrun.array("int32_t", 3, { 1, 2, 3 }):totable())
    assert.same({ 1, 2, 0 }, pcrun.array("uint8_t", 3, { [0] = 1, 2 })
                                 :totable())
    assert.same({ 255, 0 }, pcrun.array("uint8_t", 2, { 255 }):totable())
  end)

  it("holds structs declared with ffi.cdef", run(20, function()
    local a = pcrun.array("pcr_spec_pt", 4)
    a[2].x, a[2].y, a[2].tag = 1.5, -2, 9
    local p = pcrun.process(function() a[3].tag = a[2].tag * 2 end):start()
    p:join()
    assert.equal(18, a[3].tag)
    assert.equal(-2, a[2].y)
  end))

  it("is shared: writes in a child are seen by the parent and back",
     run(20, function()
    local a = pcrun.array("int64_t", 1000)
    local written, checked = pcrun.event(), pcrun.event()
    local p = pcrun.process(function()
      for i = 0, 999 do a[i] = i * i end
      written:set()
      checked:wait(10)
      if a[0] ~= -1 then os.exit(3) end
    end):start()
    assert.is_true(written:wait(10))
    for i = 0, 999 do assert.equal(i * i, tonumber(a[i])) end
    a[0] = -1
    checked:set()
    p:join()
    assert.equal(0, p.exitcode)
  end))

  it("is passed by reference through a queue, a pipe and a pool task, "
     .. "whatever its size", run(60, function()
    local a = pcrun.array("double", 16 * 1024 * 1024)  -- 128 MiB
    local q = pcrun.queue()
    local used = pcrun.arena().used
    q:put(a)
    assert.equal(used, pcrun.arena().used)  -- no copy went into the queue
    local b = q:get()
    b[123] = 4.5
    assert.equal(4.5, a[123])
    assert.equal(tostring(a.ptr), tostring(b.ptr))
    local x, y = pcrun.pipe()
    x:send(a)
    assert.equal(4.5, y:recv(5)[123])
    local pool = pcrun.pool(2)
    local n = pool:map(function(i)
      a[i] = i  -- a crosses as an upvalue of the task
      return #a
    end, { 1, 2, 3 })
    pool:close()
    pool:join()
    assert.same({ #a, #a, #a }, n)
    assert.same({ 1, 2, 3 }, { a[1], a[2], a[3] })
    -- and as an argument, through starmap
    local got = pcrun.pool(2)
    local s = got:starmap(function(arr, i) arr[i] = -i return arr[i] end,
                          { { a, 10 }, { a, 11 } })
    got:close()
    got:join()
    assert.same({ -10, -11 }, s)
    assert.equal(-11, a[11])
  end))

  -- Run by the CLI: busted caches every value given to ffi.typeof (to
  -- allow redefinitions), and the serializer asks the type of each cdata it
  -- sends, so under busted a sent array would never be collected.
  it("gives its memory back after pool tasks used it, even when a worker "
     .. "calls os.exit", function()
    local r = helpers.run_cli({ "-e", [[
      local pcrun = require "pcrun"
      collectgarbage()
      local before = pcrun.arena().used
      ;(function()
        local a, q = pcrun.array("double", 1000, 1), pcrun.queue()
        local pool = pcrun.pool(2)
        for _ = 1, 5 do
          pool:starmap(function(arr, qq, i) qq:put(arr[i]) end,
                       { { a, q, 1 }, { a, q, 2 } })
        end
        for _ = 1, 10 do assert(q:get(5) == 1) end
        local f = pool:submit(function(arr) arr[0] = 2 os.exit(3) end, a)
        assert(not pcall(f.result, f))
        pool:close()
        pool:join()
        assert(a[0] == 2)
      end)()
      collectgarbage()
      collectgarbage()
      io.write(pcrun.arena().used - before)
    ]] }, nil, { timeout = 60 })
    assert.equal(0, r.status, r.stderr)
    assert.equal("0", r.stdout)
  end)

  it("gives its memory back in the collection that finds it unreachable",
     function()
    collectgarbage()
    collectgarbage()
    local before = pcrun.arena().used
    ;(function()
      local a = pcrun.array("double", 1000, 1)
      a[0] = 2
    end)()
    collectgarbage()  -- one: two would hide a second cycle's delay
    assert.equal(before, pcrun.arena().used)
  end)

  it("survives pcrun.encode decoded twice or never, and refuses untrusted "
     .. "input", function()
    local a = pcrun.array("int32_t", 4, 7)
    local s = pcrun.encode(a)
    error_has("pcrun.decode: a pcrun.Array needs {trusted = true}",
              pcrun.decode, s)
    local b = pcrun.decode(s, { trusted = true })
    local c = pcrun.decode(s, { trusted = true })
    b, c = nil, nil
    collectgarbage()
    collectgarbage()
    assert.equal(7, a[3])  -- still alive: each decode took its own reference
    pcrun.encode(pcrun.queue())  -- never decoded: nothing held
  end)

  it("checks bounds and index types", function()
    local a = pcrun.array("int32_t", 3)
    error_has("pcrun.Array: index 3 out of range [0, 3)",
              function() return a[3] end)
    error_has("pcrun.Array: index -1 out of range [0, 3)",
              function() a[-1] = 1 end)
    error_has("pcrun.Array: index must be a number, got boolean",
              function() return a[true] end)
    assert.is_nil(a.nosuchmethod)
    error_has("pcrun.Array:fill: cannot convert 'string'", a.fill, a, "x")
    assert.same({ 5, 5, 5 }, a:fill(5):totable())
  end)

  it("checks its arguments", function()
    error_has("pcrun.array: unknown ctype 'no_such_t'", pcrun.array,
              "no_such_t", 3)
    error_has("pcrun.array: ctype must be a string or an ffi ctype, got nil",
              pcrun.array)
    error_has("pcrun.array: n must be a non-negative integer", pcrun.array,
              "double", -1)
    error_has("pcrun.array: n must be a non-negative integer", pcrun.array,
              "double", 1.5)
    error_has("pcrun.array: init must be a table or a number, got string",
              pcrun.array, "double", 2, "x")
    error_has("pcrun.array: out of shared arena space", pcrun.array,
              "double", 2^46)
    assert.equal(0, #pcrun.array(ffi.typeof("int16_t"), 0))
  end)

  it("frees its memory: a million arrays created and dropped",
     run(120, function()
    collectgarbage()
    collectgarbage()
    local before = pcrun.arena().used
    for i = 1, 1000000 do
      local a = pcrun.array("double", 16)
      a[i % 16] = i
    end
    collectgarbage()
    collectgarbage()
    assert.equal(before, pcrun.arena().used)
  end))
end)

describe("pcrun.value", function()
  after_each(function()
    helpers.assert_no_children()
  end)

  it("loads, stores, adds and compares-and-swaps", function()
    local v = pcrun.value("int32_t", 5)
    assert.equal(5, v:load())
    assert.equal(5, v:add(2))
    assert.equal(7, v:load())
    assert.is_false(v:cas(5, 0))
    assert.is_true(v:cas(7, 0))
    assert.equal(0, v:load())
    v:store(-3)
    assert.equal(-3, v:load())
    local d = pcrun.value("double", 0.5)
    assert.equal(0.5, d:add(0.25))
    assert.equal(0.75, d:load())
    assert.is_true(d:cas(0.75, 1))
    assert.equal(0, pcrun.value("uint64_t"):load())
    assert.equal(255, pcrun.value("uint8_t", 255):load())
    assert.equal(1.5, d:ptr()[0] + 0.5)
  end)

  it("keeps counts exact: 4 processes x 10000 atomic adds", run(60,
     function()
    local i, f = pcrun.value("int64_t", 0), pcrun.value("double", 0)
    local ps = {}
    for k = 1, 4 do
      ps[k] = pcrun.process(function()
        for _ = 1, 10000 do
          i:add(1)
          f:add(0.5)
        end
      end):start()
    end
    for _, p in ipairs(ps) do p:join() end
    assert.equal(40000, i:load())
    assert.equal(20000, f:load())
  end))

  it("crosses processes through a queue", run(20, function()
    local v, q = pcrun.value("int32_t", 1), pcrun.queue()
    q:put(v)
    local p = pcrun.process(function() q:get():add(41) end):start()
    p:join()
    assert.equal(42, v:load())
  end))

  it("checks its arguments", function()
    error_has("pcrun.value: ctype must be an integer or floating-point type",
              pcrun.value, "pcr_spec_pt")
    error_has("pcrun.value: unknown ctype", pcrun.value, "nope_t")
    error_has("pcrun.value: init must be a number, got string",
              pcrun.value, "double", "1")
    local v = pcrun.value("double")
    error_has("pcrun.Value:add: argument 1 must be a number, got nil", v.add, v)
    error_has("pcrun.Value:cas: argument 2 must be a number, got string",
              v.cas, v, 1, "2")
    error_has("pcrun.Value:store: argument 1 must be a number", v.store, v)
    error_has("pcrun.Value:load: call it as v:load(...)", v.load, {})
  end)
end)
