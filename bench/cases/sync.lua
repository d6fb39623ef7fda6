-- Locks and events: a lock's acquire + release with no contention and
-- with two processes contending, and the latency from event:set() in one
-- process to the wake-up of a waiter in another. bench/py/sync.py does
-- the same with multiprocessing.Lock and Event (fork context).
local pcrun = require "pcrun"
local H = require "harness"

local P = {
  rounds = 5,        -- Python runs once a round; see H.measure
  reps = 1,
  pairs = 1000000,   -- uncontended acquire + release pairs
  cpairs = 200000,   -- contended pairs, per process
  pings = 5000,      -- event round trips
}

local function uncontended()
  local l = pcrun.lock()
  local t0 = H.now()
  for _ = 1, P.pairs do
    l:acquire()
    l:release()
  end
  return (H.now() - t0) / P.pairs * 1e9
end

-- Two processes take turns at will; ns per acquire + release pair.
local function contended()
  local l, go = pcrun.lock(), pcrun.event()
  local function work()
    for _ = 1, P.cpairs do
      l:acquire()
      l:release()
    end
  end
  local p = pcrun.process(function() go:wait() work() end):start()
  pcrun.event():wait(0.05)
  local t0 = H.now()
  go:set()
  work()
  p:join()
  return (H.now() - t0) / (2 * P.cpairs) * 1e9
end

-- Ping-pong through two events; one-way latency is half a round trip.
local function latency()
  local ping, pong = pcrun.event(), pcrun.event()
  local p = pcrun.process(function()
    for _ = 1, P.pings do
      ping:wait()
      ping:clear()
      pong:set()
    end
  end):start()
  local t0 = H.now()
  for _ = 1, P.pings do
    ping:set()
    pong:wait()
    pong:clear()
  end
  local dt = H.now() - t0
  p:join()
  return dt / P.pings / 2 * 1e6
end

local M = {}

function M.run()
  uncontended()
  local m, py = H.measure{ py = "sync.py", params = P,
                           lua = { unc = uncontended, con = contended,
                                   lat = latency } }
  local reps = P.rounds * P.reps
  return {
    { measure = "lock acquire + release, uncontended", unit = "ns",
      fmt = "f1", reps = reps, pcrun = m.unc, lower = true,
      vs_name = "Python mp.Lock", vs = py.unc },
    { measure = "lock acquire + release, 2 processes contending",
      unit = "ns", fmt = "f1", reps = reps, pcrun = m.con, lower = true,
      vs_name = "Python mp.Lock", vs = py.con },
    { measure = "event set -> waiter in another process awake",
      unit = "us", fmt = "f2", reps = reps, pcrun = m.lat, lower = true,
      vs_name = "Python mp.Event", vs = py.lat },
  }
end

return M
