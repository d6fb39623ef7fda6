-- Shared arrays: N workers (a pool of cpu_count) sum disjoint slices of
-- one array of doubles in the arena, against one loop over all of it in
-- this process; memory bandwidth bounds both. bench/py/array.py does the
-- same with a multiprocessing.RawArray and Pool.map, on a smaller array
-- (pure Python sums about 100M doubles a second): compare the GB/s.
local pcrun = require "pcrun"
local H = require "harness"

local N = pcrun.cpu_count()

local P = {
  rounds = 3,          -- Python runs once a round; see H.measure
  reps = 2,
  n = 100000000,       -- doubles: 800 MB (needs PCRUN_ARENA > 1G)
  py_n = 10000000,     -- doubles on Python's side
  workers = N,
}

local a, pool

local function slice_sum(lo, hi)
  local s = 0
  for i = lo, hi - 1 do s = s + a[i] end
  return s
end

local function serial()
  local t0 = H.now()
  local s = slice_sum(0, P.n)
  local dt = H.now() - t0
  assert(s == P.n, "wrong sum")
  return P.n * 8 / dt / 1e9
end

local function parallel()
  local parts = {}
  for k = 0, N - 1 do
    parts[k + 1] = { math.floor(P.n * k / N), math.floor(P.n * (k + 1) / N) }
  end
  local t0 = H.now()
  local sums = pool:starmap(slice_sum, parts, 1)
  local dt = H.now() - t0
  local s = 0
  for _, v in ipairs(sums) do s = s + v end
  assert(s == P.n, "wrong sum")
  return P.n * 8 / dt / 1e9
end

local M = {}

function M.run()
  a = pcrun.array("double", P.n, 1)  -- touched once here, before timing
  pool = pcrun.pool(N)
  pool:map(function(x) return x end, { 1, 2, 3, 4 })  -- workers up
  serial()
  parallel()
  local m, py = H.measure{ py = "mparray.py", params = P,
                           lua = { serial = serial, parallel = parallel } }
  pool:terminate()
  local reps = P.rounds * P.reps
  return {
    { measure = ("shared array sum, %dM doubles, 1 process")
        :format(P.n / 1e6), unit = "GB/s", fmt = "f2", reps = reps,
      pcrun = m.serial, vs_name = ("Python RawArray, %dM"):format(P.py_n / 1e6),
      vs = py.serial },
    { measure = ("shared array sum, %d workers, disjoint slices"):format(N),
      unit = "GB/s", fmt = "f2", reps = reps, pcrun = m.parallel,
      vs_name = ("Python Pool.map, %dM"):format(P.py_n / 1e6),
      vs = py.parallel },
    { measure = ("shared array sum, %d workers / 1 process"):format(N),
      unit = "speedup", fmt = "f2", reps = reps,
      pcrun = type(m.parallel) == "number" and type(m.serial) == "number"
              and m.parallel / m.serial or m.parallel,
      vs_name = "Python, same", vs = type(py.parallel) == "number"
              and type(py.serial) == "number" and py.parallel / py.serial
              or py.parallel, noratio = true },
  }
end

return M
