-- pcrun.transport_local: the pool's local transport, forked workers that
-- each talk to the parent over their own pcrun pipe. pool.lua (the
-- scheduler) reaches workers only through the interface below; an MPI
-- transport (issue 12) is the second implementation.
--
-- A slot is the scheduler's table for one worker position: slot.index
-- (1..pool size, the number users see), slot.t (its transport), the
-- scheduler's bookkeeping; slot.pid is set by the transport while a
-- worker is up. A transport object T:
--   T:spawn(slot)       start a worker (first or replacement); local: forks
--                       now, up on return
--   T:send(slot, batch) -> true | false (worker gone: its death comes
--                       from recv) | nil, err (cannot encode; nothing sent)
--   T:check(v, what)    raises what encoding v for this transport raises
--   T:recv(slot)        never blocks: "reply", msg | "init", err |
--                       "dead", {pid, code, running, at} (slot down) |
--                       "up" (async starts only) | nil (nothing now)
--   T:poll(slot)        whether recv has something now
--   T:kill(slot)        SIGKILL now; reported later as "dead" (timeouts)
--   T:stop(slot, sig)   quiet synchronous end, no event (nil: ask to exit)
--   T:close()           SIGTERM and reap all, free; only in the creator
-- M.wait(busy, timeout, spin): one wait over the slots of every transport
-- (grouped by slot.t.class, each class providing select(slots, timeout,
-- spin)) -> index in busy, or nil when timeout passed. Chunk sizing,
-- crash semantics, timeouts, maxtasksperchild and progress stay in
-- pool.lua. The whole contract: docs/transport.md.
local core = require "pcrun.core"
local ffi = require "ffi"
local process = require "pcrun.process"
local progress = require "pcrun.progress"

local M = {}
local Local = {}
Local.__index = Local
M.Local = Local

local unpack = unpack  -- LuaJIT
local now = core.now
local min = math.min
local tnew = require "table.new"
pcall(ffi.cdef, "int usleep(unsigned int usec);")

local FLUSH = 0.001   -- a worker reports at least this often
-- A worker that ran out of memory where it could not even reply exits
-- with this status; the parent fails the task with "not enough memory".
local EXIT_NOMEM = 86
M.EXIT_NOMEM = EXIT_NOMEM

local function pack(...) return { n = select("#", ...), ... } end

-- -- The worker side -----------------------------------------------------

-- The worker's frames below the task (the pool's loop, and the parent's
-- stack it inherited through fork) say nothing to the user: cut them.
-- A string error travels as its text and traceback; any other value as
-- { e = value, tb = traceback }, rebuilt as a TaskError in the parent.
local function traceback(e)
  local str = type(e) == "string"
  if str and e:find("global '[%w_]+' %(a nil value%)") then
    e = e .. " (the workers were forked when the pool was created: a "
        .. "global defined later does not exist in them)"
  end
  local tb = debug.traceback(str and e or "", 2)
  local cut = tb:find("\n%s*%[C%]: in function 'xpcall'")
  tb = cut and tb:sub(1, cut - 1) or tb
  if str then return tb end
  return { e = e, tb = (tb:gsub("^\n", "")) }
end

-- One protected run over items[k..n]; progress[at + 1] names the running
-- item so the parent can tell which task killed a worker.
local function runmap(fn, items, res, k, n, words, at)
  for i = k, n do
    words[at] = i
    res[i] = fn(items[i])
  end
end

