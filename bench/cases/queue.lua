-- Queues: producers in child processes put, consumers get, timed from a
-- "go" event to the last item taken. bench/py/queue.py does the same with
-- multiprocessing.Queue (fork context).
local pcrun = require "pcrun"
local H = require "harness"

local P = {
  rounds = 5,        -- Python runs once a round; see H.measure
  reps = 1,
  ints = 1000000,    -- small integers, one producer, one consumer
  tables = 10000,    -- tables of 100 floats
  floats = 100,
  procs = 4,         -- producers and consumers in the many-to-many row
}

local function floats()
  local t = {}
  for i = 1, P.floats do t[i] = i * 0.25 end
  return t
end

-- nprod producers put `per` items each (made by item()); ncons consumers
-- take total / ncons each. Consumers are children too when ncons > 1;
-- else this process consumes. Returns seconds from go to the last get.
local function transfer(nprod, ncons, per, item)
  local q, go, done = pcrun.queue(), pcrun.event(), pcrun.queue()
  local total, ps = nprod * per, {}
  for _ = 1, nprod do
    ps[#ps + 1] = pcrun.process(function()
      local v = item()
      go:wait()
      for _ = 1, per do q:put(v) end
    end):start()
  end
  if ncons > 1 then
    local share = total / ncons
    for _ = 1, ncons do
      ps[#ps + 1] = pcrun.process(function()
        go:wait()
        local last
        for _ = 1, share do last = q:get() end
        done:put(last ~= nil)
      end):start()
    end
  end
  collectgarbage("collect")
  pcrun.event():wait(0.05)  -- a sleep: every child waiting on go
  local t0 = H.now()
  go:set()
  if ncons > 1 then
    for _ = 1, ncons do assert(done:get(), "lost an item") end
  else
    local last
    for _ = 1, total do last = q:get() end
    assert(last ~= nil)
  end
  local dt = H.now() - t0
  for _, p in ipairs(ps) do p:join() end
  return dt
end

local M = {}

function M.run()
  local bytes = P.tables * P.floats * 8
  local function ints()
    return P.ints / transfer(1, 1, P.ints, function() return 7 end)
  end
  local function tab11()
    return bytes / transfer(1, 1, P.tables, floats) / 1e6
  end
  local function tabnn()
    return bytes / transfer(P.procs, P.procs, P.tables / P.procs, floats)
           / 1e6
  end
  ints()  -- untimed once: first-touch memory
  local m, py = H.measure{ py = "mpqueue.py", params = P,
                           lua = { ints = ints, tab11 = tab11,
                                   tabnn = tabnn } }
  local reps = P.rounds * P.reps
  return {
    { measure = ("queue, %gk small integers, 1 producer, 1 consumer")
        :format(P.ints / 1e3), unit = "items/s", fmt = "rate", reps = reps,
      pcrun = m.ints, vs_name = "Python mp.Queue", vs = py.ints,
      target = 20 },
    { measure = ("queue, %gk tables of %d floats, 1 to 1")
        :format(P.tables / 1e3, P.floats), unit = "MB/s", fmt = "f1",
      reps = reps, pcrun = m.tab11, vs_name = "Python mp.Queue, lists",
      vs = py.tab11, target = 5 },
    { measure = ("queue, tables of %d floats, %d to %d")
        :format(P.floats, P.procs, P.procs), unit = "MB/s", fmt = "f1",
      reps = reps, pcrun = m.tabnn, vs_name = "Python mp.Queue, lists",
      vs = py.tabnn },
  }
end

return M
