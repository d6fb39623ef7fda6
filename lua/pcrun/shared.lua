-- Queues, locks, events, barriers, shared arrays and values: objects in
-- the arena, usable from every process forked after they exist and
-- passable to others through tasks, pipes and queues. The C core does the
-- work; this layer checks arguments and builds the ffi views of arrays.
local core = require "pcrun.core"
local ffi = require "ffi"

local M = {}

local SYNC = { lock = 1, rlock = 2, semaphore = 3, bounded_semaphore = 4,
               event = 5, condition = 6, barrier = 7 }

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
function M.semaphore(value)
  return semaphore("pcrun.semaphore", SYNC.semaphore, value)
end

--- pcrun.bounded_semaphore([value]): release above value raises.
function M.bounded_semaphore(value)
  return semaphore("pcrun.bounded_semaphore", SYNC.bounded_semaphore, value)
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

--- pcrun.barrier(parties [, action]): wait() returns once parties
-- processes wait; the last one runs action() first.
function M.barrier(parties, action)
  if not posint(parties) or parties > 2^31 then
    error("pcrun.barrier: parties must be a positive integer", 2)
  end
  if action ~= nil and type(action) ~= "function" then
    error("pcrun.barrier: action must be a function, got " .. type(action), 2)
  end
  return core.sync(SYNC.barrier, parties, action)
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

-- -- Shared arrays ------------------------------------------------------

local anchors = setmetatable({}, { __mode = "k" })  -- handle -> ObjRef
local views = {}  -- element ctype id -> handle ctype
local Array = { __name = "pcrun.Array" }
local methods = {}

local function bad_index(a, i)
  if type(i) ~= "number" then
    error("pcrun.Array: index must be a number, got " .. type(i), 3)
  end
  error(("pcrun.Array: index %s out of range [0, %d)")
        :format(tostring(i), a.n), 3)
end

local function view_of(ct)
  local id = tonumber(ct)
  local vt = views[id]
  if vt then return vt end
  vt = ffi.metatype(ffi.typeof("struct { $ *ptr; double n; }", ct), {
    __index = function(a, i)
      if type(i) == "number" then
        if i >= 0 and i < a.n then return a.ptr[i] end
        bad_index(a, i)
      end
      return methods[i]
    end,
    __newindex = function(a, i, v)
      if type(i) == "number" and i >= 0 and i < a.n then
        a.ptr[i] = v
        return
      end
      bad_index(a, i)
    end,
    __len = function(a) return a.n end,
    __tostring = function(a)
      return ("pcrun.Array(%s, %d): %s"):format(anchors[a] and
        select(3, anchors[a]:info()) or "?", a.n, tostring(a.ptr))
    end,
  })
  views[id] = vt
  core.cdhook(tonumber(vt), Array)
  return vt
end

local function wrap(ref)
  local addr, n, ctype = ref:info()
  local ct = ffi.typeof(ctype)
  local a = view_of(ct)(ffi.cast(ffi.typeof("$ *", ct), addr), n)
  anchors[a] = ref
  return a
end

function Array.__serialize(a) return anchors[a] end
function Array.__deserialize(ref) return wrap(ref) end

local function ctype_of(who, ctype)
  if type(ctype) ~= "string" and type(ctype) ~= "cdata" then
    error(who .. ": ctype must be a string or an ffi ctype, got "
          .. type(ctype), 3)
  end
  local ok, ct = pcall(ffi.typeof, ctype)
  if not ok then error(who .. ": unknown ctype '" .. tostring(ctype) .. "'", 3) end
  local okp, size = pcall(ffi.sizeof, ct)
  if not okp or not size or size == 0 then
    error(who .. ": ctype '" .. tostring(ctype) .. "' has no fixed size", 3)
  end
  local name = tostring(ct):match("^ctype<(.*)>$")
  return ct, size, name
end

