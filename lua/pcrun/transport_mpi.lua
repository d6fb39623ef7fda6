-- The MPI transport of pcrun.cluster, rank 0's side: one slot per remote
-- worker (TRANSPORT.md has the interface). Each rank >= 1 runs an agent
-- (pcrun.cluster) that forks its workers and relays their frames; here a
-- slot is (rank, its index on that rank). Nothing blocks in MPI: select
-- probes (MPI_Improbe) and sleeps between probes, from 50 us up to 1 ms.
--
-- Messages: kind 0 on tag 0 is control (a table); kinds 1-3 on tag k are
-- frames to or from worker k of that rank (1 value, 2 bytes, 3 string).
local core = require "pcrun.core"
local ffi = require "ffi"

local mpi = core.mpi
local now = core.now
local min = math.min

local M = { blocking = false }
M.__index = M
M.CONTROL, M.VALUE, M.STRING, M.BYE = 0, 1, 3, 9

pcall(ffi.cdef, "int usleep(unsigned int usec);")

-- Events by slot, filled by drain(); route[rank][k] is the slot of worker
-- k of that rank; control messages no slot takes wait in M.inbox.
local route = {}
M.inbox = {}
-- Messages for workers rank 0 has no slot for yet: an agent's worker can
-- fail its initializer and be reported dead while rank 0 still gathers
-- the other ranks. They are handed on once the slot exists.
local early = {}

local function push(slot, ev)
  local q = slot.tq
  q.tail = q.tail + 1
  q[q.tail] = ev
end

local function dispatch(src, tag, kind, v)
  local w = tag == 0 and kind == M.CONTROL and v.w or tag
  if w ~= 0 and not (route[src] and route[src][w]) then
    early[#early + 1] = { src, tag, kind, v }
    return
  end
  if tag == 0 and kind == M.CONTROL then
    local slot = route[src] and v.w and route[src][v.w]
    if slot and v.op == "dead" then
      slot.down = true
      push(slot, { "dead", v.info })
      return
    elseif slot and v.op == "up" then  -- up now: the scheduler may feed it
      slot.starting, slot.down = nil, nil
      slot.pid, slot.remote.pid = v.pid, v.pid
      push(slot, { "up" })
      return
    end
    v.src = src
    M.inbox[#M.inbox + 1] = v
    return
  end
  local slot = route[src] and route[src][tag]
  -- A reply from a worker stopped or dead (its successor is not up yet)
  -- belongs to work the scheduler has already taken back.
  if not slot or slot.down or slot.starting then return end
  if type(v) == "table" and v[1] == "init" then
    push(slot, { "init", v[2] })
  else
    push(slot, { "reply", v })
  end
end

--- Receive every message that has arrived; returns how many.
function M.drain()
  local n = 0
  if early[1] then
    local list = early
    early = {}
    for _, e in ipairs(list) do dispatch(e[1], e[2], e[3], e[4]) end
  end
  while true do
    local src, tag, kind, v = mpi.recv(true)
    if not src then return n end
    n = n + 1
    dispatch(src, tag, kind, v)
  end
end

local function pause(s)
  ffi.C.usleep(math.max(1, math.floor(s * 1e6)))
end

local function ready(slots)
  for i, s in ipairs(slots) do
    local q = s.tq
    if q and q.head <= q.tail then return i end
  end
end

--- The class's wait: the index in slots of one with an event, or nil
-- once timeout seconds passed (nil: for ever). Probes, never blocks.
function M.select(slots, timeout, spin)
  local t0 = now()
  local deadline = timeout and t0 + timeout
  local nap = 50e-6
  while true do
    local i = ready(slots)
    if i then return i end
    if M.drain() > 0 then
      i = ready(slots)
      if i then return i end
      nap = 50e-6
    end
    if core.interrupt() then error("interrupted", 0) end
    local t = now()
    if deadline and t >= deadline then return nil end
    if t - t0 >= (spin or 0) then
      pause(deadline and min(nap, deadline - t) or nap)
      nap = min(2 * nap, 1e-3)
    end
  end
end

--- Wait up to timeout seconds for a control message matching pred
-- (from M.inbox); returns it or nil.
function M.await(pred, timeout)
  local deadline = now() + timeout
  local nap = 50e-6
  while true do
    M.drain()
    for i, v in ipairs(M.inbox) do
      if pred(v) then
        table.remove(M.inbox, i)
        return v
      end
    end
    if now() >= deadline then return nil end
    pause(nap)
    nap = min(2 * nap, 1e-3)
  end
end

function M.control(rank, msg)
  mpi.send(rank, 0, M.CONTROL, msg)
end

--- A transport over the remote workers the agents announced: ranks is a
-- list of { rank =, host =, workers =, pids = }.
function M.new(cfg, ranks)
  local T = setmetatable({ class = M, slots = {}, ranks = { unpack(ranks) },
                           owner = core.getpid(), queue = 0.012 }, M)
  local list = {}
  for _, r in ipairs(ranks) do
    route[r.rank] = route[r.rank] or {}
    for k = 1, r.workers do
      list[#list + 1] = { rank = r.rank, k = k, host = r.host,
                          pid = r.pids[k] }
    end
  end
  T.plan = list  -- spawn takes them in order
  return T
end

function M:spawn(slot)
  local p = slot.remote
  if not p then  -- first time: the agent forked it at start
    p = table.remove(self.plan, 1)
    assert(p, "pcrun.cluster: more slots than remote workers")
    slot.remote, slot.rank, slot.k = p, p.rank, p.k
    slot.label = ("rank %d (%s) worker %d"):format(p.rank, p.host, p.k)
    slot.tq = { head = 1, tail = 0 }
    route[p.rank][p.k] = slot
    self.slots[#self.slots + 1] = slot
    slot.pid, slot.down = p.pid, nil
    return
  end
  slot.pid, slot.down, slot.starting = nil, nil, true
  M.control(slot.rank, { op = "spawn", w = slot.k })
end

function M:send(slot, batch)
  if slot.down or not slot.pid then return false end
  mpi.send(slot.rank, slot.k, M.VALUE, batch, "message")
  return true
end

function M:check(value, what)
  mpi.encode(value, what)
end

function M:recv(slot)
  local q = slot.tq
  local ev = q[q.head]
  if not ev then return nil end
  q[q.head], q.head = nil, q.head + 1
  if ev[1] == "dead" then slot.pid = nil end
  return ev[1], ev[2]
end

function M:poll(slot)
  local q = slot.tq
  return q.head <= q.tail
end

function M:kill(slot)
  if slot.pid then M.control(slot.rank, { op = "kill", w = slot.k }) end
end

-- The agent stops it quietly; what the old worker still sends is
-- dropped until its successor is up.
function M:stop(slot, sig)
  if not slot.pid and not slot.starting then return end
  M.control(slot.rank, { op = "stop", w = slot.k, sig = sig })
  slot.pid, slot.down = nil, true
  slot.tq = { head = 1, tail = 0 }
end

--- End every agent's workers; each agent answers "closed" and exits.
-- Waits up to 10 s for the answers.
function M:close()
  if self.closed or core.getpid() ~= self.owner then return end
  self.closed = true
  mpi.serving(false)
  local left = {}
  for _, r in ipairs(self.ranks) do
    M.control(r.rank, { op = "close" })
    left[r.rank] = true
  end
  for _ = 1, #self.ranks do
    local v = M.await(function(v) return v.op == "closed" and left[v.src] end,
                      10)
    if not v then break end
    left[v.src] = nil
  end
  for _, s in ipairs(self.slots) do s.pid, s.down = nil, true end
end

return M
