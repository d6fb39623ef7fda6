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
local function qnext(q)
  local ok, v = pcall(q.get, q)
  if ok then return true, v end
  if core.errcode(v) == "eof" then return nil end  -- closed and empty
  error(v, 0)
end
function core.Queue.__index.iter(q)
  local mt = getmetatable(q)
  if mt ~= core.Queue and mt ~= core.JoinableQueue then
    error("pcrun.Queue:iter: call it as q:iter()", 2)
  end
  return function() local more, v = qnext(q); if more then return v end end
end
core.JoinableQueue.__index.iter = core.Queue.__index.iter

--- q:shutdown([immediate]): Python 3.13's Queue.shutdown. As close();
-- with immediate, the items waiting are dropped too (each counted done in
-- a joinable queue, so join returns), and get raises at once. Returns how
-- many were dropped.
function core.Queue.__index.shutdown(q, immediate)
  local mt = getmetatable(q)
  if mt ~= core.Queue and mt ~= core.JoinableQueue then
    error("pcrun.Queue:shutdown: call it as q:shutdown()", 2)
  end
  local who = mt == core.Queue and "pcrun.Queue" or "pcrun.JoinableQueue"
  if immediate ~= nil and type(immediate) ~= "boolean" then
    error(who .. ":shutdown: immediate must be a boolean, got "
          .. type(immediate), 2)
  end
  q:close()
  local n = 0
  while immediate do
    -- An item that fails to decode is taken all the same: go on.
    local ok, err = pcall(q.get_nowait, q)
    if not ok and tostring(err):find("empty", 1, true) then break end
    n = n + 1
    if mt == core.JoinableQueue then q:task_done() end
  end
  return n
end
core.JoinableQueue.__index.shutdown = core.Queue.__index.shutdown

-- Numbers go through ffi function pointers when nothing needs waiting: an
-- ffi call compiles into the caller's trace, a lua_CFunction ends it.
local ffi = require "ffi"
local fast = core.sync_fast
local f_put = ffi.cast("int (*)(void *, double)", fast.qput)
local f_get = ffi.cast("int (*)(void *, double *)", fast.qget)
local got = ffi.new("double[1]")

for _, mt in ipairs { core.Queue, core.JoinableQueue } do
  local put, get = mt.__index.put, mt.__index.get
  mt.__index.put = function(q, v, timeout)
    if type(v) == "number" and timeout == nil and type(q) == "userdata"
        and f_put(q, v) == 0 then
      return true
    end
    return put(q, v, timeout)
  end
  mt.__index.get = function(q, timeout)
    if timeout == nil and type(q) == "userdata" and f_get(q, got) == 0 then
      return got[0]
    end
    return get(q, timeout)
  end
end

return M