local function runstar(fn, items, res, k, n, words, at)
  for i = k, n do
    words[at] = i
    local a = items[i]
    res[i] = fn(unpack(a, 1, a.n or #a))
  end
end

local function runcall(fn, items, res, k, n, words, at)
  for i = k, n do
    words[at] = i
    local a = items[i]
    if a then res[i] = pack(fn(unpack(a, 1, a.n))) end  -- false: cancelled
  end
end

local RUNNERS = { runmap, runstar, runcall }

-- Run a chunk; only an error costs a new pcall, not every item.
local function runchunk(fn, mode, items, n, words, at)
  local res, errs, k = tnew(n, 0), nil, 1
  local run = RUNNERS[mode]
  while k <= n do
    local ok, err = xpcall(run, traceback, fn, items, res, k, n, words, at)
    if ok then break end
    local i = words[at]
    -- LuaJIT does not collect when an allocation fails: free the task's
    -- garbage now, or the reply could run out of memory too.
    if err == "not enough memory" then collectgarbage() end
    errs = errs or {}
    errs[i] = err
    k = i + 1
  end
  return res, errs
end

-- Run one chunk message {id, fnid, items, n, mode [, fn]}; the reply is
-- {id, results, errors, seconds}.
local function runtask(t, fns, words, slot)
  local id, fnid, items, n = t[1], t[2], t[3], t[4]
  local fn, why = fns[fnid], "function not available"
  if fn == nil and t[6] ~= nil then
    local ok, f = pcall(process.resolve, t[6])
    if ok then fns[fnid], fn = f, f else why = f end
  end
  words[2 * slot] = id
  words[2 * slot + 1] = 0
  local t0 = now()
  local res, errs = {}, {}
  if fn then
    res, errs = runchunk(fn, t[5], items, n, words, 2 * slot + 1)
  else
    for k = 1, n do errs[k] = why end
  end
  return { id, res, errs, now() - t0 }
end

-- Send the replies; a result that cannot cross becomes that task's
-- error, an error value that cannot cross its text.
local function reply(conn, out, encode)
  local ok, err = pcall(conn.send, conn, out)
  if ok then return end
  if core.errcode(err) == "closed" then core.child_exit(0) end
  encode = encode or core.encode
  for _, r in ipairs(out) do
    local res, errs = r[2], r[3] or {}
    for k, v in pairs(errs) do
      if type(v) == "table" and not pcall(encode, v.e) then
        local _, why = pcall(encode, v.e, "error value")
        errs[k] = ("%s (%s)\n%s"):format(tostring(v.e), tostring(why), v.tb)
      end
    end
    for k, v in pairs(res) do
      local eok, eerr = pcall(encode, v, "result")
      if not eok then res[k], errs[k] = nil, eerr end
    end
    r[3] = errs
  end
  conn:send(out)
end

local me  -- this worker's identity, for pcrun.worker()

--- In a pool's worker: { index = 1 .. n, n = the pool's size, pool = an
-- id of the pool, unique in the process that created it }; else nil.
function M.worker()
  return me and { index = me.index, n = me.n, pool = me.pool }
end

local function worker_loop(T, w)
  me = { index = w.index, n = T.size, pool = T.id }
  for _, o in pairs(T.slots) do
    if o.conn then o.conn:close() end  -- the parent's ends, not ours
  end
  local conn = w.wconn
  conn:_exclusive(true)
  -- A cluster agent's worker: its replies go to another node, so arena
  -- handles in them fail their task (the rule of core.mpi.encode).
  local encode = T.remote and core.mpi and core.mpi.encode
  if encode then conn:_remote(true) end
  if T.initializer then
    local ok, err = xpcall(T.initializer, traceback,
                           unpack(T.initargs, 1, T.initargs.n))
    if not ok then
      if type(err) == "table" then err = tostring(err.e) .. "\n" .. err.tb end
      pcall(conn.send, conn, { "init", err })
      core.child_exit(1)
    end
  end
  local words = ffi.cast("uint32_t *", T.mem)
  progress.worker(words + 2 * T.n)
  local slot, fns = w.tslot, {}
  while true do
    local ok, batch = pcall(conn.recv, conn)
    if not ok or batch == "exit" then core.child_exit(0) end
    if batch.flush then fns = {} end
    local out, last = {}, now()
    local nid, nat  -- a task that ran out of memory, blamed if reply fails
    for i = 1, #batch do
      local r = runtask(batch[i], fns, words, slot)
      out[#out + 1] = r
      if r[3] then
        for k, e in pairs(r[3]) do
          if e == "not enough memory" then nid, nat = r[1], k end
        end
      end
      if i < #batch and now() - last > FLUSH then
        if nid then words[2 * slot], words[2 * slot + 1] = nid, nat end
        reply(conn, out, encode)  -- long batch: report what is done
        out, last, nid = {}, now(), nil
      end
    end
    words[2 * slot] = 0
    if nid then words[2 * slot], words[2 * slot + 1] = nid, nat end
    reply(conn, out, encode)
    words[2 * slot] = 0
  end
end

local function say_failed(index, err)
  io.stderr:write(("pcrun: worker %d (pid %d) failed: %s\n")
                  :format(index, core.getpid(), tostring(err)))
end

-- Nothing may unwind out of here: below is the parent's stack, which the
-- fork copied. Out of memory, even the report can raise: protected too.
local function worker_main(T, w)
  process._forked({ name = "PoolWorker-" .. w.index, worker = w.index })
  local ok, err = xpcall(worker_loop, debug.traceback, T, w)
  if err == "not enough memory" then core.child_exit(EXIT_NOMEM) end
  if not ok then pcall(say_failed, w.index, err) end
  core.child_exit(ok and 0 or 70)
end

-- -- The parent side ------------------------------------------------------

-- Each worker's channel: 1 MiB rings, smaller in a small arena so that
-- the channels take at most 1/8 of it (PCRUN_ARENA=8M still runs pool(2)).
local function ringsize(n)
  local r = 2^20
  while r > 4096 and 4 * r * n > core.arena().size / 8 do r = r / 2 end
  return r
end

--- A local transport for n workers of a pool. cfg: n (its workers), size
-- (the pool's, all transports), id (the pool's), initializer, initargs
-- (packed). Its arena words: per worker the running chunk id and item
-- (read when it dies), then the pool's bar-on-screen word.
function M.new(cfg)
  local n = cfg.n
  local T = setmetatable({ class = M, n = n, size = cfg.size, id = cfg.id,
    initializer = cfg.initializer, initargs = cfg.initargs,
    remote = cfg.remote, nohandles = cfg.nohandles and core.mpi ~= nil,
    ring = ringsize(n), slots = {}, ntslots = 0, pid = core.getpid() },
    Local)
  local ref, mem = core.array_new("uint32_t", 4, 2 * n + 2, "pcrun.pool")
  T.ref, T.mem = ref, mem
  T.words = ffi.cast("uint32_t *", mem)
  T.flag = T.words + 2 * n
  progress.share(T.flag)
  return T
end

function Local:spawn(w)
  if not w.tslot then  -- its words, kept across replacements
    self.ntslots = self.ntslots + 1
    w.tslot = self.ntslots - 1
    self.slots[w.tslot] = w
  end
  local a, b = core.pipe(true, self.ring)
  a:_exclusive(true)
  if self.nohandles then a:_remote(true) end  -- a cluster's: no handles
  w.conn, w.wconn = a, b
  process.current_process()  -- the worker's parent_process()
  local pid = core.fork()
  if pid == 0 then
    local _, err = pcall(worker_main, self, w)  -- returns on an escape
    core.child_exit(err == "not enough memory" and EXIT_NOMEM or 70)
  end
  b:close()  -- now the worker's death closes its end: we see end of file
  w.wconn, w.pid = nil, pid
  core.set_daemon(pid, true)  -- an exit without lua_close must not wait
end

function Local:send(w, batch)
  local conn = w.conn
  local ok, err = pcall(conn.send, conn, batch, nil)
  if ok then return true end
  if core.errcode(err) == "closed" then return false end
  return nil, err
end

function Local:check(v, what)
  if self.nohandles then return core.mpi.encode(v, what) end
  core.encode(v, what)
end

-- The end of file on a worker's pipe: reap it (SIGKILL if it lingers) and
-- read which chunk and item it was running.
local function reap(self, w)
  local done, code = core.wait(w.pid, 2)
  if not done then
    core.signal(w.pid, 9)
    code = select(2, core.wait(w.pid))
  end
  local words, s = self.words, 2 * w.tslot
  local info = { pid = w.pid, code = code, running = words[s],
                 at = words[s + 1] }
  words[s], words[s + 1] = 0, 0
  w.conn:close()
  w.pid = nil
  return info
end

function Local:recv(w)
  local conn = w.conn
  local ok, msg = pcall(conn.recv, conn, 0)
  if not ok then return "dead", reap(self, w) end
  if msg == nil then return nil end
  if msg[1] == "init" then return "init", msg[2] end
  return "reply", msg
end

-- A cluster agent relays its workers' frames undecoded: a reply is
-- "reply", payload, frame kind; "dead" as recv. send_raw as send.
function Local:recv_raw(w)
  local conn = w.conn
  local ok, msg, kind = pcall(conn._recv_raw, conn, 0)
  if not ok then return "dead", reap(self, w) end
  if msg == nil then return nil end
  return "reply", msg, kind
end

function Local:send_raw(w, kind, payload)
  local ok, err = pcall(w.conn._send_raw, w.conn, kind, payload)
  if ok then return true end
  if core.errcode(err) == "closed" then return false end
  error(err, 0)
end

function Local:poll(w)
  return w.conn:poll()
end

function Local:kill(w)
  core.signal(w.pid, 9)
end

function Local:stop(w, sig)
  if not w.pid then return end
  if w.conn and not w.conn:closed() then
    if not sig then pcall(w.conn.send, w.conn, "exit", 0) end
    w.conn:close()
  end
  if sig then core.signal(w.pid, sig) end
  if not core.wait(w.pid, sig and 5 or 30) then
    core.signal(w.pid, 9)
    core.wait(w.pid)
  end
  w.pid = nil
  if self.words then
    self.words[2 * w.tslot], self.words[2 * w.tslot + 1] = 0, 0
  end
end

-- Runs from __gc or at exit too: the pool may be gone. A worker forked
-- later inherits the pool's finalizer and must not act on its parent's.
function Local:close()
  if core.getpid() ~= self.pid then return end
  for _, w in pairs(self.slots) do pcall(self.stop, self, w, 15) end
  if self.flag then progress.unshare(self.flag) self.flag = nil end
  if self.ref then
    self.words = nil
    core.release(self.ref)
    self.ref = nil
  end
end

-- The local class's wait: the pipes of busy slots, in the kernel.
M.blocking = true
function M.select(slots, timeout, spin)
  local conns = {}
  for k = 1, #slots do conns[k] = slots[k].conn end
  return core.select(conns, timeout, spin)
end

-- Several classes: poll the others between short waits of the blocking
-- one (the spin when a reply is due, else 50 us growing to 1 ms).
local function waitmixed(busy, timeout, spin)
  local groups, list = {}, {}
  for k = 1, #busy do
    local cls = busy[k].t.class
    local g = groups[cls]
    if not g then
      g = { cls = cls, slots = {}, at = {} }
      groups[cls] = g
      list[#list + 1] = g
    end
    g.slots[#g.slots + 1], g.at[#g.at + 1] = busy[k], k
  end
  local deadline, nap = timeout and now() + timeout, 50e-6
  while true do
    local sleeper
    for _, g in ipairs(list) do
      if g.cls.blocking and not sleeper then sleeper = g
      else
        local i = g.cls.select(g.slots, 0, 0)
        if i then return g.at[i] end
      end
    end
    local left = deadline and deadline - now()
    if left and left <= 0 then return nil end
    local step = min(left or nap, spin > 0 and spin or nap)
    if sleeper then
      local i = sleeper.cls.select(sleeper.slots, step, spin)
      if i then return sleeper.at[i] end
    else
      ffi.C.usleep(step * 1e6)
    end
    nap = min(nap * 2, 1e-3)
  end
end

--- One wait over busy slots of any transports: the index of one with an
-- event for recv, or nil once timeout seconds (nil: no limit) passed.
function M.wait(busy, timeout, spin)
  local cls = busy[1].t.class
  for k = 2, #busy do
    if busy[k].t.class ~= cls then return waitmixed(busy, timeout, spin) end
  end
  return cls.select(busy, timeout, spin)
end

return M
