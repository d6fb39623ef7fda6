-- pcrun.dict: a key-value table in the shared arena that every process
-- reads and writes, with no server process.
local helpers = require "helpers"
local pcrun = require "pcrun"

local error_has = helpers.assert_error_has
local run = helpers.forked

local function gc()
  collectgarbage()
  collectgarbage()
end

-- Every entry of a dict against its keys and length.
local function consistent(d)
  local t, keys = d:totable(), d:keys()
  local n = 0
  for _ in pairs(t) do n = n + 1 end
  assert.equal(n, #keys)
  assert.equal(n, d:len())
  for _, k in ipairs(keys) do assert.is_not_nil(d:get(k)) end
  return t, n
end

describe("pcrun.dict", function()
  after_each(function()
    helpers.assert_no_children()
  end)

  it("reads and writes by index, get, set and delete", function()
    local d = pcrun.dict()
    assert.equal("pcrun.Dict", getmetatable(d).__name)
    assert.is_nil(d.hits)
    d.hits = 0
    d["/etc/hosts"] = { size = 123, mtime = 1700000000 }
    assert.equal(0, d.hits)
    assert.same({ size = 123, mtime = 1700000000 }, d["/etc/hosts"])
    assert.equal("dflt", d:get("nope", "dflt"))
    assert.equal(0, d:get("hits", "dflt"))
    d:set("x", "y")
    assert.equal("y", d.x)
    assert.equal(3, d:len())
    assert.equal(3, #d)
    assert.is_true(d:delete("x"))
    assert.is_false(d:delete("x"))
    d.hits = nil
    assert.is_nil(d.hits)
    assert.equal(1, d:len())
    d:clear()
    assert.equal(0, d:len())
    assert.same({}, d:totable())
  end)

  it("keeps strings, numbers and booleans apart as keys, as a table does",
     function()
    local d = pcrun.dict()
    d[1] = "number one"
    d["1"] = "string one"
    d[true] = "yes"
    d[false] = "no"
    d[1.5] = "one and a half"
    d[-0.0] = "zero"
    assert.equal("number one", d[1])
    assert.equal("string one", d["1"])
    assert.equal("yes", d[true])
    assert.equal("no", d[false])
    assert.equal("one and a half", d[1.5])
    assert.equal("zero", d[0])
    local t = d:totable()
    assert.same({ [1] = "number one", ["1"] = "string one", [true] = "yes",
                  [false] = "no", [1.5] = "one and a half", [0] = "zero" }, t)
    local keys = d:keys()
    table.sort(keys, function(a, b)
      return type(a) .. tostring(a) < type(b) .. tostring(b)
    end)
    assert.same({ false, true, 0, 1, 1.5, "1" }, keys)
  end)

  it("round-trips values of every kind", function()
    local d = pcrun.dict()
    local cyc = { name = "c" }
    cyc.self = cyc
    local up = 41
    local values = {
      t = true, f = false, zero = 0, neg = -1.5, big = 2^53, inf = math.huge,
      ninf = -math.huge, tiny = 5e-324, empty = "", nul = "a\0b",
      long = string.rep("0123456789", 100000),
      tab = { 1, 2, { x = "y" }, [true] = false },
      i64 = 0x7fffffffffffffffLL,
    }
    for k, v in pairs(values) do d[k] = v end
    d.cyc = cyc
    d.fn = function(x) return x + up end
    d.nan = 0 / 0
    for k, v in pairs(values) do
      if type(v) == "table" then assert.same(v, d[k]) else
        assert.equal(v, d[k], k) end
    end
    local c = d.cyc
    assert.equal(c, c.self)
    assert.equal("c", c.name)
    assert.equal(42, d.fn(1))
    assert.is_true(d.nan ~= d.nan)
    local t = d:totable()
    assert.equal(values.long, t.long)
    assert.equal(42, t.fn(1))
    -- numbers change in place, other kinds replace the entry
    d.t = 1
    d.t = "s"
    d.t = { 1 }
    d.t = 2
    assert.equal(2, d.t)
  end)

  it("holds shared objects by reference: a queue, a lock, an array, a dict",
     run(30, function()
    local d, inner = pcrun.dict(), pcrun.dict()
    local q = pcrun.queue()
    d.q = q
    d.lock = pcrun.lock()
    d.arr = pcrun.array("int32_t", 4)
    d.inner = inner
    d.mixed = { queue = q, n = 3 }
    inner.x = 1
    q = nil
    gc()
    local p = pcrun.process(function()
      d.q:put("from the child")
      d.arr[2] = 7
      d.inner:add("x", 1)
      d.mixed.queue:put(d.mixed.n)
    end):start()
    p:join()
    assert.equal(0, p.exitcode)
    assert.equal("from the child", d.q:get(5))
    assert.equal(3, d.q:get(5))
    assert.equal(7, d.arr[2])
    assert.equal(2, inner.x)
    assert.equal(2, d.inner.x)
    assert.is_true(d.lock:acquire())
    d.lock:release()
  end))

  it("adds atomically, returns the new value and names the method and key "
     .. "when the value is not a number", function()
    local d = pcrun.dict()
    assert.equal(1, d:add("hits", 1))
    assert.equal(3.5, d:add("hits", 2.5))
    assert.equal(-1, d:add(7, -1))
    d.s = "x"
    d.b = true
    d.t = { 1 }
    d.fn = print
    error_has("pcrun.Dict:add: value at 's' is a string, not a number",
              d.add, d, "s", 1)
    error_has("pcrun.Dict:add: value at 'b' is a boolean, not a number",
              d.add, d, "b", 1)
    error_has("pcrun.Dict:add: value at 't' is a table, not a number",
              d.add, d, "t", 1)
    error_has("pcrun.Dict:add: value at 'fn' is a function, not a number",
              d.add, d, "fn", 1)
    error_has("pcrun.Dict:add: delta must be a number, got string",
              d.add, d, "hits", "1")
    assert.equal(3.5, d.hits)
  end)

  it("updates atomically; nil from fn deletes; an error leaves the value",
     function()
    local d = pcrun.dict()
    assert.equal(1, d:update("k", function(old) return (old or 0) + 1 end))
    assert.equal(2, d:update("k", function(old) return (old or 0) + 1 end))
    d:update("t", function(old)
      old = old or { n = 0 }
      old.n = old.n + 1
      return old
    end)
    assert.same({ n = 1 }, d.t)
    assert.is_nil(d:update("k", function() return nil end))
    assert.is_nil(d.k)
    d.k = 5
    error_has("boom", d.update, d, "k", function() error("boom") end)
    assert.equal(5, d.k)
    error_has("pcrun.Dict:update: fn must be a function, got number",
              d.update, d, "k", 3)
  end)

  it("compares and sets plain values", function()
    local d = pcrun.dict()
    assert.is_true(d:cas("k", nil, 1))
    assert.is_false(d:cas("k", nil, 2))
    assert.is_true(d:cas("k", 1, "a"))
    assert.is_false(d:cas("k", 1, "b"))
    assert.is_true(d:cas("k", "a", true))
    assert.is_true(d:cas("k", true, { 1, 2 }))
    assert.same({ 1, 2 }, d.k)
    error_has("pcrun.Dict:cas: old must be nil, a boolean, a number or a "
              .. "string, got table", d.cas, d, "k", {}, 1)
    d.k = 2
    assert.is_true(d:cas("k", 2, nil))
    assert.is_nil(d.k)
    assert.equal(0, d:len())
  end)

  it("iterates over a snapshot with pairs", function()
    local d = pcrun.dict()
    for i = 1, 100 do d[i] = i * i end
    local n = 0
    for k, v in d:pairs() do
      assert.equal(k * k, v)
      d[k] = nil  -- the snapshot does not change under the loop
      n = n + 1
    end
    assert.equal(100, n)
    assert.equal(0, d:len())
  end)

  it("says that a method's name reads the method; get reads the key",
     function()
    local d = pcrun.dict()
    d.keys = "a value"
    assert.equal("function", type(d.keys))
    assert.equal("a value", d:get("keys"))
    assert.same({ "keys" }, d:keys())
  end)

  it("waits for a key: set by another process, or a timeout",
     run(20, function()
    local d = pcrun.dict()
    local t0 = helpers.now()
    local ok, why = d:wait("k", 0.1)
    assert.is_nil(ok)
    assert.equal("timeout", why)
    assert.is_true(helpers.now() - t0 >= 0.09)
    local p = pcrun.process(function()
      helpers.sleep(0.2)
      d.k = "here"
    end):start()
    assert.is_true(d:wait("k", 10))
    assert.equal("here", d.k)
    assert.is_true(d:wait("k"))
    p:join()
  end))

  it("checks its arguments", function()
    local d = pcrun.dict()
    error_has("pcrun.dict: takes no arguments", pcrun.dict, {})
    error_has("pcrun.Dict:get: key must be a string, number or boolean, "
              .. "got table", function() return d[{}] end)
    error_has("pcrun.Dict:set: key must be a string, number or boolean, "
              .. "got nil", d.set, d, nil, 1)
    error_has("pcrun.Dict:set: key is NaN", function() d[0 / 0] = 1 end)
    error_has("pcrun.Dict:get: call it as d:get(...) on a pcrun.Dict",
              d.get, {}, "k")
    error_has("pcrun.Dict:len: call it as obj:len(...) on a pcrun.Dict",
              d.len, pcrun.queue())
    error_has("pcrun.Dict:wait: timeout must be a number, got string",
              d.wait, d, "k", "1")
    error_has({ "pcrun.Dict:set: value at 'co'", "cannot send a coroutine" },
              function() d.co = coroutine.create(print) end)
    assert.is_nil(d.co)
  end)

  it("sums 1M adds from 4 processes exactly", run(120, function()
    local d = pcrun.dict()
    local N, K = 4, 250000
    local ps = {}
    for w = 1, N do
      ps[w] = pcrun.process(function()
        for i = 1, K do
          d:add(i % 2 == 0 and "even" or 17, 1)
        end
        d:add("w" .. w, K)
      end):start()
    end
    for w = 1, N do
      ps[w]:join()
      assert.equal(0, ps[w].exitcode)
    end
    assert.equal(N * K / 2, d.even)
    assert.equal(N * K / 2, d[17])
    for w = 1, N do assert.equal(K, d["w" .. w]) end
  end))

  it("runs every method from several processes at once", run(120, function()
    local d, done = pcrun.dict(), pcrun.queue()
    local N, K = 4, 2000
    local ps = {}
    for w = 1, N do
      ps[w] = pcrun.process(function()
        local mine = "w" .. w
        for i = 1, K do
          d[mine .. ":" .. i] = { w = w, i = i, pad = ("x"):rep(i % 50) }
          local v = d:get(mine .. ":" .. i)
          assert(v.w == w and v.i == i and #v.pad == i % 50, "bad value")
          d:add("adds", 1)
          d:update("upd", function(old) return (old or 0) + 1 end)
          local old
          repeat old = d:get("cas") until d:cas("cas", old, (old or 0) + 1)
          d:update("pair", function(p)
            p = p or { 0, 0 }
            return { p[1] + 1, p[2] + 1 }
          end)
          if i % 2 == 0 then assert(d:delete(mine .. ":" .. (i - 1))) end
          if i % 200 == 0 then
            -- a snapshot is whole: every pair agrees with itself
            for k, v in d:pairs() do
              if k == "pair" then assert(v[1] == v[2], "torn pair") end
              if type(v) == "table" and v.w then
                assert(k == "w" .. v.w .. ":" .. v.i, "wrong entry")
              end
            end
            assert(#d:keys() >= 1 and d:len() >= 1)
          end
        end
        d["done" .. w] = true
        assert(d:wait("done" .. (w % N + 1), 30), "wait timed out")
        done:put(w)
      end):start()
    end
    for w = 1, N do
      ps[w]:join()
      assert.equal(0, ps[w].exitcode)
    end
    for _ = 1, N do done:get(5) end
    local total = N * K
    assert.equal(total, d.adds)
    assert.equal(total, d.upd)
    assert.equal(total, d:get("cas"))
    assert.same({ total, total }, d.pair)
    local t, n = consistent(d)
    assert.equal(N * K / 2 + 4 + N, n)
    for w = 1, N do
      for i = 2, K, 2 do
        assert.same({ w = w, i = i, pad = ("x"):rep(i % 50) },
                    t["w" .. w .. ":" .. i])
      end
    end
    d:clear()
    assert.equal(0, d:len())
  end))

  it("stays consistent when writers are SIGKILLed mid-write, again and again",
     run(240, function()
    local d = pcrun.dict()
    math.randomseed(7)
    for round = 1, 40 do
      local p = pcrun.process(function()
        local i = 0
        while true do
          i = i + 1
          local k = i % 3000
          if i % 5 == 0 then d[k] = nil
          elseif i % 7 == 0 then d[k] = i
          else d[k] = { k = k, n = i, pad = ("p"):rep(i % 300) } end
          d:add("n", 1)
          d:update("pair", function(p) p = p or { 0, 0 }
                                        return { p[1] + 1, p[2] + 1 } end)
          if i % 2500 == 0 then d:clear() end
        end
      end):start()
      helpers.sleep(0.005 + math.random() * 0.03)
      p:kill()
      p:join()
      assert.equal(-9, p.exitcode)
      local t = consistent(d)
      for k, v in pairs(t) do
        if type(k) == "number" then
          if type(v) == "table" then
            assert.equal(k, v.k)
            assert.equal(v.n % 300, #v.pad)
          else
            assert.equal("number", type(v))
          end
        end
      end
      if t.pair then assert.equal(t.pair[1], t.pair[2]) end
      -- every stripe takes writes again (a dead writer's lock recovered)
      for k = 1, 300 do d[k] = { k = k, n = round, pad = ("p"):rep(round) } end
      assert.equal(round, d[300].n, "round " .. round)
    end
    d:clear()
    assert.equal(0, d:len())
  end))

  it("is passed to pool tasks by reference", run(60, function()
    local d = pcrun.dict()
    local pool = pcrun.pool(2)
    pool:map(function(i) d:add("sum", i); d[i] = i * 2 end, { 1, 2, 3, 4, 5 })
    local back = pool:apply(function(dd) return dd.sum end, d)
    pool:close()
    pool:join()
    assert.equal(15, d.sum)
    assert.equal(15, back)
    for i = 1, 5 do assert.equal(i * 2, d[i]) end
  end))

  it("gives back all of its arena memory when dropped by every process",
     run(60, function()
    gc()
    local before = pcrun.arena().used
    ;(function()
      local d = pcrun.dict()
      for i = 1, 100000 do d[i] = i end
      for i = 1, 20000 do d["s" .. i] = ("v"):rep(i % 100) end
      for i = 1, 100 do d["t" .. i] = { i, pcrun.queue(), pcrun.event() } end
      d.inner = pcrun.dict()
      d.inner.x = { 1, 2, 3 }
      for i = 1, 50000 do d[i] = nil end
      for i = 1, 1000 do d["u" .. (i % 10)] = { i } end  -- replaced entries
      local p = pcrun.process(function()
        for i = 1, 1000 do d["child" .. i] = { i } end
        d.q = pcrun.queue()
      end):start()
      p:join()
      assert.equal(0, p.exitcode)
      assert.is_true(pcrun.arena().used > before)
    end)()
    gc()
    assert.equal(before, pcrun.arena().used)
    -- and a dict emptied by delete and clear gives back its entries
    local d = pcrun.dict()
    gc()
    local empty = pcrun.arena().used
    for i = 1, 10000 do d[i] = { i } end
    for i = 1, 10000 do d[i] = nil end
    assert.equal(empty, pcrun.arena().used)
    for i = 1, 10000 do d["k" .. i] = "v" .. i end
    d:clear()
    assert.equal(empty, pcrun.arena().used)
  end))
end)
