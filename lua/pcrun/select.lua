-- pcrun.select: wait until any of several queues, connections, events or
-- processes is ready, like multiprocessing.connection.wait.
local core = require "pcrun.core"

local M = {}

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
  local function scan()
    local ready = {}
    for i, o in ipairs(objs) do
      if isready(kinds[i], o) then ready[#ready + 1] = o end
    end
    return ready
  end
  while true do
    local ready = scan()
    -- One pass looks at each object at a different moment: a process seen
    -- exited may have set an event the pass had already looked at. A
    -- second pass reports all that was ready when the first one ended.
    if #ready > 0 and #ready < #objs then ready = scan() end
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
