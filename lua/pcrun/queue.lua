-- Queues in the shared arena: any number of producers and consumers in
-- any processes forked after the queue exists (or that received it through
-- a task, a pipe or another queue). The C core (runtime/queue.c) does the
-- work; this layer checks arguments.
local core = require "pcrun.core"

local M = {}

local function posint(v)
  return type(v) == "number" and v >= 1 and v % 1 == 0 and v < 2^53
end

--- pcrun.queue([maxsize]): FIFO queue for any number of producers and
-- consumers; put blocks while maxsize items wait (never, without one).
function M.queue(maxsize)
  if maxsize ~= nil and not posint(maxsize) then
    error("pcrun.queue: maxsize must be a positive integer", 2)
  end
  return core.queue(maxsize, false)
end

--- pcrun.joinable_queue([maxsize]): a queue with task_done() and join().
function M.joinable_queue(maxsize)
  if maxsize ~= nil and not posint(maxsize) then
    error("pcrun.joinable_queue: maxsize must be a positive integer", 2)
  end
  return core.queue(maxsize, true)
end

--- q:iter(): iterate over items until the queue is closed and drained.
local qget = core.Queue.__index.get
local function qnext(q)
  local ok, v = pcall(qget, q)
  if ok then return true, v end
  if tostring(v):find("closed and empty", 1, true) then return nil end
  error(v, 0)
end
function core.Queue.__index.iter(q)
  return function() local more, v = qnext(q); if more then return v end end
end
core.JoinableQueue.__index.iter = core.Queue.__index.iter

return M
