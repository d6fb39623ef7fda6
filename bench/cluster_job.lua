-- The cluster group's job (bench/cases/cluster.lua): one run of every
-- workload on pcrun.cluster{workers = W}. Under mpirun it is a cluster;
-- without, a local pool: the same code on the same cores. Rank 0 prints
-- "key seconds" lines. Args: workers reps, then the workload sizes.
--   pcrun bench/cluster_job.lua W reps n5 ms5 nexp tiny big_n msg_mib
local pcrun = require "pcrun"
local core = require "pcrun.core"
local ffi = require "ffi"

local W, REPS = tonumber(arg[1]), tonumber(arg[2])
local N5, MS, NEXP, TINY = tonumber(arg[3]), tonumber(arg[4]),
                           tonumber(arg[5]), tonumber(arg[6])
local BIGN, MSG = tonumber(arg[7]), tonumber(arg[8])
local now = pcrun.now
local MSGREPS = 9  -- the message's repetitions (a median of 9)

-- CPU work for s seconds (both sides spin: a sleeping task would only
-- measure scheduling).
local function spin(s)
  local t = now() + s
  while now() < t do end
  return s
end

local function double(x) return x * 2 end
local function echo(s) return s end
local function len(s) return #s end

-- Exponential durations, mean MS ms, from a seeded generator both sides
-- use (Python reads the same list from its argument file).
local function expo(n, seed)
  local t, x = {}, seed
  for i = 1, n do
    x = (x * 1103515245 + 12345) % 2147483648
    t[i] = -math.log(1 - x / 2147483648) * MS / 1000
  end
  return t
end

-- One 64 MiB message rank 0 -> rank 1, then a one-byte answer: the raw
-- transfer, before the pool. Rank 1 receives as an agent relays, into
-- MPI's receive buffer with no Lua string made of it (mpi4py's Recv into
-- a preallocated buffer is the same measure).
local function message()
  local m = core.mpi
  if not m or pcrun.size() < 2 then return nil end
  local data = string.rep("x", MSG * 2^20)
  local times = {}
  for i = 1, MSGREPS do
    local t0 = now()
    if pcrun.rank() == 0 then
      m.send(1, 1, 2, data)
      while not m.recv() do end
    elseif pcrun.rank() == 1 then
      while not m.recv("view") do end
      m.send(0, 1, 2, "k")
    end
    times[i] = now() - t0
    while m.pending() > 0 do end
  end
  return times
end

local msgt = message()
local pool = pcrun.cluster { workers = W }
local function out(k, v) print(k, v) io.stdout:flush() end
if msgt then for _, t in ipairs(msgt) do out("msg", t) end end
local five = {}
for i = 1, N5 do five[i] = MS / 1000 end
local ex = expo(NEXP, 20261201)
local tiny = {}
for i = 1, TINY do tiny[i] = i end
local big = string.rep("y", 2^20)
local bigs = {}
for i = 1, BIGN do bigs[i] = big .. i end
pool:map(spin, { 0.001, 0.001, 0.001, 0.001 }, 1)  -- warm every worker
local function time(fn)
  collectgarbage()
  local t0 = now()
  fn()
  return now() - t0
end
-- A user's 64 MiB argument end to end, one per slot (chunksize 1), so
-- that in a cluster one goes to a remote worker: encode, MPI, the
-- agent's relay, the worker's decode; the answer is its length.
local arg64 = MSG and string.rep("z", MSG * 2^20)
for _ = 1, REPS do
  if arg64 then
    out("arg64", time(function()
      local r = pool:map(len, { arg64, arg64 }, 1)
      assert(r[2] == #arg64)
    end))
  end
  out("five", time(function() pool:map(spin, five) end))
  out("expo", time(function() pool:map(spin, ex) end))
  out("tiny", time(function()
    local r = pool:map(double, tiny)
    assert(r[TINY] == 2 * TINY)
  end))
  out("big", time(function()
    local r = pool:map(echo, bigs, 1)
    assert(#r[BIGN] == #bigs[BIGN])
  end))
end
pool:close()
pool:join()
