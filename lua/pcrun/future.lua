-- pcrun.future: the result of pool:submit, and as_completed / wait over
-- several of them. A future is settled by its pool while the parent waits
-- (there are no threads): every blocking call here drives the pools.
local core = require "pcrun.core"
local options = require "pcrun.opts"
local progress = require "pcrun.progress"

local M = {}
local Future = {}
Future.__index = Future
Future.__name = "pcrun.Future"
M.Future = Future

local unpack = unpack  -- LuaJIT
local NONE = {}  -- no callbacks: most futures

function M.new(pool)
  return setmetatable({ pool = pool, state = "pending" }, Future)
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

-- A done callback that raises is reported on stderr and the others still
-- run, whether the future settled before or after it was added (Python
-- logs it the same way).
local function callback(cb, f)
  local cok, cerr = pcall(cb, f)
  if not cok then
    io.stderr:write("pcrun: done callback failed: ", tostring(cerr), "\n")
  end
end

local function runcallbacks(f)
  local cbs = f.callbacks
  f.callbacks = nil
  for _, cb in ipairs(cbs or {}) do callback(cb, f) end
end

-- Called by the pool: ok, packed values or error text.
function M.settle(f, ok, v)
  if settled(f) then return end
  f.state, f.job, f.idx = "done", nil, nil  -- the job can go now
  if ok then f.values = v else f.err = v end
  runcallbacks(f)
end

