-- Processes: start and join a child that runs an empty function, one at a
-- time. bench/py/process.py does the same with multiprocessing's fork
-- context.
local pcrun = require "pcrun"
local H = require "harness"

local P = {
  rounds = 5,    -- Python runs once a round; see H.measure
  reps = 40,     -- timed start+join pairs per round; the figure: the median
  warmup = 10,   -- untimed first, so page faults of a fresh heap don't count
}

local function empty() end

local function start_join()
  local t0 = H.now()
  pcrun.process(empty):start():join()
  return (H.now() - t0) * 1e3
end

local M = {}

function M.run()
  for _ = 1, P.warmup do start_join() end
  collectgarbage("collect")
  local m, py = H.measure{ py = "process.py", params = P,
                           lua = { start = start_join } }
  return {
    { measure = "process start + join, empty function", unit = "ms each",
      fmt = "f3", reps = P.rounds * P.reps, pcrun = m.start, lower = true,
      vs_name = "Python Process (fork)", vs = py.start_join_ms, target = 4 },
  }
end

return M
