-- pcrun.future: the result of pool:submit, and as_completed / wait over
-- several of them. A future is settled by its pool while the parent waits
-- (there are no threads): every blocking call here drives the pools.
local core = require "pcrun.core"

local M = {}
local Future = {}
Future.__index = Future
Future.__name = "pcrun.Future"
M.Future = Future

local unpack = unpack  -- LuaJIT

function M.new(pool)
  return setmetatable({ pool = pool, state = "pending", callbacks = {} },
                      Future)
end

local function check(self, who)
  if getmetatable(self) ~= Future then
    error("pcrun.Future:" .. who .. ": call it as f:" .. who .. "()", 3)
  end
end

local function checktimeout(who, t)
  if t ~= nil and (type(t) ~= "number" or t ~= t or t < 0) then
    error(who .. ": timeout must be a non-negative number", 3)
  end
end

local function settled(f)
  return f.state == "done" or f.state == "cancelled"
end

-- Called by the pool: ok, packed values or error text.
function M.settle(f, ok, v)
  if settled(f) then return end
  f.state = "done"
  if ok then f.values = v else f.err = v end
  for _, cb in ipairs(f.callbacks) do
    local cok, cerr = pcall(cb, f)
    if not cok then
      io.stderr:write("pcrun: done callback failed: ", tostring(cerr), "\n")
    end
  end
  f.callbacks = nil
end

-- Drive the pools of fs until pred() or the deadline. Returns pred().
local function drive(fs, pred, deadline)
  local pools, seen = {}, {}
  for _, f in ipairs(fs) do
    if f.pool and not seen[f.pool] then
      seen[f.pool] = true
      pools[#pools + 1] = f.pool
    end
  end
  while not pred() do
    local left = deadline and deadline - core.now()
    if left and left <= 0 then return pred() end
    if not require("pcrun.pool").pump(pools, left) and not pred() then
      error("pcrun: the pool of this future is gone", 3)
    end
  end
  return true
end

local function await(self, who, timeout)
  check(self, who)
  checktimeout("pcrun.Future:" .. who, timeout)
  local deadline = timeout and core.now() + timeout
  return drive({ self }, function() return settled(self) end, deadline)
end

--- Return the task's return values, waiting at most timeout seconds.
-- Raises the task's error (or "cancelled" / "timeout").
function Future:result(timeout)
  if not await(self, "result", timeout) then
    error("pcrun.Future:result: timeout", 2)
  end
  if self.state == "cancelled" then
    error("pcrun.Future:result: the future was cancelled", 2)
  end
  if self.err ~= nil then error(self.err, 0) end
  return unpack(self.values, 1, self.values.n)
end

--- The task's error text, or nil if it succeeded; waits like result.
function Future:error(timeout)
  if not await(self, "error", timeout) then
    error("pcrun.Future:error: timeout", 2)
  end
  if self.state == "cancelled" then return "cancelled" end
  return self.err
end

function Future:done()
  check(self, "done")
  if not settled(self) and self.pool then
    require("pcrun.pool").pump({ self.pool }, 0)
  end
  return settled(self)
end

function Future:running()
  check(self, "running")
  return self.state == "running"
end

function Future:cancelled()
  check(self, "cancelled")
  return self.state == "cancelled"
end

--- Cancel a task that has not started. Returns true if it was cancelled.
function Future:cancel()
  check(self, "cancel")
  if self.state == "cancelled" then return true end
  if self.state ~= "pending" or not self.pool:_unqueue(self) then
    return false
  end
  self.state = "cancelled"
  for _, cb in ipairs(self.callbacks) do pcall(cb, self) end
  self.callbacks = nil
  return true
end

--- Call cb(future) once the future is settled (now, if it already is).
function Future:add_done_callback(cb)
  check(self, "add_done_callback")
  if type(cb) ~= "function" then
    error("pcrun.Future:add_done_callback: cb must be a function", 2)
  end
  if settled(self) then cb(self) else table.insert(self.callbacks, cb) end
end

function Future:__tostring()
  return ("pcrun.Future(%s)"):format(self.state)
end

local function checkfutures(who, fs)
  if type(fs) ~= "table" then
    error(who .. ": futures must be a list of futures", 3)
  end
  for i, f in ipairs(fs) do
    if getmetatable(f) ~= Future then
      error(("%s: item %d is not a future"):format(who, i), 3)
    end
  end
end

--- Iterate over futures as they settle; raises "timeout" if timeout
-- seconds pass first.
function M.as_completed(fs, timeout)
  checkfutures("pcrun.as_completed", fs)
  checktimeout("pcrun.as_completed", timeout)
  local deadline = timeout and core.now() + timeout
  local left, yielded, seen = {}, {}, {}
  for _, f in ipairs(fs) do  -- a future listed twice comes out once
    if not seen[f] then seen[f] = true left[#left + 1] = f end
  end
  return function()
    if #left == 0 then return nil end
    local found
    local ok = drive(left, function()
      for i, f in ipairs(left) do
        if settled(f) and not yielded[f] then found = i return true end
      end
      return false
    end, deadline)
    if not ok then error("pcrun.as_completed: timeout", 2) end
    local f = table.remove(left, found)
    yielded[f] = true
    return f
  end
end

local WHEN = { FIRST_COMPLETED = true, FIRST_EXCEPTION = true,
               ALL_COMPLETED = true }

--- Wait for futures. Returns two lists: done, not_done.
function M.wait(fs, opts)
  checkfutures("pcrun.wait", fs)
  if opts ~= nil and type(opts) ~= "table" then
    error("pcrun.wait: opts must be a table", 2)
  end
  opts = opts or {}
  checktimeout("pcrun.wait", opts.timeout)
  local when = opts.return_when or "ALL_COMPLETED"
  if not WHEN[when] then
    error("pcrun.wait: return_when must be FIRST_COMPLETED, "
          .. "FIRST_EXCEPTION or ALL_COMPLETED", 2)
  end
  local deadline = opts.timeout and core.now() + opts.timeout
  drive(fs, function()
    local n = 0
    for _, f in ipairs(fs) do
      if settled(f) then
        n = n + 1
        if when == "FIRST_COMPLETED" then return true end
        if when == "FIRST_EXCEPTION" and f.err ~= nil then return true end
      end
    end
    return n == #fs
  end, deadline)
  local done, not_done = {}, {}
  for _, f in ipairs(fs) do
    table.insert(settled(f) and done or not_done, f)
  end
  return done, not_done
end

return M