--- pcrun.array(ctype, n [, init]): n elements of ctype in the arena,
-- zero-filled, then set from init (a table, 0-based or 1-based sequence,
-- or a number for every element).
function M.array(ctype, n, init)
  local ct, size, name = ctype_of("pcrun.array", ctype)
  if type(n) ~= "number" or n < 0 or n % 1 ~= 0 or n >= 2^48 then
    error("pcrun.array: n must be a non-negative integer", 2)
  end
  if init ~= nil and type(init) ~= "table" and type(init) ~= "number" then
    error("pcrun.array: init must be a table or a number, got "
          .. type(init), 2)
  end
  local ref = core.array_new(name, size, n, "pcrun.array")
  local a = wrap(ref)
  if type(init) == "number" then
    local p = a.ptr
    for i = 0, n - 1 do p[i] = init end
  elseif init then
    local p, base = a.ptr, init[0] ~= nil and 0 or 1
    for i = 0, math.min(n, #init + 1 - base) - 1 do p[i] = init[i + base] end
  end
  return a
end

methods.len = function(a) return a.n end
methods.totable = function(a)
  local t, p = {}, a.ptr
  for i = 0, a.n - 1 do t[i + 1] = p[i] end
  return t
end
methods.fill = function(a, v)
  local p = a.ptr
  for i = 0, a.n - 1 do p[i] = v end
  return a
end
methods.ctype = function(a) return (select(3, anchors[a]:info())) end

-- -- Shared values ------------------------------------------------------

local Value = { __name = "pcrun.Value" }
Value.__index = Value

local function numkind(ct, size)
  local ok, r = pcall(function()
    if tonumber(ffi.new(ct, 0.5)) == 0.5 then return "f" end
    if tonumber(ffi.new(ct, 1)) ~= 1 then return nil end
    return tonumber(ffi.new(ct, -1)) == -1 and "i" or "u"
  end)
  if ok and r and (size == 1 or size == 2 or size == 4 or size == 8) then
    return r
  end
end

--- pcrun.value(ctype, init): one shared number with atomic operations.
function M.value(ctype, init)
  local ct, size, name = ctype_of("pcrun.value", ctype)
  local kind = numkind(ct, size)
  if not kind then
    error("pcrun.value: ctype must be an integer or floating-point type, "
          .. "got '" .. tostring(ctype) .. "'", 2)
  end
  if init ~= nil and type(init) ~= "number" then
    error("pcrun.value: init must be a number, got " .. type(init), 2)
  end
  local ref = core.array_new(name, size, 1, "pcrun.value")
  local v = setmetatable({ _ref = ref, _kind = kind }, Value)
  if init then ref:value_op(kind, "s", init) end
  return v
end

local function checknum(who, x, i)
  if type(x) ~= "number" then
    error(("pcrun.Value:%s: argument %d must be a number, got %s")
          :format(who, i, type(x)), 3)
  end
end

function Value:load() return self._ref:value_op(self._kind, "l") end
function Value:store(x)
  checknum("store", x, 1)
  self._ref:value_op(self._kind, "s", x)
end
function Value:add(d)
  checknum("add", d, 1)
  return self._ref:value_op(self._kind, "a", d)
end
function Value:cas(old, new)
  checknum("cas", old, 1)
  checknum("cas", new, 2)
  return self._ref:value_op(self._kind, "c", old, new)
end
--- A pointer to the value for ffi code (plain, not atomic, access).
function Value:ptr()
  local addr, _, ctype = self._ref:info()
  return ffi.cast(ffi.typeof("$ *", ffi.typeof(ctype)), addr)
end
function Value:__tostring()
  return ("pcrun.Value(%s): %s"):format(select(3, self._ref:info()),
                                        tostring(self:load()))
end
function Value.__serialize(v) return { v._ref, v._kind } end
function Value.__deserialize(t)
  return setmetatable({ _ref = t[1], _kind = t[2] }, Value)
end

M.Array, M.Value = Array, Value

-- -- select --------------------------------------------------------------

local SLICE = 0.002  -- mixed kinds: how often to look at the other kind

local function kind(o)
  local mt = getmetatable(o)
  if mt == core.Queue or mt == core.JoinableQueue or mt == core.Event then
    return "f"
  elseif mt == core.Connection then
    return "c"
  elseif type(o) == "table" and mt and mt.__name == "pcrun.Process" then
    return "p"
  end
end

local function isready(k, o)
  if k == "f" then return core.ready(o)
  elseif k == "c" then return o:closed() or o:poll()
  else return o.pid ~= nil and not o:is_alive() end
end

--- pcrun.select(objects [, timeout]): wait until at least one of the
-- queues (an item to get, or closed), connections (a message or EOF),
-- events (set) and started processes (exited) is ready; returns the list
-- of ready ones, empty on timeout.
function M.select(objs, timeout)
  if type(objs) ~= "table" or #objs == 0 then
    error("pcrun.select: objects must be a non-empty list", 2)
  end
  if timeout ~= nil and (type(timeout) ~= "number" or timeout ~= timeout) then
    error("pcrun.select: timeout must be a number", 2)
  end
  local kinds, futex, conns, procs = {}, {}, {}, {}
  for i, o in ipairs(objs) do
    local k = kind(o)
    if not k then
      error(("pcrun.select: item %d is not a queue, connection, event or "
             .. "process (got %s)"):format(i, tostring(o)), 2)
    end
    if k == "p" and not o.pid then
      error(("pcrun.select: item %d is a process that was never started")
            :format(i), 2)
    end
    if k == "c" and not o:closed() and not pcall(o.poll, o) then
      error(("pcrun.select: item %d is not a readable connection"):format(i), 2)
    end
    kinds[i] = k
    local into = k == "f" and futex or k == "c" and conns or procs
    into[#into + 1] = o
  end
  local deadline = timeout and core.now() + math.max(timeout, 0)
  local spin = core.now() + 50e-6
  while true do
    local ready = {}
    for i, o in ipairs(objs) do
      if isready(kinds[i], o) then ready[#ready + 1] = o end
    end
    local now = core.now()
    if #ready > 0 or (deadline and now >= deadline) then return ready end
    if now >= spin then
      local mixed = (#futex > 0 and 1 or 0) + (#conns > 0 and 1 or 0)
                    + (#procs > 0 and 1 or 0) > 1 or #procs > 0
      local untl = deadline
      if mixed and (not untl or untl > now + SLICE) then untl = now + SLICE end
      if #futex > 0 then
        core.wait_many(futex, untl)
      elseif #conns > 0 then
        local live = {}
        for _, c in ipairs(conns) do
          if not c:closed() then live[#live + 1] = c end
        end
        if #live > 0 then core.select(live, untl and untl - core.now() or nil)
        end
      else
        procs[1]:join(untl and math.max(untl - core.now(), 0))
      end
    end
  end
end

return M
