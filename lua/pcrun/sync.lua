-- Locks, reentrant locks, semaphores, events, conditions and barriers in
-- the shared arena (runtime/sync.c). Every acquire and wait takes an
-- optional timeout; a lock whose holder died passes to the next acquirer.
local core = require "pcrun.core"
local ffi = require "ffi"

local M = {}

local function posint(v)
  return type(v) == "number" and v >= 1 and v % 1 == 0 and v < 2^53
end

local SYNC = core.sync_kinds  -- constructor name -> kind, from C

function M.lock() return core.sync(SYNC.lock) end
function M.rlock() return core.sync(SYNC.rlock) end
function M.event() return core.sync(SYNC.event) end

local function semaphore(name, kind, value)
  if value == nil then value = 1 end
  if type(value) ~= "number" or value < 0 or value % 1 ~= 0
      or value >= 2^53 then
    error(name .. ": value must be a non-negative integer", 3)
  end
  return core.sync(kind, value)
end

--- pcrun.semaphore([value]): a counter; acquire waits while it is 0.
-- Not tail calls: level 3 in semaphore() must be the user's call.
function M.semaphore(value)
  local s = semaphore("pcrun.semaphore", SYNC.semaphore, value)
  return s
end

--- pcrun.bounded_semaphore([value]): release above value raises.
function M.bounded_semaphore(value)
  local s = semaphore("pcrun.bounded_semaphore", SYNC.bounded_semaphore,
                      value)
  return s
end

--- pcrun.condition([lock]): a condition variable over lock (a new rlock
-- by default).
function M.condition(lock)
  if lock == nil then lock = core.sync(SYNC.rlock) end
  local mt = getmetatable(lock)
  if mt ~= core.Lock and mt ~= core.RLock then
    error("pcrun.condition: lock must be a pcrun.lock or pcrun.rlock, got "
          .. type(lock), 2)
  end
  return core.sync(SYNC.condition, 0, lock)
end

--- pcrun.barrier(parties [, action [, timeout]]): wait() returns once
-- parties processes wait; the last one runs action() first. timeout:
-- the default of wait() (Python's Barrier(timeout=)).
function M.barrier(parties, action, timeout)
  if not posint(parties) or parties > 2^31 then
    error("pcrun.barrier: parties must be a positive integer", 2)
  end
  if action ~= nil and type(action) ~= "function" then
    error("pcrun.barrier: action must be a function, got " .. type(action), 2)
  end
  if timeout ~= nil and (type(timeout) ~= "number" or timeout ~= timeout
                         or timeout < 0) then
    error("pcrun.barrier: timeout must be a non-negative number, got "
          .. (type(timeout) == "number" and tostring(timeout)
              or type(timeout)), 2)
  end
  return core.sync(SYNC.barrier, parties, action, timeout)
end

--- cond:wait_for(predicate [, timeout]): wait until predicate() is true;
-- returns its last value.
function core.Condition.__index.wait_for(c, pred, timeout)
  if type(pred) ~= "function" then
    error("pcrun.Condition:wait_for: predicate must be a function", 2)
  end
  if timeout ~= nil and type(timeout) ~= "number" then
    error("pcrun.Condition:wait_for: timeout must be a number", 2)
  end
  local deadline = timeout and core.now() + timeout
  local r = pred()
  while not r do
    local left
    if deadline then
      left = deadline - core.now()
      if left <= 0 then break end
    end
    c:wait(left)
    r = pred()
  end
  return r
end

-- acquire and release through ffi: about 4x faster than the C methods,
-- which remain the path for every error and for Ctrl-C.
local fast = core.sync_fast
local f_acquire = ffi.cast("int (*)(void *, double)", fast.acquire)
local f_release = ffi.cast("int (*)(void *)", fast.release)
local ETIMEDOUT, OWNERDEAD = -fast.ETIMEDOUT, fast.OWNERDEAD
local EAGAIN, SLICE = -fast.EAGAIN, fast.SLICE

local function install(mt)
  local slow_acquire, slow_release = mt.__index.acquire, mt.__index.release
  local name = mt.__name
  mt.__index.acquire = function(self, timeout)
    local t = -1
    if timeout ~= nil then
      if type(timeout) ~= "number" or timeout ~= timeout then
        return slow_acquire(self, timeout)
      end
      t = timeout > 0 and timeout or 0
    end
    if type(self) ~= "userdata" then return slow_acquire(self, timeout) end
    local r = f_acquire(self, t)
    if r == 0 then return true end
    if r == ETIMEDOUT then return false end
    if r == EAGAIN then  -- waited one slice: the C method waits on
      return slow_acquire(self, timeout and math.max(timeout - SLICE, 0))
    end
    if r == OWNERDEAD then
      io.stderr:write("pcrun: warning: ", name, ": the previous owner died "
                      .. "holding the lock; this process now holds it\n")
      return true, "owner died"
    end
    return slow_acquire(self, timeout)
  end
  mt.__index.release = function(self, n)
    if n ~= nil or type(self) ~= "userdata" or f_release(self) ~= 0 then
      return slow_release(self, n)
    end
  end
end

for _, mt in ipairs { core.Lock, core.RLock, core.Semaphore,
                      core.BoundedSemaphore, core.Condition } do
  install(mt)
end

return M
