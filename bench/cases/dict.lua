-- Dicts: pcrun.dict against multiprocessing's Manager().dict() (a proxy to
-- a server process) for get, set and increment by key, and against shared
-- numbers (pcrun.value, Python's mp.Value) for the numeric case.
-- bench/py/mpdict.py does the Python side.
local pcrun = require "pcrun"
local H = require "harness"

local P = {
  rounds = 3,         -- Python runs once a round; see H.measure
  reps = 1,
  n = 2000000,        -- pcrun operations per process and sample
  py_n = 20000,       -- Manager().dict() operations per process and sample
  keys = 1000,        -- distinct keys, "k1" .. "k1000", small number values
}

local keys = {}
for i = 1, P.keys do keys[i] = "k" .. i end

local d = pcrun.dict()
for i = 1, P.keys do d[keys[i]] = i end

local function get_loop(n)
  local s, K = 0, P.keys
  for i = 1, n do s = s + d[keys[i % K + 1]] end
  assert(s > 0)
end

-- Run body(n) in `procs` processes at once; operations per second in all.
local function together(procs, body)
  local go = pcrun.event()
  local ps = {}
  for w = 1, procs - 1 do
    ps[w] = pcrun.process(function() go:wait() body(P.n) end):start()
  end
  pcrun.event():wait(0.05)
  local t0 = H.now()
  go:set()
  body(P.n)
  for _, p in ipairs(ps) do p:join() end
  return procs * P.n / (H.now() - t0)
end

local function get1() return together(1, get_loop) end
local function get2() return together(2, get_loop) end

-- The control for the scaling row: a plain Lua table read the same way
-- shows how much of two cores the machine gives at the moment.
local plain = {}
for i = 1, P.keys do plain[keys[i]] = i end
local function plain_loop(n)
  local s, K = 0, P.keys
  for _ = 1, 10 do
    for i = 1, n do s = s + plain[keys[i % K + 1]] end
  end
  assert(s > 0)
end
local function plain1() return together(1, plain_loop) end
local function plain2() return together(2, plain_loop) end

local function set1()
  local K = P.keys
  local t0 = H.now()
  for i = 1, P.n do d[keys[i % K + 1]] = i end
  return P.n / (H.now() - t0)
end

local function add2()
  d.hits = 0
  local r = together(2, function(n) for _ = 1, n do d:add("hits", 1) end end)
  assert(d.hits == 2 * P.n, "lost adds")
  return r
end

local function add1()
  d.hits = 0
  local t0 = H.now()
  for _ = 1, P.n do d:add("hits", 1) end
  return P.n / (H.now() - t0)
end

local v = pcrun.value("double", 0)
local function value_add1()
  local t0 = H.now()
  for _ = 1, P.n do v:add(1) end
  return P.n / (H.now() - t0)
end

local M = {}

function M.run()
  get1(); set1()  -- warm up (traces, pages)
  local m, py = H.measure{ py = "mpdict.py", params = P,
                           lua = { get1 = get1, get2 = get2, set1 = set1,
                                   add1 = add1, add2 = add2,
                                   vadd1 = value_add1, plain1 = plain1,
                                   plain2 = plain2 } }
  local reps = P.rounds * P.reps
  local function num(x) return type(x) == "number" end
  return {
    { measure = "dict get, small value, 1 process", unit = "ops/s",
      fmt = "rate", reps = reps, pcrun = m.get1,
      vs_name = "Python Manager().dict()", vs = py.get1, target = 100 },
    { measure = "dict set, small value, 1 process", unit = "ops/s",
      fmt = "rate", reps = reps, pcrun = m.set1,
      vs_name = "Python Manager().dict()", vs = py.set1, target = 100 },
    { measure = "dict get, 2 processes (all together)", unit = "ops/s",
      fmt = "rate", reps = reps, pcrun = m.get2,
      vs_name = "Python Manager().dict()", vs = py.get2 },
    { measure = "dict get: 2 readers / 1 reader", unit = "speedup",
      fmt = "f2", reps = reps,
      pcrun = num(m.get2) and num(m.get1) and m.get2 / m.get1 or m.get2,
      vs_name = "one reader", vs = 1, target = 1.8 },
    { measure = "(control) Lua table reads: 2 processes / 1", unit = "speedup",
      fmt = "f2", reps = reps,
      pcrun = num(m.plain2) and num(m.plain1) and m.plain2 / m.plain1
              or m.plain2,
      vs_name = "the machine's own scaling", vs = "-", noratio = true },
    { measure = "dict increment by key, 2 processes", unit = "ops/s",
      fmt = "rate", reps = reps, pcrun = m.add2,
      vs_name = "Python Manager dict + Lock", vs = py.inc2 },
    { measure = "dict increment by key, 2 processes", unit = "ops/s",
      fmt = "rate", reps = reps, pcrun = m.add2,
      vs_name = "Python mp.Value + its lock", vs = py.vinc2 },
    { measure = "dict add on one key, 1 process", unit = "ops/s",
      fmt = "rate", reps = reps, pcrun = m.add1,
      vs_name = "pcrun.value add", vs = m.vadd1, target = 0.34 },
  }
end

return M
