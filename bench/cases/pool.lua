-- Pools: pcrun.pool against multiprocessing's Pool and ProcessPoolExecutor
-- (fork context), both with the same number of workers: this machine's CPU
-- count (pcrun.cpu_count(), passed to Python). bench/py/pool.py is the
-- Python side; it takes the part to run as --part.
--
-- The group runs in parts, each its own H.measure (so each has its own
-- repetition count): create, roundtrip, map, bulk, tail, mandel. pool create
-- runs first, while this process's heap is still small (a fork's cost
-- grows with it).
local pcrun = require "pcrun"
local H = require "harness"

local N = pcrun.cpu_count()

local P = {
  create = { rounds = 3, reps = 10 },  -- pool(N) + first result, one sample each
  roundtrip = { rounds = 3, reps = 2,
                rt = 20000,          -- pcrun round trips per sample
                py_rt = 5000,        -- ProcessPoolExecutor round trips per sample
                py_apply_rt = 2000,  -- Pool.apply_async round trips per sample
                warmup = 1000 },     -- untimed round trips first (Python: 200)
  map = { rounds = 5, reps = 1,
          items = 1000000,           -- map default chunking, both sides
          cs1_items = 1000000,       -- map chunksize 1, pcrun
          py_cs1_items = 100000 },   -- map chunksize 1, Python (it is slow)
  bulk = { rounds = 3, reps = 1,
          n = 20000,                 -- futures per sample, both sides
          scale = "1000,10000,100000,1000000" },  -- pcrun only, once each
  tail = { rounds = 3, reps = 1,
           tasks = 200, alpha = 1.5, seconds = 4.0, seed = 20261126 },
  mandel = { rounds = 5, reps = 1,
             size = 800, py_size = 400, iters = 200 },
}
for name, p in pairs(P) do p.part, p.workers = name, N end

local function double(x) return x * 2 end

local function collect() collectgarbage("collect") end

-- -- create: a pool of N and the first result back ---------------------

local function create_first()
  collect()
  local t0 = H.now()
  local pool = pcrun.pool(N)
  local v = pool:submit(double, 21):result()
  local dt = H.now() - t0
  assert(v == 42)
  pool:terminate()
  return dt * 1e3
end

-- -- roundtrip: submit + result, one at a time --------------------------

local function roundtrips(pool, n)
  collect()
  local t0 = H.now()
  for i = 1, n do
    if pool:submit(double, i):result() ~= 2 * i then error("wrong result") end
  end
  return (H.now() - t0) / n * 1e6
end

-- -- map: x*2 over a list -----------------------------------------------

local function intlist(n)
  local t = {}
  for i = 1, n do t[i] = i end
  return t
end

local function map_rate(pool, list, cs)
  collect()
  local t0 = H.now()
  local res = pool:map(double, list, cs)
  local dt = H.now() - t0
  if #res ~= #list or res[#list] ~= 2 * list[#list] then
    error("wrong map result")
  end
  return #list / dt
end

-- -- bulk: n futures submitted, then collected as they complete ---------

local function bulk_rate(pool, n)
  collect()
  local t0 = H.now()
  local fs = {}
  for i = 1, n do fs[i] = pool:submit(double, i) end
  local sum = 0
  for f in pcrun.as_completed(fs) do sum = sum + f:result() end
  local dt = H.now() - t0
  if sum ~= n * (n + 1) then error("wrong bulk result") end
  return n / dt
end

-- -- tail: heavy-tailed task durations ------------------------------------

-- Pareto(alpha) durations, scaled so that they sum to `seconds`, each
-- capped at seconds / workers / 2 (the scale is found by bisection, so the
-- capped list still sums to `seconds`). LuaJIT's math.random is seeded and
-- deterministic; Python reads this very list from a file.
local function pareto(p)
  math.randomseed(p.seed)
  local raw = {}
  for i = 1, p.tasks do raw[i] = (1 - math.random()) ^ (-1 / p.alpha) end
  local cap = p.seconds / p.workers / 2
  local function total(s)
    local sum = 0
    for i = 1, #raw do sum = sum + math.min(s * raw[i], cap) end
    return sum
  end
  local lo, hi = 0, 1
  while total(hi) < p.seconds do hi = hi * 2 end
  for _ = 1, 100 do
    local mid = (lo + hi) / 2
    if total(mid) < p.seconds then lo = mid else hi = mid end
  end
  local d, sum = {}, 0
  for i = 1, #raw do
    d[i] = math.min(hi * raw[i], cap)
    sum = sum + d[i]
  end
  return d, sum, cap
