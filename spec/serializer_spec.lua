-- Specs of the value serializer: pcrun.encode / pcrun.decode (runtime/ser.c).
local pcrun = require "pcrun"
local ffi = require "ffi"
local helpers = require "helpers"

local TRUSTED = {trusted = true}

local function rt(v, opts)
  return pcrun.decode(pcrun.encode(v), opts)
end

local function errof(f, ...)
  local ok, msg = pcall(f, ...)
  assert.is_false(ok, "expected an error")
  return tostring(msg)
end

local function has(msg, part)
  assert(string.find(msg, part, 1, true),
         string.format("%q does not contain %q", msg, part))
end

-- A userdata with no hook that is not in package.loaded.
local function proxy()
  return newproxy(true)
end

ffi.cdef [[
  struct pcr_spec_point { double x, y; };
  struct pcr_spec_node { int v; struct pcr_spec_node *next; };
  typedef struct { int32_t a; uint8_t b[3]; } pcr_spec_rec;
  struct pcr_spec_vls { int n; double v[?]; };
]]

describe("serializer", function()
  it("round-trips nil and booleans", function()
    assert.is_nil(rt(nil))
    assert.equal(true, rt(true))
    assert.equal(false, rt(false))
  end)

  it("round-trips integers and doubles exactly", function()
    local xs = {0, 1, 63, 64, -1, -64, 2^31 - 1, -2^31, 2^31, -2^31 - 1,
                2^53, -2^53, 0.5, -1.25, 1e300, -1e-300, 5e-324, math.pi}
    for _, x in ipairs(xs) do assert.equal(x, rt(x)) end
  end)

  it("keeps the sign of negative zero", function()
    assert.equal(-math.huge, 1 / rt(-0.0))
    assert.equal(math.huge, 1 / rt(0.0))
  end)

  it("keeps NaN and infinities", function()
    local n = rt(0 / 0)
    assert.is_true(n ~= n)
    assert.equal(math.huge, rt(math.huge))
    assert.equal(-math.huge, rt(-math.huge))
  end)

  it("round-trips strings including NUL bytes and all byte values", function()
    local bytes = {}
    for i = 0, 255 do bytes[#bytes + 1] = string.char(i) end
    for _, s in ipairs({"", "a", "a\0b", ("x"):rep(63), ("y"):rep(64),
                        table.concat(bytes)}) do
      assert.equal(s, rt(s))
    end
  end)

  it("round-trips a 100 MB string", function()
    local s = ("0123456789abcdef"):rep(100 * 2^20 / 16)
    local e = pcrun.encode(s)
    assert.is_true(#e < #s + 16)
    assert.equal(s, pcrun.decode(e))
    e = nil
    collectgarbage()
  end)

  it("round-trips nested tables with array and hash parts", function()
    local t = {1, 2, 3, "four", {5, {6}}, a = 1, b = {c = {d = "e"}},
               [1.5] = "x", [true] = false, [-1] = 0, [0] = "zero"}
    assert.same(t, rt(t))
  end)

  it("round-trips tables with holes and large sizes", function()
    local t = {1, nil, 3, nil, 5}
    assert.same(t, rt(t))
    local big = {}
    for i = 1, 1000 do big[i] = i * 3 end
    for i = 1, 300 do big["k" .. i] = i end
    assert.same(big, rt(big))
  end)

  it("preserves shared references as one table", function()
    local shared = {1, 2}
    local t = rt({a = shared, b = shared, c = {shared}})
    assert.is_true(rawequal(t.a, t.b))
    assert.is_true(rawequal(t.a, t.c[1]))
    assert.same({1, 2}, t.a)
  end)

  it("preserves cycles", function()
    local a, b = {name = "a"}, {name = "b"}
    a.next, b.next, a.self = b, a, a
    local x = rt(a)
    assert.is_true(rawequal(x, x.self))
    assert.is_true(rawequal(x, x.next.next))
    assert.equal("b", x.next.name)
  end)

  it("preserves a table used as a key and as a value", function()
    local k = {}
    local x = rt({[k] = k})
    local key, val = next(x)
    assert.is_true(rawequal(key, val))
  end)

  it("shares a long string reached twice", function()
    local s = ("z"):rep(1000)
    local e = pcrun.encode({s, s, s})
    assert.is_true(#e < 1100)
    assert.same({s, s, s}, pcrun.decode(e))
  end)

  it("copies a plain metatable with the table when trusted", function()
    local mt = {__index = {kind = "thing"}}
    local x = rt(setmetatable({}, mt), TRUSTED)
    assert.equal("thing", x.kind)
    assert.is_false(rawequal(getmetatable(x), mt))
  end)

  it("shares one copied metatable between objects", function()
    local mt = {tag = 1}
    local x = rt({setmetatable({}, mt), setmetatable({}, mt)}, TRUSTED)
    assert.is_true(rawequal(getmetatable(x[1]), getmetatable(x[2])))
  end)

  it("sends a metatable that is a registered type by name", function()
    local Vec = {}
    Vec.__index = Vec
    function Vec.len(v) return math.sqrt(v.x * v.x + v.y * v.y) end
    pcrun.register_type("spec.Vec", Vec)
    local x = rt(setmetatable({x = 3, y = 4}, Vec))
    assert.is_true(rawequal(getmetatable(x), Vec))
    assert.equal(5, x:len())
  end)

  it("sends a metatable found in package.loaded by name", function()
    local Class = {}
    Class.__index = Class
    package.loaded["spec_class_mod"] = Class
    pcrun.refresh_names()
    local x = rt(setmetatable({}, Class), TRUSTED)
    assert.is_true(rawequal(getmetatable(x), Class))
    package.loaded["spec_class_mod"] = nil
    pcrun.refresh_names()
  end)

  it("sends modules by name and never copies them", function()
    assert.is_true(rawequal(math, rt(math, TRUSTED)))
    assert.is_true(rawequal(string, rt({string}, TRUSTED)[1]))
    local mod = {answer = 42}
    package.loaded["spec_user_mod"] = mod
    pcrun.refresh_names()
    local e = pcrun.encode({m = mod})
    assert.is_nil(string.find(e, "answer", 1, true))
    assert.is_true(rawequal(mod, pcrun.decode(e, TRUSTED).m))
    package.loaded["spec_user_mod"] = nil
    pcrun.refresh_names()
  end)

  it("sends module functions by name when trusted", function()
    assert.is_true(rawequal(math.floor, rt(math.floor, TRUSTED)))
    assert.is_true(rawequal(print, rt(print, TRUSTED)))
    local x = rt({f = string.format}, TRUSTED)
    assert.is_true(rawequal(string.format, x.f))
  end)

  it("finds a module loaded after an earlier encode", function()
    pcrun.encode({})
    local cf = coroutine.wrap(function() end)
    package.loaded["spec_late_mod"] = {f = cf}
    assert.is_true(rawequal(cf, rt(cf, TRUSTED)))
    package.loaded["spec_late_mod"] = nil
    pcrun.refresh_names()
  end)

  it("sends Lua functions as bytecode with their upvalues", function()
    local k = 10
    local function add(x) return x + k end
    local f = rt(add, TRUSTED)
    assert.equal(15, f(5))
    assert.is_false(rawequal(f, add))
  end)

  it("keeps one upvalue shared by two closures", function()
    local n = 0
    local function inc() n = n + 1 return n end
    local function get() return n end
    local x = rt({inc = inc, get = get}, TRUSTED)
    x.inc()
    x.inc()
    assert.equal(2, x.get())
    assert.equal(0, n)
  end)

  it("keeps a function reached twice as one function", function()
    local function f() return 1 end
    local x = rt({f, f, {f}}, TRUSTED)
    assert.is_true(rawequal(x[1], x[2]))
    assert.is_true(rawequal(x[1], x[3][1]))
  end)

  it("encodes recursive local functions", function()
    local fact
    fact = function(n) if n <= 1 then return 1 end return n * fact(n - 1) end
    assert.equal(120, rt(fact, TRUSTED)(5))
  end)

  it("gives decoded functions the decoder's globals", function()
    local function g() return tostring(_G ~= nil) .. type(print) end
    local f = rt(g, TRUSTED)
    assert.equal("truefunction", f())
    assert.is_true(rawequal(_G, getfenv(f)))
  end)

  it("refuses bytecode unless decoding is trusted", function()
    local function f() return 1 end
    local e = pcrun.encode(f)
    has(errof(pcrun.decode, e),
        "pcrun.decode: a function (LuaJIT bytecode) needs {trusted = true}")
    assert.equal(1, pcrun.decode(e, {trusted = true})())
    assert.equal(1, pcrun.decode(e, {bytecode = true})())
    has(errof(pcrun.decode, pcrun.encode({1, {f = f}}), {trusted = false}),
        "pcrun.decode: [2].f: a function (LuaJIT bytecode) needs")
  end)

  it("refuses module functions by name unless trusted", function()
    has(errof(pcrun.decode, pcrun.encode(os.execute)),
        "pcrun.decode: a module field ('os.execute') needs {trusted = true}")
  end)

  it("round-trips 64-bit integer cdata", function()
    local a = rt(ffi.new("int64_t", -9007199254740993LL))
    assert.is_true(ffi.istype("int64_t", a))
    assert.is_true(a == -9007199254740993LL)
    local b = rt(0xfedcba9876543210ULL)
    assert.is_true(ffi.istype("uint64_t", b))
    assert.is_true(b == 0xfedcba9876543210ULL)
  end)

  it("round-trips plain-data structs and arrays by ctype", function()
    local p = rt(ffi.new("struct pcr_spec_point", 1.5, -2))
    assert.is_true(ffi.istype("struct pcr_spec_point", p))
    assert.equal(1.5, p.x)
    assert.equal(-2, p.y)
    local a = rt(ffi.new("double[?]", 4, {1, 2, 3, 4}))
    assert.equal(32, ffi.sizeof(a))
    assert.equal(4, a[3])
    local f = rt(ffi.new("int[3]", {7, 8, 9}))
    assert.equal(9, f[2])
  end)

  it("round-trips typedef'd and variable-length structs", function()
    local r = rt(ffi.new("pcr_spec_rec", {5, {1, 2, 3}}))
    assert.equal(5, r.a)
    assert.equal(3, r.b[2])
    local v = ffi.new("struct pcr_spec_vls", 3)
    v.n, v.v[2] = 3, 2.5
    local w = rt(v)
    assert.equal(ffi.sizeof(v), ffi.sizeof(w))
    assert.equal(2.5, w.v[2])
  end)

  it("refuses pointers and cdata containing pointers", function()
    has(errof(pcrun.encode, ffi.new("int *")),
        "pcrun.encode: value: cannot send cdata with pointers")
    has(errof(pcrun.encode, {node = ffi.new("struct pcr_spec_node")}),
        "value.node: cannot send cdata with pointers")
  end)

  it("refuses cdata of an anonymous ctype with advice", function()
    local anon = ffi.new(ffi.typeof("struct { int q; }"))
    has(errof(pcrun.encode, anon), "cannot send cdata of anonymous")
  end)

  it("rebuilds objects with __serialize and __deserialize", function()
    local Pt = {__name = "spec.Pt"}
    Pt.__index = Pt
    function Pt.new(x, y) return setmetatable({x = x, y = y}, Pt) end
    Pt.__serialize = function(p) return {p.x, p.y} end
    Pt.__deserialize = function(v) return Pt.new(v[1], v[2]) end
    pcrun.register_type("spec.Pt", Pt)
    local p = Pt.new(1, 2)
    local x = rt({p, p})
    assert.is_true(rawequal(getmetatable(x[1]), Pt))
    assert.equal(2, x[1].y)
    assert.is_true(rawequal(x[1], x[2]))
  end)

  it("sends userdata that have a __serialize hook", function()
    local u = newproxy(true)
    local mt = getmetatable(u)
    mt.__serialize = function() return "state" end
    mt.__deserialize = function(s) return {restored = s} end
    pcrun.register_type("spec.Proxy", mt)
    assert.same({restored = "state"}, rt(u))
  end)

  it("names a type by __name when it is not registered", function()
    local mt = {__name = "spec.Unregistered",
                __serialize = function() return 1 end}
    local e = pcrun.encode(setmetatable({}, mt))
    has(errof(pcrun.decode, e), "unknown type 'spec.Unregistered'")
  end)

  it("lets a __serialize hook call encode itself", function()
    local mt = {__name = "spec.Nested"}
    mt.__serialize = function(o) return pcrun.encode(o.inner) end
    mt.__deserialize = function(s) return {inner = pcrun.decode(s)} end
    pcrun.register_type("spec.Nested", mt)
    local outer = pcrun.encode({setmetatable({inner = {1, 2}}, mt), "tail"})
    local x = pcrun.decode(outer)
    assert.same({1, 2}, x[1].inner)
    assert.equal("tail", x[2])
  end)

  it("refuses a cycle through __serialize", function()
    local mt = {__name = "spec.Cyc"}
    local o = setmetatable({}, mt)
    mt.__serialize = function(self) return {self} end
    has(errof(pcrun.encode, o), "cannot send a cycle through __serialize")
  end)

  it("names the path of a value that cannot be sent", function()
    local args = {1, {conn = proxy()}}
    has(errof(pcrun.encode, args, "args"),
        "pcrun.encode: args[2].conn: cannot send a userdata")
    has(errof(pcrun.encode, {a = {coroutine.create(print)}}),
        "pcrun.encode: value.a[1]: cannot send a coroutine")
    has(errof(pcrun.encode, {["odd key"] = proxy()}),
        "value[\"odd key\"]: cannot send a userdata")
  end)

  it("names upvalues, metatables and keys in error paths", function()
    local conn = proxy()
    local function f() return conn end
    has(errof(pcrun.encode, {f}), "value[1]<upvalue conn>: cannot send")
    has(errof(pcrun.encode, setmetatable({}, {bad = proxy()})),
        "value<metatable>.bad: cannot send a userdata")
    has(errof(pcrun.encode, {[proxy()] = 1}), "value<key>: cannot send")
  end)

  it("refuses light userdata and C functions outside package.loaded",
     function()
    local up = 1
    local function f() return up end
    has(errof(pcrun.encode, {k = debug.upvalueid(f, 1)}),
        "value.k: cannot send a light userdata")
    has(errof(pcrun.encode, {string.gmatch("a", "a")}),
        "value[1]: cannot send a C function")
  end)

  it("reports nesting deeper than the limit instead of crashing", function()
    local deep = {}
    local cur = deep
    for _ = 1, 100000 do
      cur.n = {}
      cur = cur.n
    end
    has(errof(pcrun.encode, deep), "nesting deeper than 1000")
    local ok = {}
    cur = ok
    for _ = 1, 900 do
      cur[1] = {}
      cur = cur[1]
    end
    assert.is_table(rt(ok))
  end)

  it("refuses input nested deeper than the limit", function()
    local parts = {"\183\2\0"}
    for _ = 1, 100000 do parts[#parts + 1] = "\6\1\0" end
    parts[#parts + 1] = "\0"
    has(errof(pcrun.decode, table.concat(parts)), "nesting deeper than")
  end)

  it("rejects every truncated prefix of a valid encoding", function()
    local function f() return 1 end
    local v = {1, -7, 2.5, "s", ("L"):rep(70), {a = {b = true}},
               ffi.new("int64_t", 3), math, f, f}
    local e = pcrun.encode(v)
    for n = 0, #e - 1 do
      local ok, msg = pcall(pcrun.decode, e:sub(1, n), TRUSTED)
      assert.is_false(ok)
      has(msg, "pcrun.decode: ")
    end
    assert.same(v[6], pcrun.decode(e, TRUSTED)[6])
  end)

  it("rejects random bytes with an error, never a crash", function()
    math.randomseed(1234)
    local seed = pcrun.encode({1, "two", {3}, x = 4.5})
    for _ = 1, 5000 do
      local b = {}
      for i = 1, math.random(0, 40) do
        b[i] = string.char(math.random(0, 255))
      end
      pcall(pcrun.decode, table.concat(b))
      local s = seed:sub(1, 3) .. table.concat(b) .. seed:sub(4)
      pcall(pcrun.decode, s)
      local i = math.random(1, #seed)
      pcall(pcrun.decode, seed:sub(1, i - 1) .. string.char(math.random(0, 255))
            .. seed:sub(i + 1))
    end
  end)

  it("rejects a wrong magic, a wrong version and trailing bytes", function()
    local e = pcrun.encode({1})
    has(errof(pcrun.decode, "x" .. e:sub(2)), "not a pcrun encoding")
    has(errof(pcrun.decode, e:sub(1, 1) .. "\99" .. e:sub(3)),
        "unsupported format version 99")
    has(errof(pcrun.decode, e .. "\0"), "trailing bytes")
    has(errof(pcrun.decode, ""), "not a pcrun encoding")
  end)

  it("rejects a non-string argument to decode", function()
    has(errof(pcrun.decode, nil), "pcrun.decode: expected a string, got nil")
    has(errof(pcrun.decode, {}), "pcrun.decode: expected a string, got table")
    has(errof(pcrun.decode, pcrun.encode(1), 5),
        "pcrun.decode: options must be a table")
  end)

  it("rejects bad back-references", function()
    has(errof(pcrun.decode, "\183\2\1\1\9\1"), "bad back-reference")
    has(errof(pcrun.decode, "\183\2\0\9\1"), "bad back-reference")
  end)

  it("checks register_type arguments", function()
    has(errof(pcrun.register_type, 1, {}), "pcrun.register_type: name")
    has(errof(pcrun.register_type, "x", 1), "metatable must be a table")
    has(errof(pcrun.register_type, "x", {__serialize = print}),
        "has __serialize but no __deserialize")
  end)

  it("writes a versioned header", function()
    local e = pcrun.encode(true)
    assert.equal(0xB7, e:byte(1))
    assert.equal(pcrun.format_version, e:byte(2))
    assert.equal(2, pcrun.format_version)
  end)

  -- Arrays of numbers travel as T_AI32 (0x12) or T_ANUM (0x13): byte 4.
  -- The encoder packs them only on its fast path (PCRUN_SER_NOFAST unset).
  local PACKS = pcrun.encode({1, 2, 3, 4}):byte(4) == 0x12
  local function tag(e, want)
    if PACKS then assert.equal(want, e:byte(4)) end
  end
  local function nan_safe_same(a, b)
    assert.equal(#a, #b)
    for i = 1, #a do
      local x, y = a[i], b[i]
      if x ~= x then
        assert(y ~= y, "NaN expected at " .. i)
      else
        assert.equal(x, y)
        assert.equal(1 / x, 1 / y)  -- the sign of zero too
      end
    end
  end

  it("packs arrays of int32 and of doubles", function()
    local ints = {0, 1, -1, 63, 64, 2147483647, -2147483648, 7}
    local e = pcrun.encode(ints)
    tag(e, 0x12)
    nan_safe_same(ints, pcrun.decode(e))
    local dbls = {0.5, -0.0, 1 / 0, -1 / 0, 0 / 0, 1e308, 5e-324, 3}
    e = pcrun.encode(dbls)
    tag(e, 0x13)
    nan_safe_same(dbls, pcrun.decode(e))
  end)

  it("packs int and double mixes as doubles, exactly", function()
    for _, t in ipairs{{1, 2, 3, 4.5}, {1, 2, 3, 2147483648},
                       {1, 2, 3, -0.0}, {-2147483649, 1, 2, 3},
                       {1, 2, 0 / 0, 4}} do
      local e = pcrun.encode(t)
      tag(e, 0x13)
      nan_safe_same(t, pcrun.decode(e))
    end
  end)

  it("keeps holes, mixed values and hash parts out of packed arrays",
     function()
    local cases = {
      {1, 2, nil, 4, 5, 6}, {1, 2, 3, 4, "five"}, {1, 2, 3, 4, x = 1},
      {1, 2, 3, 4, [0] = 0}, {1, 2, 3, {4}}, {true, 1, 2, 3},
      setmetatable({1, 2, 3, 4}, {__index = {}}),
    }
    for _, t in ipairs(cases) do
      local e = pcrun.encode(t)
      assert.is_true(e:byte(4) == 6 or e:byte(4) == 7)
      local d = pcrun.decode(e, TRUSTED)  -- the copied metatable
      for k, v in pairs(t) do assert.same(v, d[k]) end
      for k in pairs(d) do assert.is_not_nil(t[k]) end
    end
    local t = {}
    for i = 1, 100 do t[i] = i end
    for i = 50, 100 do t[i] = nil end  -- array part with trailing nils
    assert.same(t, rt(t))
  end)

  it("round-trips a million ints and a million doubles", function()
    local ints, dbls = {}, {}
    for i = 1, 1000000 do
      ints[i] = (i % 2 == 0 and -i or i) * 2000
      dbls[i] = i * 0.37 - 1e5
    end
    local di, dd = rt(ints), rt(dbls)
    assert.equal(1000000, #di)
    assert.equal(1000000, #dd)
    for i = 1, 1000000 do
      if di[i] ~= ints[i] or dd[i] ~= dbls[i] then
        error("element " .. i .. " differs")
      end
    end
  end)

  it("shares a packed array reached twice", function()
    local a = {1, 2, 3, 4, 5}
    local t = rt({a, {x = a}, a, "s"})
    assert.equal(t[1], t[2].x)
    assert.equal(t[1], t[3])
    assert.same(a, t[1])
  end)

  it("rejects every truncated prefix of packed arrays", function()
    local v = {{1, 2, 3, 4, 5}, {0.5, 1, 2, 3}, {1, 2, nil, 4.5}, "x"}
    local e = pcrun.encode(v)
    for n = 0, #e - 1 do
      local ok, msg = pcall(pcrun.decode, e:sub(1, n))
      assert.is_false(ok)
      has(msg, "pcrun.decode: ")
    end
    has(errof(pcrun.decode, "\183\2\0\18\255\255\255\127\0\0\0\0"),
        "truncated input")
    has(errof(pcrun.decode, "\183\2\0\19\2" .. ("\0"):rep(15)),
        "truncated input")
  end)

  it("decodes any NaN payload as a plain NaN", function()
    local odd = "\52\18\0\0\0\0\251\255"  -- 0xfffb000000001234 LE
    local v = pcrun.decode("\183\2\0\19\2" .. odd .. odd)
    assert.equal("number", type(v[1]))
    assert.is_true(v[1] ~= v[1] and v[2] ~= v[2])
    v = pcrun.decode("\183\2\0\6\2\0\3" .. odd .. "\3" .. odd)
    assert.equal("number", type(v[2]))
    assert.is_true(v[1] ~= v[1] and v[2] ~= v[2])
  end)

  it("stays usable after encodes that raised errors", function()
    local mt = {__name = "spec.Boom"}
    mt.__serialize = function() error("boom") end
    mt.__deserialize = function(x) return x end
    for _ = 1, 20 do
      has(errof(pcrun.encode, {setmetatable({}, mt)}), "boom")
    end
    local inner = {__name = "spec.Inner"}
    inner.__serialize = function(o)
      pcall(pcrun.encode, {setmetatable({}, mt)})  -- fails inside a hook
      return pcrun.encode(o[1])
    end
    inner.__deserialize = function(s) return {pcrun.decode(s)} end
    pcrun.register_type("spec.Inner", inner)
    local x = rt({setmetatable({{1, 2, 3, 4, 5}}, inner), {6}})
    assert.same({1, 2, 3, 4, 5}, x[1][1])
    assert.same({6}, x[2])
  end)

  it("never crashes when a hook changes the table being encoded", function()
    local parent = {}
    local mt = {__name = "spec.Grow"}
    mt.__serialize = function()
      for i = 1, 200 do parent["k" .. i] = i; parent[i + 10] = i end
      return 1
    end
    mt.__deserialize = function(x) return x end
    pcrun.register_type("spec.Grow", mt)
    parent[1] = setmetatable({}, mt)
    parent.a = {setmetatable({}, mt)}
    for _ = 1, 3 do
      local ok, msg = pcall(pcrun.encode, parent)
      if not ok then assert.equal("string", type(msg)) end
    end
  end)

  it("keeps keys and shared tables right across many encodes", function()
    -- The encoder's key cache and tables-seen chunks outlive one encode:
    -- many distinct keys leading to tables, fresh tables spread over the
    -- heap, collections between encodes, and sharing must all still hold.
    local junk = {}
    for round = 1, 300 do
      local t, shared = {}, {round}
      for k = 1, 100 do t["key" .. ((round * 7 + k) % 150)] = {k, shared} end
      t.self = t
      local x = pcrun.decode(pcrun.encode(t))
      assert.equal(x, x.self)
      local n = 0
      for key, v in pairs(t) do
        if key ~= "self" then
          n = n + 1
          assert.same(v[1], x[key][1])
        end
      end
      local first
      for key, v in pairs(x) do
        if key ~= "self" then
          first = first or v[2]
          assert.equal(first, v[2])
          assert.same({round}, v[2])
        end
      end
      assert.equal(100, n)
      junk[round % 50] = string.rep("j", 1e5 + round)
      if round % 100 == 0 then collectgarbage() end
    end
  end)

  it("reads nil and booleans by their type tag alone", function()
    -- Without GC64, LuaJIT writes only the tag word of nil, false and
    -- true: a slot that held a string or a table keeps its pointer in the
    -- other word. The in-place reads must still see nil and booleans.
    local s, inner = "a string " .. ("x"):rep(20), {1}
    local t = {s, inner, s, inner, s, inner, 7}
    t[0] = s
    t.k1, t.k2, t.k3, t.k4 = s, inner, s, inner
    t[true], t[false] = s, inner
    t[0], t[1], t[2], t[3] = nil, false, true, nil
    t.k1, t.k2, t.k3 = false, true, nil
    t[true], t[false] = false, true
    local x = rt(t)
    assert.same({false, true, nil, inner, s, inner, 7}, {unpack(x, 1, 7)})
    assert.is_nil(rawget(x, 0))
    assert.equal(false, x.k1)
    assert.equal(true, x.k2)
    assert.is_nil(rawget(x, "k3"))
    assert.same(inner, x.k4)
    assert.equal(false, x[true])
    assert.equal(true, x[false])
    local n = 0
    for _ in pairs(x) do n = n + 1 end
    assert.equal(11, n)
    -- Trailing slots set to nil are not part of the array sent.
    local a = {1, 2, 3, 4, 5, s, inner}
    a[6], a[7] = nil, nil
    assert.same({1, 2, 3, 4, 5}, rt(a))
  end)

  it("tells apart small tables allocated next to each other", function()
    -- Tables met are marked one bit per GCtab size of address space: 32
    -- bytes without GC64, where empty tables sit closest together.
    local ts = {}
    for i = 1, 2000 do ts[i] = {} end
    local x = rt({ts, ts, {unpack(ts)}})
    assert.equal(x[1], x[2])
    local seen = {}
    for i = 1, 2000 do
      assert.equal(x[1][i], x[3][i])
      assert.is_nil(seen[x[1][i]])
      seen[x[1][i]] = true
    end
  end)

  -- Untrusted input (issue 10): plain data or an error, within a budget.
  describe("without trusted", function()
    it("refuses a memory bomb before allocating for it", function()
      -- 999 nested tables each declaring 65536 array slots (or 32768
      -- pairs) in 70 KB: before, 519 MB (775 MB) resident at the peak.
      local r = helpers.run_cli({ "-e", [[
        local pcrun = require "pcrun"
        local function hwm()
          local f = io.open("/proc/self/status")
          local kb = f:read("*a"):match("VmHWM:%s*(%d+)")
          f:close()
          return tonumber(kb)
        end
        local arr = "\183\2\0" .. ("\6\128\128\4\0"):rep(999)
                    .. ("\0"):rep(65536)
        local hash = "\183\2\0" .. ("\6\0\128\128\2\192"):rep(999)
                     .. ("\0"):rep(65536)
        local h0 = hwm()
        print(select(2, pcall(pcrun.decode, arr)))
        print(select(2, pcall(pcrun.decode, hash)))
        print(math.floor((hwm() - h0) / 1024))
      ]] }, nil, { timeout = 60 })
      assert.equal(0, r.status, r.stderr)
      local e1, e2, mb = r.stdout:match("^(.-)\n(.-)\n(%d+)\n$")
      assert.equal("pcrun.decode: [1]: truncated input (a table of 65536 + "
                   .. "0 entries, room for 4998)", e1)
      assert.equal("pcrun.decode: [0]: truncated input (a table of 0 + "
                   .. "32768 entries, room for 5997)", e2)
      assert(tonumber(mb) < 16, "peak RSS grew by " .. mb .. " MB")
    end)

    it("still decodes tables whose counts fill the input exactly", function()
      local t = {{}, {nil, nil, nil, nil, false}, {[0] = 0, x = {{}}}}
      for i = 1, 300 do t[#t + 1] = {i, {i}} end
      assert.same(t, rt(t))
    end)

    it("caps what a decode allocates with max_bytes", function()
      local e = pcrun.encode({1, {2, ("x"):rep(1000)}})
      has(errof(pcrun.decode, e, {max_bytes = 500}),
          "pcrun.decode: [2][2]: over the max_bytes budget (500 bytes)")
      assert.equal(1000, #pcrun.decode(e, {max_bytes = 5000})[2][2])
      local big = {}
      for i = 1, 100000 do big[i] = i % 2 == 0 or "s" end
      e = pcrun.encode({list = big})
      has(errof(pcrun.decode, e, {max_bytes = 2^19}),
          "pcrun.decode: list: over the max_bytes budget (524288 bytes)")
      assert.equal(100000, #pcrun.decode(e, {max_bytes = 2^24}).list)
      has(errof(pcrun.decode, e, {max_bytes = 2^20, trusted = true}),
          "over the max_bytes budget")
      for _, bad in ipairs({0, -1, 1.5, "10", true}) do
        has(errof(pcrun.decode, e, {max_bytes = bad}),
            "pcrun.decode: max_bytes must be a positive integer")
      end
    end)

    it("refuses a forged pcrun.Process and never signals its pid", function()
      local victim = helpers.spawn_cli({ "-e", [[
        local ffi = require "ffi"
        ffi.cdef "int poll(void *, unsigned long, int);"
        ffi.C.poll(nil, 0, 30000)
      ]] })
      local Process = getmetatable(pcrun.process(function() end))
      local forged = setmetatable({pid = victim.pid, _state = "started"},
                                  Process)
      local e = pcrun.encode({1, 2, {owner = forged}})
      has(errof(pcrun.decode, e),
          "pcrun.decode: [3].owner: a pcrun.Process needs {trusted = true}")
      assert.equal(victim.pid, pcrun.decode(e, TRUSTED)[3].owner.pid)
      assert.is_false(helpers.is_dead(victim.pid))
      helpers.kill(victim.pid)
      helpers.wait_cli(victim)
    end)

    it("refuses tables wearing the metatables of pcrun's objects", function()
      for _, name in ipairs({"Process", "Queue", "JoinableQueue", "Lock",
                             "RLock", "Semaphore", "BoundedSemaphore",
                             "Event", "Condition", "Barrier", "Connection",
                             "ObjRef", "Array", "Value"}) do
        local tn = "pcrun." .. name
        local mt = "\13" .. string.char(#tn) .. tn
        has(errof(pcrun.decode, "\183\2\0\7\0\0" .. mt),
            "pcrun.decode: a " .. tn .. " needs {trusted = true}")
        has(errof(pcrun.decode, "\183\2\0\6\1\0" .. mt),
            "pcrun.decode: [1]: a " .. tn .. " needs {trusted = true}")
      end
      -- A pool's metatable is a field of the pcrun module.
      has(errof(pcrun.decode, "\183\2\0\7\0\0\12\5pcrun\4Pool"),
          "pcrun.decode: a table with a metatable not registered with "
          .. "pcrun.register_type needs {trusted = true}")
      has(errof(pcrun.decode, "\183\2\0\12\5pcrun\4Pool"),
          "pcrun.decode: a module field ('pcrun.Pool') needs")
    end)

    it("refuses pcrun's objects as they are encoded", function()
      local a, b = pcrun.pipe()
      local objs = {q = pcrun.queue(), l = pcrun.lock(), ev = pcrun.event(),
                    c = pcrun.condition(), br = pcrun.barrier(2),
                    conn = a, arr = pcrun.array("double", 3),
                    v = pcrun.value("int32_t", 1)}
      local names = {q = "Queue", l = "Lock", ev = "Event", c = "Condition",
                     br = "Barrier", conn = "Connection", arr = "Array",
                     v = "Value"}
      for k, o in pairs(objs) do
        has(errof(pcrun.decode, pcrun.encode({x = {[k] = o}})),
            "pcrun.decode: x." .. k .. ": a pcrun." .. names[k]
            .. " needs {trusted = true}")
      end
      a:close()
      b:close()
    end)

    it("refuses module references, which are live tables", function()
      local e = pcrun.encode({ os, package.loaded })
      has(errof(pcrun.decode, e),
          "pcrun.decode: [1]: a module ('os') needs {trusted = true}")
      local t = pcrun.decode(e, TRUSTED)
      assert.is_true(rawequal(os, t[1]))
      assert.is_true(rawequal(string, t[2].string))
      has(errof(pcrun.decode, pcrun.encode({{}, {io.stdout}})),
          "pcrun.decode: [2][1]: a module field ('io.stdout') needs")
    end)

    it("refuses metatables that are not registered types", function()
      local e = pcrun.encode({a = setmetatable({}, {__index = {x = 1}})})
      has(errof(pcrun.decode, e),
          "pcrun.decode: a: a table with a metatable not registered with "
          .. "pcrun.register_type needs {trusted = true}")
      assert.equal(1, pcrun.decode(e, TRUSTED).a.x)
    end)

    it("decodes registered types unless marked as capabilities", function()
      local Safe = {}
      Safe.__index = Safe
      pcrun.register_type("spec.Safe", Safe)
      local x = rt({setmetatable({v = 1}, Safe)})
      assert.is_true(rawequal(Safe, getmetatable(x[1])))
      local Cap = {__serialize = function(o) return o.fd end,
                   __deserialize = function(fd) return {fd = fd} end}
      pcrun.register_type("spec.Cap", Cap, {capability = true})
      local e = pcrun.encode({k = setmetatable({fd = 3}, Cap)})
      has(errof(pcrun.decode, e),
          "pcrun.decode: k: a spec.Cap needs {trusted = true}")
      assert.equal(3, pcrun.decode(e, TRUSTED).k.fd)
      has(errof(pcrun.register_type, "spec.X", {}, 5),
          "pcrun.register_type: 'spec.X': opts must be a table, got number")
    end)

    it("names the path through keys, hooks and deep nesting", function()
      has(errof(pcrun.decode, pcrun.encode(
            {["odd key"] = {[3.5] = {[true] = {k1 = math}}}})),
          "pcrun.decode: [\"odd key\"][3.5][true].k1: a module ('math')")
      has(errof(pcrun.decode, pcrun.encode({[{os}] = 1})),
          "pcrun.decode: <key>[1]: a module ('os')")
      local Pt = {__serialize = function(p) return {p.x, p.lib} end,
                  __deserialize = function(v) return v end}
      pcrun.register_type("spec.PathPt", Pt)
      has(errof(pcrun.decode, pcrun.encode({setmetatable({x = 1, lib = os},
                                                          Pt)})),
          "pcrun.decode: [1]<__serialize>[2]: a module ('os')")
      local deep = {}
      local cur = deep
      for _ = 1, 30 do cur.n = {} cur = cur.n end
      cur.m = os
      has(errof(pcrun.decode, pcrun.encode(deep)),
          "pcrun.decode: n.n.n.n.n.n.n.n....n.n.n.n.n.n.n.m: a module")
    end)
  end)
end)
