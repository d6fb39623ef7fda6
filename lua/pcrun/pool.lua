-- pcrun.pool: a pool of workers with map, imap, starmap, apply and
-- futures. This is the scheduler: the parent drives everything while it
-- waits (no threads): it hands out chunks, collects results, notices dead
-- or late workers and has them replaced. It reaches workers only through
-- a transport (docs/transport.md): transport_local.lua forks them and
-- talks over one pipe each.
local core = require "pcrun.core"
local future = require "pcrun.future"
local options = require "pcrun.opts"
local progress = require "pcrun.progress"
local transport = require "pcrun.transport_local"
local tnew = require "table.new"

local M = {}
local Pool = {}
Pool.__index = Pool
Pool.__name = "pcrun.Pool"
M.Pool = Pool

local unpack = unpack  -- LuaJIT
local now = core.now
local floor, ceil, max, min = math.floor, math.ceil, math.max, math.min

local TARGET = 0.004  -- seconds of work per chunk once an item's cost is known
-- Items per chunk (and per merged message) unless the caller gives a
-- chunksize: LuaJIT's allocator maps a block over 128 KiB (a table of
-- 16k slots) on its own and unmaps it when freed, so each bigger chunk
-- would take fresh pages, a fault per 4 KiB, in the parent (the items
-- cut, the results decoded) and in the worker. A VM with costly faults
-- made that most of a 1M-item map (2026-12-01: 6,000 faults a map).
local MAXCHUNK = 8192
-- A worker holds one chunk, and more while it holds less than QUEUE
-- seconds of work: enough to hide a round trip through the parent, not so
-- much that one worker sits on queued work at the end while others idle.
local QUEUE = 0.001
local MAXDEPTH = 256
local FNCACHE = 256   -- functions a worker keeps before starting afresh
local SPINFOR = 100e-6  -- the parent polls this long for a reply due soon
local EXIT_NOMEM = transport.EXIT_NOMEM
local MAP, STAR, CALL = 1, 2, 3
local SIGNAMES = { [1] = "SIGHUP", [2] = "SIGINT", [3] = "SIGQUIT",
  [4] = "SIGILL", [6] = "SIGABRT", [7] = "SIGBUS", [8] = "SIGFPE",
  [9] = "SIGKILL", [11] = "SIGSEGV", [13] = "SIGPIPE", [15] = "SIGTERM" }

local function pack(...) return { n = select("#", ...), ... } end

-- A worker's chunks in flight, oldest first: a queue that does not shift.
local function qnew() return { head = 1, tail = 0 } end
local function qlen(q) return q.tail - q.head + 1 end
local function qpush(q, v) q.tail = q.tail + 1 q[q.tail] = v end
local function qshift(q)
  local v = q[q.head]
  if v == nil then return nil end
  q[q.head], q.head = nil, q.head + 1
  return v
end
local function qpop(q)
  local v = q[q.tail]
  if v == nil then return nil end
  q[q.tail], q.tail = nil, q.tail - 1
  return v
end