end

local now = H.now
local function busy(d)  -- busy-waits d seconds: CPU work, not a sleep
  local t = now() + d
  while now() < t do end
  return d
end

-- -- mandel: one task per row ---------------------------------------------

local function mandel_row(size, iters)
  return function(y)  -- escape counts of row y, summed
    local ci = 2.0 * y / size - 1.0
    local sum = 0
    for x = 0, size - 1 do
      local cr = 2.5 * x / size - 2.0
      local zr, zi, n = 0.0, 0.0, 0
      while n < iters and zr * zr + zi * zi <= 4.0 do
        zr, zi = zr * zr - zi * zi + cr, 2.0 * zr * zi + ci
        n = n + 1
      end
      sum = sum + n
    end
    return sum
  end
end

local function sum(t)
  local s = 0
  for i = 1, #t do s = s + t[i] end
  return s
end

local M = {}

function M.run()
  local rows = {}
  local function add(r) rows[#rows + 1] = r end

  -- create
  do
    local p = P.create
    for _ = 1, 3 do create_first() end  -- untimed
    local m, py = H.measure{ py = "pool.py", params = p,
                             lua = { create = create_first } }
    add{ measure = ("pool(%d) created, first result back"):format(N),
         unit = "ms", fmt = "f3", reps = p.rounds * p.reps, pcrun = m.create,
         lower = true, vs_name = ("Python Pool(%d)+apply_async"):format(N),
         vs = py.create_ms, target = 4 }
  end

  -- roundtrip
  do
    local p = P.roundtrip
    local pool = pcrun.pool(N)
    roundtrips(pool, p.warmup)
    local m, py = H.measure{ py = "pool.py", params = p, lua = {
      rt = function() return roundtrips(pool, p.rt) end } }
    pool:terminate()
    local reps = p.rounds * p.reps
    add{ measure = "pool submit + result, one at a time", unit = "us each",
         fmt = "f2", reps = reps, pcrun = m.rt, lower = true,
         vs_name = "Python ProcessPoolExecutor", vs = py.ppe_us, target = 10 }
    add{ measure = "pool submit + result, one at a time", unit = "us each",
         fmt = "f2", reps = reps, pcrun = m.rt, lower = true,
         vs_name = "Python Pool.apply_async", vs = py.apply_us }
  end

  -- map
  do
    local p = P.map
    local pool = pcrun.pool(N)
    local list = intlist(p.items)
    local cs1list = p.cs1_items == p.items and list or intlist(p.cs1_items)
    map_rate(pool, list)  -- untimed: first-touch memory, JIT
    local m, py = H.measure{ py = "pool.py", params = p, lua = {
      default = function() return map_rate(pool, list) end,
      cs1 = function() return map_rate(pool, cs1list, 1) end,
    } }
    pool:terminate()
    list, cs1list = nil, nil
    collect()
    local reps = p.rounds * p.reps
    add{ measure = ("pool map x*2, %.0fk items, default chunks")
                   :format(p.items / 1e3),
         unit = "tasks/s", fmt = "rate", reps = reps, pcrun = m.default,
         vs_name = "Python Pool.map", vs = py.map_rate, target = 3 }
    add{ measure = ("pool map x*2, %.0fk items, chunksize 1 (Python %.0fk)")
                   :format(p.cs1_items / 1e3, p.py_cs1_items / 1e3),
         unit = "tasks/s", fmt = "rate", reps = reps, pcrun = m.cs1,
         vs_name = "Python Pool.map chunksize=1", vs = py.cs1_rate,
         target = 30 }
  end

  -- bulk
  do
    local p = P.bulk
    local pool = pcrun.pool(N)
    bulk_rate(pool, 1000)  -- untimed: JIT
    local m, py = H.measure{ py = "pool.py", params = p, lua = {
      bulk = function() return bulk_rate(pool, p.n) end } }
    local reps = p.rounds * p.reps
    local what = ("pool submit x %.0fk, then as_completed"):format(p.n / 1e3)
    add{ measure = what, unit = "futures/s", fmt = "rate", reps = reps,
         pcrun = m.bulk, vs_name = "Python Pool.apply_async + get",
         vs = py.apply_rate, target = 30 }
    add{ measure = what, unit = "futures/s", fmt = "rate", reps = reps,
         pcrun = m.bulk, vs_name = "Python ProcessPoolExecutor",
         vs = py.ppe_rate }
    -- The cost per future must not grow with n: pcrun alone, once each.
    for n in p.scale:gmatch("%d+") do
      n = tonumber(n)
      local sm = H.measure{ params = { rounds = 1, reps = 1 }, lua = {
        r = function() return bulk_rate(pool, n) end } }
      add{ measure = ("pool submit x %.0fk, then as_completed, pcrun alone")
                     :format(n / 1e3), unit = "futures/s", fmt = "rate",
           reps = 1, pcrun = sm.r, vs_name = "-", vs = "-", noratio = true }
    end
    pool:terminate()
  end

  -- tail
  do
    local p = P.tail
    local durations, total = pareto(p)
    local ideal = total / N
    local path = os.tmpname()
    local f = assert(io.open(path, "w"))
    for _, d in ipairs(durations) do f:write(("%.17g\n"):format(d)) end
    f:close()
    p.durations = path
    local pool = pcrun.pool(N)
    pool:map(busy, { 0.001, 0.001 })  -- the function reaches the workers
    local m, py = H.measure{ py = "pool.py", params = p, lua = {
      tail = function()
        collect()
        local t0 = H.now()
        pool:map(busy, durations)
        return (H.now() - t0) / ideal
      end } }
    pool:terminate()
    os.remove(path)
    add{ measure = ("pool map, %d heavy-tailed busy tasks (Pareto %g, "
                    .. "%.0f s of work)"):format(p.tasks, p.alpha, total),
         unit = "wall/ideal", fmt = "f3", reps = p.rounds * p.reps,
         pcrun = m.tail, lower = true, vs_name = "Python Pool.map",
         vs = py.tail_ratio, limit = 1.10 }
  end

  -- mandel
  do
    local p = P.mandel
    local row = mandel_row(p.size, p.iters)
    local ys = {}
    for y = 0, p.size - 1 do ys[#ys + 1] = y end
    local pools = { [1] = pcrun.pool(1), [N] = pcrun.pool(N) }
    local want
    local function speedup(n)
      collect()
      local t0 = H.now()
      local serial = {}
      for i, y in ipairs(ys) do serial[i] = row(y) end
      local ts = H.now() - t0
      want = want or sum(serial)
      collect()
      t0 = H.now()
      local got = pools[n]:map(row, ys)
      local tp = H.now() - t0
      if sum(got) ~= want then error("mandelbrot: wrong checksum") end
      return ts / tp
    end
    local m, py = H.measure{ py = "pool.py", params = p, lua = {
      w1 = function() return speedup(1) end,
      wn = function() return speedup(N) end,
    } }
    for _, pool in pairs(pools) do pool:terminate() end
    local what = ("mandelbrot %dx%d, %d it, row tasks"):format(
      p.size, p.size, p.iters)
    add{ measure = what .. ", 1 worker", unit = "speedup", fmt = "f2",
         reps = p.rounds * p.reps, pcrun = m.w1, vs_name = "-", vs = "-",
         noratio = true }
    add{ measure = what .. (", %d workers"):format(N), unit = "speedup",
         fmt = "f2", reps = p.rounds * p.reps, pcrun = m.wn,
         vs_name = ("Python Pool.map, %dx%d"):format(p.py_size, p.py_size),
         vs = py.mandel_speedup, noratio = true }
  end

  return rows
end

return M