-- A stand-alone future (pcrun.future) is settled by the caller's code,
-- run from some pool's callbacks while it waits: waiting on one drives
-- every live pool.
local function poolsof(fs)
  local pools, seen, alone = {}, {}, false
  local function add(p)
    if not seen[p] then seen[p] = true pools[#pools + 1] = p end
  end
  for _, f in ipairs(fs) do
    if f.pool then add(f.pool) else alone = true end
  end
  if alone then
    local me = core.getpid()
    for p, pid in pairs(require("pcrun.pool").live) do
      if pid == me and (p.state == "run" or p.state == "closed")
          and not p.broken then
        add(p)
      end
    end
  end
  return pools, alone
end

-- Drive pools until pred() or the deadline. Returns pred(). pred must
-- cost O(1): it runs once per event.
local function drive(pools, pred, deadline, alone)
  while not pred() do
    local left = deadline and deadline - core.now()
    if left and left <= 0 then return pred() end
    if not require("pcrun.pool").pump(pools, left) and not pred() then
      error(alone and "pcrun: nothing can settle this future: no pool has "
            .. "work in flight" or "pcrun: the pool of this future is gone", 3)
    end
  end
  return true
end

local function await(self, who, timeout)
  check(self, who)
  checktimeout("pcrun.Future:" .. who, timeout)
  local deadline = timeout and core.now() + timeout
  if settled(self) then return true end
  local pools, alone = poolsof({ self })
  return drive(pools, function() return settled(self) end, deadline, alone)
end

-- Wait until f settles or timeout seconds pass; whether it settled. For
-- other handles built on a future (pool:map_async's AsyncResult).
function M.await(f, timeout)
  local deadline = timeout and core.now() + timeout
  if settled(f) then return true end
  local pools, alone = poolsof({ f })
  return drive(pools, function() return settled(f) end, deadline, alone)
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
  if self.state ~= "pending"
      or (self.pool and not self.pool:_unqueue(self)) then
    return false
  end
  self.state, self.job, self.idx = "cancelled", nil, nil
  runcallbacks(self)
  return true
end

--- Call cb(future) once the future is settled (now, if it already is).
function Future:add_done_callback(cb)
  check(self, "add_done_callback")
  if type(cb) ~= "function" then
    error("pcrun.Future:add_done_callback: cb must be a function", 2)
  end
  if settled(self) then callback(cb, self) return end
  self.callbacks = self.callbacks or {}  -- made on demand: one per future
  table.insert(self.callbacks, cb)
end

--- pcrun.future(): a future settled by the caller with set_result or
-- set_exception (Python's Future() used by hand), to combine pool futures
-- with other work in as_completed and wait.
function M.standalone()
  return setmetatable({ state = "pending", alone = true }, Future)
end

local function checkalone(self, who)
  check(self, who)
  if not self.alone then
    error("pcrun.Future:" .. who .. ": only a future made by pcrun.future() "
          .. "can be settled by hand", 3)
  end
  if settled(self) then
    error("pcrun.Future:" .. who .. ": the future is already "
          .. (self.state == "cancelled" and "cancelled" or "settled"), 3)
  end
end

--- Settle a stand-alone future with these values.
function Future:set_result(...)
  checkalone(self, "set_result")
  M.settle(self, true, { n = select("#", ...), ... })
end

--- Settle a stand-alone future with this error (any value but nil).
function Future:set_exception(err)
  checkalone(self, "set_exception")
  if err == nil then
    error("pcrun.Future:set_exception: err must not be nil", 2)
  end
  M.settle(self, false, err)
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

-- Calls onsettle(f) for each future of fs, once, when it settles (now,
-- for those already settled). Returns how many distinct futures fs holds.
local function watch(fs, onsettle)
  local seen, n = {}, 0
  for _, f in ipairs(fs) do  -- a future listed twice counts once
    if not seen[f] then
      seen[f], n = true, n + 1
      if settled(f) then onsettle(f)
      else
        f.callbacks = f.callbacks or {}
        table.insert(f.callbacks, onsettle)
      end
    end
  end
  return n
end

local ACOPTS = options.spec { timeout = "non-negative number",
                              progress = "boolean or string" }

--- Iterate over futures as they settle; raises "timeout" if timeout
-- seconds pass first. Each settled future is queued by a callback, so a
-- step costs O(1) however many futures are waited for. The second
-- argument is a timeout or { timeout =, progress = true or a label }.
function M.as_completed(fs, timeout)
  checkfutures("pcrun.as_completed", fs)
  local label
  if type(timeout) == "table" then
    local o = options.check("pcrun.as_completed", timeout, ACOPTS, 2)
    timeout, label = o.timeout, o.progress
  end
  checktimeout("pcrun.as_completed", timeout)
  local deadline = timeout and core.now() + timeout
  local ready, head, tail = {}, 1, 0
  local left = watch(fs, function(f) tail = tail + 1 ready[tail] = f end)
  local pools, alone = poolsof(fs)
  local function any() return head <= tail end
  local bar = label and progress.new(label == true and "as_completed"
                                     or label, left)
  local ndone = 0
  return function()
    if left == 0 then
      progress.finish(bar, true)
      return nil
    end
    local ok, got = true, nil
    if bar then ok, got = pcall(drive, pools, any, deadline, alone)
    else got = drive(pools, any, deadline, alone) end
    if not (ok and got) then progress.finish(bar, false) end
    if not ok then error(got, 0) end
    if not got then error("pcrun.as_completed: timeout", 2) end
    local f = ready[head]
    ready[head], head, left = nil, head + 1, left - 1
    ndone = ndone + 1
    if bar then progress.update(bar, ndone) end
    return f
  end
end

local WHEN = { FIRST_COMPLETED = true, FIRST_EXCEPTION = true,
               ALL_COMPLETED = true }

--- Wait for futures. Returns two lists: done, not_done.
local WAITOPTS = options.spec { timeout = "non-negative number",
                                return_when = "string" }

function M.wait(fs, opts)
  checkfutures("pcrun.wait", fs)
  opts = options.check("pcrun.wait", opts, WAITOPTS, 2)
  local when = opts.return_when or "ALL_COMPLETED"
  if not WHEN[when] then
    error("pcrun.wait: return_when must be FIRST_COMPLETED, "
          .. "FIRST_EXCEPTION or ALL_COMPLETED", 2)
  end
  local deadline = opts.timeout and core.now() + opts.timeout
  local ndone, failed = 0, false
  local function onsettle(f)
    ndone = ndone + 1
    if f.err ~= nil then failed = true end
  end
  local n = watch(fs, onsettle)
  local pools, alone = poolsof(fs)
  local ok, err = pcall(drive, pools, function()
    return ndone == n or (ndone > 0 and when == "FIRST_COMPLETED")
           or (failed and when == "FIRST_EXCEPTION")
  end, deadline, alone)
  for _, f in ipairs(fs) do  -- wait again later must not pile them up
    local cbs = f.callbacks
    for i = cbs and #cbs or 0, 1, -1 do
      if cbs[i] == onsettle then table.remove(cbs, i) end
    end
  end
  if not ok then error(err, 0) end
  local done, not_done = {}, {}
  for _, f in ipairs(fs) do
    table.insert(settled(f) and done or not_done, f)
  end
  return done, not_done
end

return M