--- The error of a task that raised a value other than a string: value
-- (the value raised, as it crossed), worker (its index; nil when raised in
-- the parent), task (the index of the task in its call), traceback (the
-- worker's, a string). tostring gives the text a string error would have.
local TaskError = { __name = "pcrun.TaskError" }
TaskError.__index = TaskError
M.TaskError = TaskError

function TaskError:__tostring()
  local v = self.value
  local desc = type(v) == "string" and v or (type(v) == "table"
    and not (getmetatable(v) or {}).__tostring
    and ("error object (%s)"):format(tostring(v)) or tostring(v))
  local head = self.worker and ("worker %d: "):format(self.worker) or ""
  return ("%stask %d: %s\n%s"):format(head, self.task, desc,
                                      self.traceback or "")
end

function TaskError:__serialize()
  return { self.value, self.worker, self.task, self.traceback }
end

function TaskError.__deserialize(t)
  return setmetatable({ value = t[1], worker = t[2], task = t[3],
                        traceback = t[4] }, TaskError)
end

--- In a pool's worker: { index, n, pool }; else nil (see transport_local).
M.worker = transport.worker

-- -- Workers -----------------------------------------------------------

-- A slot's scheduler state, fresh for each worker it gets.
local function resetslot(w)
  w.inflight, w.fns, w.nfns, w.done, w.queued, w.nitems = qnew(), {}, 0, 0,
    0, 0
  w.retiring, w.timedout = nil, nil
end

-- (Re)start the slot's worker through its transport.
local function spawn(w)
  resetslot(w)
  w.t:spawn(w)
end

local function shutdown(ts)
  for _, t in ipairs(ts) do pcall(t.close, t) end
end

-- -- Jobs and chunks ----------------------------------------------------

-- A job is one call (map, imap, submit...); its input is cut into chunks
-- as workers free up, sized from the measured cost of its items.
local function fnid(self, fn)
  local id = self.fnids[fn]
  if not id then
    self.nextfn = self.nextfn + 1
    id = self.nextfn
    self.fnids[fn] = id
  end
  return id
end

local function newjob(self, kind, fn, mode, chunksize)
  local id = fnid(self, fn)
  local job = { kind = kind, fn = fn, fnid = id, mode = mode,
                cost = self.costs[id],  -- what this function cost last time
                chunksize = chunksize, pos = 1, produced = 0, completed = 0,
                consumed = 0, telapsed = 0, titems = 0 }
  if kind == "map" or kind == "imap" then
    job.results, job.errs, job.got = {}, {}, {}
  end
  return job
end

local function sizefor(self, job)
  if job.chunksize then return job.chunksize end
  local size = 1
  if job.cost then size = floor(TARGET / max(job.cost, 1e-9)) end
  if job.total then  -- guided: shrink towards the end so all finish together
    local left = job.total - job.pos + 1
    size = min(size, max(1, ceil(left / (4 * self.n))))
  end
  return max(1, min(size, MAXCHUNK))
end

-- Read up to size items; returns how many, and true at the end.
local function readiter(iter, items, size)
  for n = 1, size do
    local v = iter()
    if v == nil then return n - 1, true end
    items[n] = v
  end
  return size, false
end

-- Cut the next chunk of job's input, or nil when none is ready.
local function cut(self, job)
  if job.window and job.produced - job.consumed >= job.window then
    return nil
  end
  local size = sizefor(self, job)
  if self.timeout then size = 1 end
  local items, n, first = nil, 0, job.pos
  if job.list then
    local last = min(job.total, first + size - 1)
    items = tnew(max(0, last - first + 1), 0)
    local list = job.list
    for i = first, last do items[i - first + 1] = list[i] end
    n = last - first + 1
  elseif job.iter then
    items = {}
    -- The iterator runs in whichever call drives the pool: its error ends
    -- this job's input only, and its reader raises it after the results
    -- of the items read before it.
    local ok, got, ended = pcall(readiter, job.iter, items, size)
    if ok then
      n, job.exhausted = got, ended or nil
    else
      n, job.exhausted = #items, true  -- items holds no holes
      job.inerr = got == nil and "nil error" or got
    end
  end
  job.pos = first + n
  job.produced = job.produced + n
  if (job.total and job.pos > job.total) or job.exhausted then
    job.exhausted = true
  end
  if n == 0 then return nil end
  self.nextid = self.nextid + 1
  return { id = self.nextid, job = job, first = first, n = n, items = items }
end

-- The jobs waiting for workers: a doubly linked list in call order, so
-- that queuing, finishing and cancelling a job cost O(1) however many
-- futures wait (a list with table.remove made bulk submits quadratic).
local function jobpush(self, job)
  local tail = self.jtail
  job.prev = tail
  if tail then tail.next = job else self.jhead = job end
  self.jtail = job
  job.queued = true
end

local function jobunlink(self, job)
  if not job.queued then return end
  local p, n = job.prev, job.next
  if p then p.next = n else self.jhead = n end
  if n then n.prev = p else self.jtail = p end
  job.prev, job.next, job.queued = nil, nil, nil
end

-- Retries first, then jobs in order; a stream held back by its window
-- (its reader is slow or gone) does not hold back the jobs behind it.
local function nextchunk(self)
  local retry = self.retry
  if retry.head <= retry.tail then return qshift(retry) end
  local job = self.jhead
  while job do
    local c = not job.exhausted and cut(self, job)
    local nxt = job.next
    if job.exhausted then jobunlink(self, job) end
    if c then return c end
    job = nxt
  end
end

local function taskmsg(self, w, c)
  local job = c.job
  local t = { c.id, job.fnid, c.items, c.n, job.mode }
  if not w.fns[job.fnid] then
    t[6] = job.fn
    w.fns[job.fnid] = true
    w.nfns = w.nfns + 1
  end
  if self.timeout then c.deadline = now() + self.timeout end
  local fs = job.futures
  if fs then
    for k = c.first, c.first + c.n - 1 do
      local f = fs[k]
      if f and f.state == "pending" then f.state = "running" end
    end
  end
  return t
end

local deliver1, requeue

-- Count k more tasks of job done; a job with onend (map_async) ends there.
local function advance(job, k)
  job.completed = job.completed + k
  if job.onend and job.completed >= job.total then
    local f = job.onend
    job.onend = nil
    f(job)
  end
end

-- A batch that cannot be encoded: find the tasks whose arguments cannot
-- cross, fail those here in the parent, hand the others out again. A
-- worker that is gone is reported by its transport as dead instead.
local function sendbatch(self, w, batch)
  local t = w.t
  if t:send(w, batch) ~= nil then return end
  w.fns, w.nfns = {}, 0  -- the functions of this batch never arrived
  for b = #batch, 1, -1 do
    local c = qpop(w.inflight)
    w.queued, w.nitems = w.queued - c.est, w.nitems - c.n
    local job, from = c.job, 1
    -- Its function stopped crossing (an upvalue changed since checked).
    local fok, ferr = true, nil
    if batch[b][6] ~= nil then fok, ferr = pcall(t.check, t, job.fn, "fn") end
    if not fok then
      self.fnids[job.fn] = nil
      for k = 1, c.n do
        deliver1(self, job, c.first + k - 1, nil, ("task %d: cannot send "
          .. "its function: %s"):format(c.first + k - 1, tostring(ferr)))
      end
      advance(job, c.n)
      from = c.n + 2  -- nothing to requeue
    end
    for k = from, c.n + 1 do
      local bad
      if k <= c.n then
        local args = job.mode == MAP and { c.items[k] } or c.items[k]
        local eok, e = pcall(t.check, t, args, "args")
        bad = not eok and e
      end
      if bad or k > c.n then
        requeue(self, c, from, k - 1)
        from = k + 1
      end
      if bad then
        local idx = c.first + k - 1
        deliver1(self, job, idx, nil, ("task %d: cannot send its "
          .. "arguments: %s"):format(idx, tostring(bad)))
        advance(job, 1)
      end
    end
  end
end

-- Merge c into prev when it continues it: chunks of one job cut for one
-- worker in one round travel as one message (with chunksize 1 that saves
-- a message per task; errors and crashes are still told per task), up to
-- MAXCHUNK items: bigger ones go as separate chunks of the same batch.
local function merge(prev, c)
  if not prev or prev.job ~= c.job or prev.first + prev.n ~= c.first
     or prev.n + c.n > MAXCHUNK then
    return false
  end
  local items, n = prev.items, prev.n
  for k = 1, c.n do items[n + k] = c.items[k] end
  prev.n, prev.est = n + c.n, prev.est + c.est
  return true
end

-- Give each worker chunks until it holds one, or QUEUE seconds
-- of work (by the measured cost), all in one message. A send that fails
-- means the worker died; its transport reports it.
local function feed(self)
  if self.state == "terminated" or self.broken then return end
  self.unfed = 0
  -- Idle workers first, one chunk each: a task never queues behind a
  -- long one while a worker waits.
  for pass = 1, 2 do
    local limit = (pass == 1 or self.timeout) and 1 or MAXDEPTH
    for _, w in ipairs(self.workers) do
      local fits = pass == 2 or qlen(w.inflight) == 0
      if w.pid and not w.retiring and fits then
        local inf, picked, last = w.inflight, {}, nil
        local held = qlen(inf)
        local quota = self.maxtasks and self.maxtasks - w.done or math.huge
        while held < limit and (held < 1 or w.queued < (w.t.queue or QUEUE))
              and w.nitems < quota do
          local c = nextchunk(self)
          if not c then break end
          c.est = c.n * (c.job.cost or 1)
          w.queued, w.nitems = w.queued + c.est, w.nitems + c.n
          held = held + 1
          if not (limit > 1 and merge(last, c)) then
            picked[#picked + 1] = c
            last = c
          end
        end
        if #picked > 0 then
          local batch = {}
          if w.nfns >= FNCACHE then  -- both sides start afresh
            batch.flush, w.fns, w.nfns = true, {}, 0
          end
          for i, c in ipairs(picked) do
            qpush(inf, c)
            batch[i] = taskmsg(self, w, c)
          end
          sendbatch(self, w, batch)
        end
      end
    end
  end
end

-- -- Results ------------------------------------------------------------

function deliver1(self, job, idx, res, err)
  if job.kind == "submit" then
    local f = job.futures[idx]
    job.futures[idx], job.list[idx] = nil, nil  -- done with both
    if err then future.settle(f, false, err)
    else future.settle(f, true, res) end
  elseif job.kind == "unordered" then
    job.rtail = job.rtail + 1  -- the reader clears from the front
    job.ready[job.rtail] = { idx, res, err }
  else
    job.results[idx] = res
    if err then job.errs[idx] = err end
    job.got[idx] = true
  end
end

-- w is nil for errors raised in the parent (arguments that cannot cross).
local function taskerr(w, idx, err)
  if type(err) == "table" then
    return setmetatable({ value = err.e, worker = w and w.index, task = idx,
                          traceback = err.tb }, TaskError)
  end
  if not w then return ("task %d: %s"):format(idx, tostring(err)) end
  return ("%s: task %d: %s"):format(w.label or "worker " .. w.index, idx,
                                    tostring(err))
end

local function deliver(self, w, c, res, errs)
  local job, first = c.job, c.first - 1
  if job.kind == "map" or job.kind == "imap" then  -- the hot path: bulk
    local results, got = job.results, job.got
    for k = 1, c.n do results[first + k] = res[k] end
    if job.kind == "imap" then
      for k = 1, c.n do got[first + k] = true end
    end
    for k, err in pairs(errs or {}) do
      job.errs[first + k] = taskerr(w, first + k, err)
    end
  else
    for k = 1, c.n do
      local err = errs and errs[k]
      deliver1(self, job, first + k, res[k], err and taskerr(w, first + k, err))
    end
  end
  advance(job, c.n)
  if job.bar then
    progress.update(job.bar, job.completed, job.exhausted and job.produced)
  end
end

local function retire(self, w)
  w.retiring = true
  w.t:stop(w)
  if self.state ~= "terminated" then spawn(w) end
end

local function complete(self, w, msg)
  for i = 1, #msg do
    local r = msg[i]
    local c = qshift(w.inflight)
    if not c or c.id ~= r[1] then
      self.broken = "pcrun.pool: worker " .. w.index .. " answered out of turn"
      return
    end
    local job = c.job
    w.done = w.done + c.n
    w.queued, w.nitems = w.queued - c.est, w.nitems - c.n
    job.telapsed = job.telapsed + r[4]
    job.titems = job.titems + c.n
    job.cost = job.telapsed / job.titems
    self.costs[job.fnid] = job.cost
    deliver(self, w, c, r[2], r[3])
  end
  if qlen(w.inflight) == 0 then w.queued = 0 end  -- no drift from rounding
  if self.maxtasks and w.done >= self.maxtasks and qlen(w.inflight) == 0 then
    retire(self, w)
  end
end

local function slice(items, from, to)
  local t = {}
  for i = from, to do t[i - from + 1] = items[i] end
  return t
end

function requeue(self, c, from, to)
  if from > to then return end
  self.nextid = self.nextid + 1
  qpush(self.retry, { id = self.nextid, job = c.job,
                      first = c.first + from - 1, n = to - from + 1,
                      items = slice(c.items, from, to) })
end

-- A worker died (info from its transport: pid, exit code, the chunk and
-- item it was running). Fail the task it was running, hand its other tasks
-- out again and have it replaced.
local function died(self, w, info)
  local code, pid = info.code, info.pid
  local why
  if w.timedout then
    why = ("timed out after %gs"):format(self.timeout)
  elseif code == EXIT_NOMEM then
    why = "not enough memory"
  elseif code and code < 0 then
    why = ("killed by signal %d (%s)"):format(-code, SIGNAMES[-code] or "?")
  else
    why = ("exited with status %s"):format(tostring(code))
  end
  local running, at = info.running, info.at
  for i = w.inflight.head, w.inflight.tail do
    local c = w.inflight[i]
    if c.id == running and at >= 1 and at <= c.n then
      requeue(self, c, 1, at - 1)  -- done, but their results died with it
      local idx = c.first + at - 1
      deliver1(self, c.job, idx, nil, ("%s (pid %d) died running "
        .. "task %d: %s"):format(w.label or "worker " .. w.index, pid, idx,
                                 why))
      advance(c.job, 1)
      requeue(self, c, at + 1, c.n)
    else
      requeue(self, c, 1, c.n)
    end
  end
  w.inflight = qnew()
  if self.state ~= "terminated" then spawn(w) end
end

local function checklate(self)
  local t = now()
  for _, w in ipairs(self.workers) do
    local c = w.inflight[w.inflight.head]
    if w.pid and c and c.deadline and c.deadline <= t and not w.timedout then
      w.timedout = true
      w.t:kill(w)
    end
  end
end

-- -- Ctrl-C -------------------------------------------------------------

-- Every pool not ended, with the pid of the process that made it (a forked
-- copy's inherited pools are not its own): Ctrl-C cancels them all, and a
-- stand-alone future drives them while it waits.
local live = setmetatable({}, { __mode = "k" })
M.live = live
local handled = 0  -- the SIGINTs the pools have acted on (core.interrupt)

local function stopjob(job, why)
  job.cancelled = why
  for _, f in pairs(job.futures or {}) do future.settle(f, false, why) end
end

-- Cancel everything the pool has queued and kill the workers running its
-- tasks (each gets a fresh replacement): after Ctrl-C nothing the script
-- asked for before goes on.
local function cancel(self, why)
  if self.state == "terminated" then return end
  local job = self.jhead
  while job do
    local nxt = job.next
    stopjob(job, why)
    jobunlink(self, job)
    job = nxt
  end
  for i = self.retry.head, self.retry.tail do stopjob(self.retry[i].job, why) end
  self.retry = qnew()
  for _, w in ipairs(self.workers) do
    if w.pid and qlen(w.inflight) > 0 then
      for i = w.inflight.head, w.inflight.tail do
        stopjob(w.inflight[i].job, why)
      end
      w.t:stop(w, 9)
      spawn(w)
    end
  end
end

-- Raises "interrupted" while Ctrl-C is pending; the first pool call
-- after a Ctrl-C (pending or already cleared) cancels every pool's work.
local function checkint()
  local pending, count = core.interrupt()
  if count ~= handled then
    handled = count
    for p in pairs(live) do cancel(p, "interrupted") end
  end
  if pending then error("interrupted", 0) end
end
M.checkint = checkint

--- Drive pools until one event is handled or timeout seconds pass.
-- Returns false when the pools have nothing in flight.
function M.pump(pools, timeout)
  checkint()
  local deadline = timeout and now() + timeout
  local busy, owners, soonest = {}, {}, math.huge
  for _, p in ipairs(pools) do
    if p.broken then error(p.broken, 0) end
    feed(p)
    for _, w in ipairs(p.workers) do
      if w.starting then  -- a replacement on its way (remote): its "up"
        busy[#busy + 1] = w
        owners[#busy] = p
      elseif w.pid and qlen(w.inflight) > 0 then
        busy[#busy + 1] = w
        owners[#busy] = p
        soonest = min(soonest, w.queued)
        local d = w.inflight[w.inflight.head].deadline
        if d and not w.timedout and (not deadline or d < deadline) then
          deadline = d
        end
      end
    end
  end
  if #busy == 0 then return false end
  -- Spin before sleeping only when a reply is due soon: a parent spinning
  -- through long tasks would take a core from its own workers.
  local spin = soonest < SPINFOR and SPINFOR or 0
  local ok, i = pcall(transport.wait, busy,
                      deadline and max(0, deadline - now()), spin)
  if not ok then
    checkint()  -- Ctrl-C in the wait: cancel at once, and raise
    error(i, 0)
  end
  if not i then
    for _, p in ipairs(pools) do checklate(p) end
    return true
  end
  local p, w = owners[i], busy[i]
  local t = w.t
  repeat
    local ev, msg = t:recv(w)
    if ev == "reply" then
      complete(p, w, msg)
    elseif ev == "dead" then
      died(p, w, msg)
      break
    elseif ev == "init" then
      p.broken = "pcrun.pool: initializer failed in "
                 .. (w.label or "worker " .. w.index) .. ": " .. tostring(msg)
    elseif ev == nil then
      break
    end
  until qlen(w.inflight) == 0 or not t:poll(w)
  return true
end

-- -- The pool ------------------------------------------------------------

-- The checks raise at level lvl: the user's call, seen from the check.
local function checkfn(who, fn, lvl)
  if type(fn) ~= "function" and not (type(fn) == "string"
      and fn:find("^[%w_][%w_%.]*%.[%w_]+$")) then
    error(who .. ": fn must be a function or a 'module.function' string, "
          .. "got " .. type(fn), lvl or 3)
  end
end

-- A function that cannot cross would fail every batch it joins: check it
-- once per pool, in the caller, before it joins one, with the strictest
-- transport's check (a remote one refuses arena handles).
local function checksend(self, who, fn, lvl)
  if type(fn) ~= "function" or self.fnids[fn] then return end
  local t = self.checker
  local ok, err = pcall(t.check, t, fn, "fn")
  if not ok then
    err = tostring(err):gsub("^pcrun%.encode: ", "")
                       :gsub("<upvalue ([^>]*)>", ": upvalue '%1'")
    error(who .. ": " .. err, lvl + 1)
  end
end

local function checkusable(self, who, lvl)
  if getmetatable(self) ~= Pool then
    error(who .. ": call it as pool:" .. who:match("[%w_]+$") .. "(...)",
          lvl or 3)
  end
  if self.state ~= "run" then
    error(who .. ": the pool is " .. self.state, lvl or 3)
  end
  if self.broken then error(self.broken, 0) end
end

local CALLOPTS = options.spec { chunksize = "positive integer",
                                progress = "boolean or string" }

-- The last argument of map and friends: a chunksize, or an options table
-- { chunksize =, progress = }. Returns chunksize, progress.
local function checkchunk(who, cs, lvl)
  if type(cs) == "table" then
    local o = options.check(who, cs, CALLOPTS, lvl or 3)
    return o.chunksize, o.progress
  end
  if cs ~= nil and (type(cs) ~= "number" or cs < 1 or cs % 1 ~= 0) then
    error(who .. ": chunksize must be a positive integer", lvl or 3)
  end
  return cs, nil
end

local function isint(n) return type(n) == "number" and n >= 1 and n % 1 == 0 end

local npools = 0  -- pools created by this process: their ids

local POOLOPTS = options.spec {
  initializer = "function", initargs = "table",
  maxtasksperchild = "positive integer", timeout = "positive number",
  progress = "boolean", chunksize = "positive integer",
}
local POOLHINTS = { processes = "the number of workers is the first "
                    .. "argument: pcrun.pool(n, opts)" }

--- pcrun.pool([n] [, opts]): fork n workers (default: pcrun -n, else the
-- CPU count). opts: initializer, initargs, maxtasksperchild, timeout,
-- progress, chunksize.
function M.new(n, opts, remote)
  if type(n) == "table" and opts == nil then n, opts = nil, n end
  if n ~= nil and not (isint(n) and n <= 1024) then
    error("pcrun.pool: n must be an integer from 1 to 1024", 2)
  end
  opts = options.check("pcrun.pool", opts, POOLOPTS, 2, POOLHINTS)
  local t = opts.timeout
  local self = setmetatable({}, Pool)
  self.n = n or core.default_workers()
  self.initializer = opts.initializer
  local ia = opts.initargs or {}
  self.initargs = pack(unpack(ia, 1, ia.n or #ia))
  self.maxtasks, self.timeout = opts.maxtasksperchild, t
  self.chunksize = opts.chunksize  -- for calls that give none
  local env = os.getenv("PCRUN_PROGRESS")
  self.progress = opts.progress or (env ~= nil and env ~= "" and env ~= "0")
  self.workers, self.retry = {}, qnew()
  self.fnids = setmetatable({}, { __mode = "k" })
  self.costs = {}  -- seconds per task, by function id
  self.nextfn, self.nextid, self.state, self.unfed = 0, 0, "run", 0
  npools = npools + 1
  self.id = npools
  -- remote: pcrun.cluster's MPI transport module and the agents'
  -- ranks; its slots follow the local ones, and every slot refuses arena
  -- handles so that a call behaves the same wherever it runs.
  local nlocal = self.n
  local rt = remote and remote.mod.new({ id = self.id }, remote.ranks)
  if rt then
    for _, r in ipairs(remote.ranks) do self.n = self.n + r.workers end
  end
  local lt = transport.new{ n = nlocal, size = self.n, id = self.id,
    initializer = self.initializer, initargs = self.initargs,
    nohandles = rt ~= nil }
  self.transports, self.checker = { lt, rt }, rt or lt
  -- The finalizer holds the transports, not the pool, so the pool can die.
  local ts = self.transports
  local proxy = newproxy(true)
  getmetatable(proxy).__gc = function() shutdown(ts) end
  self.gc = proxy
  for i = 1, self.n do
    local w = { index = i, t = i <= nlocal and lt or rt }
    self.workers[i] = w
    spawn(w)
  end
  live[self] = core.getpid()
  return self
end

--- pcrun.cluster's pool on rank 0: n local workers plus the remote ones
-- of ranks ({ rank, host, workers, pids }) through transport module tm.
function M._new_cluster(n, opts, tm, ranks)
  return M.new(n, opts, { mod = tm, ranks = ranks })
end

-- A submit is handed out at once while a worker is idle (the single round
-- trip); behind busy workers, submits gather and go FEEDEVERY at a time
-- (or when the caller waits), in one message per worker, not one each.
local FEEDEVERY = 64

-- bar: the call's progress option (true or a label), nil for the pool's.
local function addjob(self, job, bar, who)
  if bar == nil then bar = job.kind ~= "submit" and self.progress end
  if bar then
    job.bar = progress.new(bar == true and who:match("[%w_]+$") or bar,
                           job.total)
  end
  jobpush(self, job)
  if job.kind ~= "submit" then return feed(self) end
end

-- After a submit: feed now while a worker is idle, else every FEEDEVERY.
local function kick(self)
  self.unfed = self.unfed + 1
  if self.unfed < FEEDEVERY then
    for _, w in ipairs(self.workers) do
      if w.pid and qlen(w.inflight) == 0 then return feed(self) end
    end
    return
  end
  feed(self)
end

local function runall(self, job)
  while job.completed < job.total do
    if job.cancelled then error(job.cancelled, 0) end
    if not M.pump({ self }) and job.completed < job.total then
      error("pcrun.pool: internal error: work lost", 0)
    end
  end
end

local function firsterr(job)
  local lo
  for i in pairs(job.errs) do if not lo or i < lo then lo = i end end
  return lo and job.errs[lo]
end

-- map over an iterator reads it whole first, as Python's map does with
-- an iterable that has no length (imap streams it instead).
local function collect(iter)
  local t, n = {}, 0
  for v in iter do n = n + 1 t[n] = v end
  return t
end

local settleasync

local function listjob(self, who, fn, list, cs, mode, async)
  checkusable(self, who, 4)
  checkfn(who, fn, 4)
  checksend(self, who, fn, 4)
  if type(list) == "function" then list = collect(list) end
  if type(list) ~= "table" then
    error(who .. ": list must be a table or an iterator function, got "
          .. type(list), 3)
  end
  if mode == STAR then
    for i = 1, #list do
      if type(list[i]) ~= "table" then
        error(("%s: item %d is not a table of arguments"):format(who, i), 3)
      end
    end
  end
  local bar
  cs, bar = checkchunk(who, cs, 4)
  local job = newjob(self, "map", fn, mode, cs or self.chunksize)
  job.list, job.total = list, #list
  job.results = tnew(job.total, 0)  -- filled out of order: no hash part
  if async then
    job.future = future.new(self)
    job.onend = settleasync
    if job.total == 0 then settleasync(job) else addjob(self, job, false) end
    return job
  end
  if job.total == 0 then return {} end
  addjob(self, job, bar, who)
  local ok, e = true, nil
  if job.bar then ok, e = pcall(runall, self, job) else runall(self, job) end
  local err = ok and firsterr(job)
  progress.finish(job.bar, ok and not err)
  if not ok then error(e, 0) end
  if err then error(err, 0) end
  return job.results
end

--- Apply fn to every item of list (or of an iterator, read whole first);
-- results in input order.
function Pool:map(fn, list, chunksize)
  local r = listjob(self, "pcrun.Pool:map", fn, list, chunksize, MAP)
  return r  -- not a tail call: errors point at the caller
end

--- Like map, with each item a list of arguments: fn(unpack(item)).
function Pool:starmap(fn, list, chunksize)
  local r = listjob(self, "pcrun.Pool:starmap", fn, list, chunksize, STAR)
  return r
end

-- -- map_async, starmap_async -------------------------------------------

--- The handle map_async and starmap_async return (Python's AsyncResult).
local AsyncResult = { __name = "pcrun.AsyncResult" }
AsyncResult.__index = AsyncResult
M.AsyncResult = AsyncResult

function settleasync(job)
  local err = firsterr(job)
  if err ~= nil then future.settle(job.future, false, err)
  else future.settle(job.future, true, { n = 1, job.results }) end
end

local ASYNCOPTS = options.spec { chunksize = "positive integer",
  callback = "function", error_callback = "function" }

local function asyncjob(self, who, fn, list, opts, mode)
  opts = options.check(who, opts, ASYNCOPTS, 4)
  local job = listjob(self, who, fn, list, opts.chunksize, mode, true)
  local cb, ecb = opts.callback, opts.error_callback
  if cb or ecb then  -- run by the future: an error is logged, not raised
    job.future:add_done_callback(function(f)
      if f.err ~= nil then
        if ecb then ecb(f.err) end
      elseif cb then
        cb(f.values[1])
      end
    end)
  end
  return setmetatable({ f = job.future }, AsyncResult)
end

--- Start map without waiting: returns an AsyncResult. opts: chunksize,
-- callback (called with the results), error_callback (with the error).
function Pool:map_async(fn, list, opts)
  local r = asyncjob(self, "pcrun.Pool:map_async", fn, list, opts, MAP)
  return r
end

function Pool:starmap_async(fn, list, opts)
  local r = asyncjob(self, "pcrun.Pool:starmap_async", fn, list, opts, STAR)
  return r
end

local function checkasync(self, who)
  if getmetatable(self) ~= AsyncResult then
    error("pcrun.AsyncResult:" .. who .. ": call it as r:" .. who .. "()", 3)
  end
end

local function checkwait(who, t)
  if t ~= nil and (type(t) ~= "number" or t ~= t or t < 0) then
    error("pcrun.AsyncResult:" .. who .. ": timeout must be a non-negative "
          .. "number", 3)
  end
end

--- The results list, waiting at most timeout seconds; raises the error of
-- the lowest-numbered failed task, or "pcrun.AsyncResult:get: timeout".
function AsyncResult:get(timeout)
  checkasync(self, "get")
  checkwait("get", timeout)
  if not future.await(self.f, timeout) then
    error("pcrun.AsyncResult:get: timeout", 2)
  end
  local f = self.f
  if f.err ~= nil then error(f.err, 0) end
  return f.values[1]
end

--- Wait until the results are ready; false if timeout seconds pass first.
function AsyncResult:wait(timeout)
  checkasync(self, "wait")
  checkwait("wait", timeout)
  return future.await(self.f, timeout)
end

--- Whether every task has finished (does not wait).
function AsyncResult:ready()
  checkasync(self, "ready")
  return self.f:done()
end

--- Whether every task succeeded; raises while not ready, as Python does.
function AsyncResult:successful()
  checkasync(self, "successful")
  if not self.f:done() then
    error("pcrun.AsyncResult:successful: the result is not ready", 2)
  end
  return self.f.err == nil
end

function AsyncResult:__tostring()
  return ("pcrun.AsyncResult(%s)"):format(self.f:done() and "ready"
                                          or "pending")
end

--- Run fn(...) in a worker and return its results (a future otherwise).
function Pool:submit(fn, ...)
  checkusable(self, "pcrun.Pool:submit")
  checkfn("pcrun.Pool:submit", fn)
  checksend(self, "pcrun.Pool:submit", fn, 3)
  local f = future.new(self)
  -- Submits of one function in a row join one job, cut into chunks as
  -- map's are: one message carries many of them, each its own future.
  local job, idx = self.jtail, 1
  if job and job.kind == "submit" and job.fn == fn and not job.exhausted
     and job.total < 65536 then
    idx = job.total + 1
    job.total, job.list[idx], job.futures[idx] = idx, pack(...), f
  else
    job = newjob(self, "submit", fn, CALL)
    job.list, job.total, job.futures = { pack(...) }, 1, { f }
    addjob(self, job, false, "submit")
  end
  f.job, f.idx = job, idx
  kick(self)
  return f
end

function Pool:apply(fn, ...)
  checkusable(self, "pcrun.Pool:apply")
  checkfn("pcrun.Pool:apply", fn)
  checksend(self, "pcrun.Pool:apply", fn, 3)
  return self:submit(fn, ...):result()
end

-- Remove a submitted job that no worker has yet; used by Future:cancel.
function Pool:_unqueue(f)
  local job, idx = f.job, f.idx
  if job and job.queued and idx >= job.pos then
    job.list[idx] = false  -- the worker skips it; its result is ignored
    return true
  end
  return false
end

local function streamjob(self, who, fn, src, cs, kind)
  checkusable(self, who, 4)
  checkfn(who, fn, 4)
  checksend(self, who, fn, 4)
  local bar
  cs, bar = checkchunk(who, cs, 4)
  cs = cs or self.chunksize
  local job = newjob(self, kind, fn, MAP, cs)
  if type(src) == "table" then
    job.list, job.total = src, #src
    if job.total == 0 then job.exhausted = true end
  elseif type(src) == "function" then
    job.iter = src
  else
    error(who .. ": input must be a table or an iterator function, got "
          .. type(src), 3)
  end
  -- Bound what is cut but not yet consumed: streams stay small.
  job.window = max(64, 8 * self.n * (cs or 64))
  job.ready, job.rtail = {}, 0
  addjob(self, job, bar, who)
  return job
end

-- Wait for the next event; with nothing in flight the stream's next
-- result can never come.
local function step(self)
  if not M.pump({ self }) then
    error("pcrun.pool: internal error: a streamed result was lost", 0)
  end
end

-- step, erasing the stream's bar if it raises (Ctrl-C).
local function barstep(self, job)
  if not job.bar then return step(self) end
  local ok, e = pcall(step, self)
  if not ok then progress.finish(job.bar, false) error(e, 0) end
end

-- The stream raises err: its bar goes first.
local function raise(job, err)
  progress.finish(job.bar, false)
  error(err, 0)
end

-- The end of an imap stream: the input's error, if reading it raised, is
-- raised once, where the stream ends; else the loop ends.
local function endstream(job)
  local e = job.inerr
  job.inerr = nil
  progress.finish(job.bar, e == nil)
  if e ~= nil then error(e, 0) end
  return nil
end

--- Iterate (index, result) in input order, streaming the input.
function Pool:imap(fn, src, chunksize)
  local job = streamjob(self, "pcrun.Pool:imap", fn, src, chunksize,
                        "imap")
  local nexti = 1
  return function()
    while true do
      if job.got[nexti] then
        local i, r, e = nexti, job.results[nexti], job.errs[nexti]
        job.results[i], job.errs[i], job.got[i] = nil, nil, nil
        nexti, job.consumed = i + 1, job.consumed + 1
        if e then raise(job, e) end
        return i, r
      end
      if job.exhausted and nexti > job.produced then return endstream(job) end
      if job.cancelled then raise(job, job.cancelled) end
      barstep(self, job)
    end
  end
end

--- Iterate (index, result) as they finish.
function Pool:imap_unordered(fn, src, chunksize)
  local job = streamjob(self, "pcrun.Pool:imap_unordered", fn, src,
                        chunksize, "unordered")
  local head = 1
  return function()
    while true do
      local r = job.ready[head]
      if r then
        job.ready[head] = nil
        head, job.consumed = head + 1, job.consumed + 1
        if r[3] then raise(job, r[3]) end
        return r[1], r[2]
      end
      if job.exhausted and job.consumed >= job.produced then
        return endstream(job)
      end
      if job.cancelled then raise(job, job.cancelled) end
      barstep(self, job)
    end
  end
end

--- No more tasks; workers exit once the queued ones are done (join).
-- opts.cancel_futures: cancel the futures no worker has yet (Python's
-- shutdown(cancel_futures=True)); returns how many were cancelled.
local CLOSEOPTS = options.spec { cancel_futures = "boolean" }

function Pool:close(opts)
  if getmetatable(self) ~= Pool then
    error("pcrun.Pool:close: call it as pool:close()", 2)
  end
  opts = options.check("pcrun.Pool:close", opts, CLOSEOPTS, 2)
  if self.state == "run" then self.state = "closed" end
  local n = 0
  if opts.cancel_futures and self.state == "closed" then
    local job = self.jhead
    while job do
      local nxt = job.next
      if job.kind == "submit" then  -- submits in a row share one job
        for _, f in pairs(job.futures) do
          if f:cancel() then n = n + 1 end
        end
      end
      job = nxt
    end
  end
  return n
end

--- Wait for queued work and the workers' exit. Call close() first.
function Pool:join()
  if getmetatable(self) ~= Pool then
    error("pcrun.Pool:join: call it as pool:join()", 2)
  end
  if self.state == "run" then
    error("pcrun.Pool:join: close() or terminate() the pool first", 2)
  end
  if self.state == "closed" then
    while M.pump({ self }) do end
    for _, w in ipairs(self.workers) do w.t:stop(w) end
    self.state = "joined"
    live[self] = nil
  end
  shutdown(self.transports)
end

--- Stop the workers now; unfinished futures fail.
function Pool:terminate()
  if getmetatable(self) ~= Pool then
    error("pcrun.Pool:terminate: call it as pool:terminate()", 2)
  end
  if self.state == "terminated" then return end
  self.state = "terminated"
  live[self] = nil
  shutdown(self.transports)
  local function fail(job)
    for _, f in pairs(job.futures or {}) do
      future.settle(f, false, "pcrun.pool: the pool was terminated")
    end
    if job.future then  -- map_async's one future
      future.settle(job.future, false, "pcrun.pool: the pool was terminated")
    end
  end
  local job = self.jhead
  while job do fail(job) job = job.next end
  for i = self.retry.head, self.retry.tail do fail(self.retry[i].job) end
  for _, w in ipairs(self.workers) do
    for i = w.inflight.head, w.inflight.tail do fail(w.inflight[i].job) end
    w.inflight = qnew()
  end
  self.jhead, self.jtail, self.retry = nil, nil, qnew()
end

--- pcrun.with_pool([n] [, opts], fn): fn(pool) with a new pool; when fn
-- returns, the pool is closed and joined (its queued work finishes) and
-- fn's results returned; when fn raises, the pool is terminated and the
-- error raised again. Python's `with Pool() as p:`, which terminates.
function M.with_pool(...)
  local nargs = select("#", ...)
  local fn = select(nargs, ...)
  if nargs < 1 or nargs > 3 or type(fn) ~= "function" then
    error("pcrun.with_pool: expected ([n] [, opts], fn) with fn a function"
          .. ", got " .. (nargs < 1 and "nothing" or type(fn)), 2)
  end
  local n, opts = ...
  if nargs == 1 then n = nil end
  if nargs <= 2 then opts = nil end
  local ok, pool = pcall(M.new, n, opts)
  if not ok then
    error((tostring(pool):gsub("^pcrun%.pool:", "pcrun.with_pool:")), 2)
  end
  local res = pack(pcall(fn, pool))
  if res[1] then
    local jok, jerr = pcall(function() pool:close() pool:join() end)
    if jok then return unpack(res, 2, res.n) end
    res[2] = jerr
  end
  pool:terminate()
  error(res[2], 0)
end

--- The ranks this pool runs on: { {rank, host, workers, pids, pid}, ... }
-- (a local pool, or a cluster without MPI: one entry, rank 0).
function Pool:ranks()
  if getmetatable(self) ~= Pool then
    error("pcrun.Pool:ranks: call it as pool:ranks()", 2)
  end
  local out, at = {}, 1
  local list = self._ranks or { { rank = 0, host = require("pcrun.cluster")
                                  .host(), workers = self.n } }
  for i, r in ipairs(list) do
    local pids = {}
    for k = 1, r.workers do pids[k] = self.workers[at + k - 1].pid end
    at = at + r.workers
    out[i] = { rank = r.rank, host = r.host, workers = r.workers,
               pids = pids, pid = r.pid or (r.rank == 0 and core.getpid()) }
  end
  return out
end

--- Worker pids, for monitoring and tests.
function Pool:pids()
  local t = {}
  for i, w in ipairs(self.workers) do t[i] = w.pid end
  return t
end

-- A pool's workers are its own children, talking over its own pipes.
function Pool.__serialize()
  error("a pcrun.Pool cannot be sent to another process (a task may "
        .. "create its own pool)", 0)
end
function Pool.__deserialize() error("a pcrun.Pool cannot be received", 0) end

function Pool:__tostring()
  return ("pcrun.Pool(%d workers, %s)"):format(self.n, self.state)
end

return M
