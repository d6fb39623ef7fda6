-- pcrun.cluster: one pool over every core of every rank of an MPI job.
-- Every rank runs the script up to pcrun.cluster; there rank 0 checks
-- that all ranks run the same pcrun, then gets a pool whose slots are its
-- own workers plus one per remote worker (transport_mpi), while ranks >= 1
-- become agents: they fork their workers (the local transport) and relay
-- frames between MPI and the workers' pipes, never decoding user data,
-- and exit 0 when rank 0 closes the pool. Without MPI it is pcrun.pool.
local core = require "pcrun.core"
local ffi = require "ffi"
local options = require "pcrun.opts"

local M = {}
local mpi = core.mpi
local now = core.now

local OPTS = options.spec {
  workers = "positive integer", initializer = "function",
  initargs = "table", timeout = "positive number",
  maxtasksperchild = "positive integer", progress = "boolean",
}

local CHECKIN = tonumber(os.getenv("PCRUN_MPI_CHECKIN")) or 60

--- Whether this process runs under MPI with more than one rank.
function M.active()
  return mpi ~= nil and mpi.info().active and mpi.size() > 1
end

--- This process's rank (in a worker: the rank that forked it); 0 and 1
-- without MPI.
function M.rank() return mpi and mpi.rank() or 0 end
function M.size() return mpi and mpi.size() or 1 end

local function host()
  if mpi and mpi.info().active then return mpi.info().host end
  local f = io.open("/proc/sys/kernel/hostname")
  local h = f and f:read("*l") or "localhost"
  if f then f:close() end
  return h
end
M.host = host

-- What must match across ranks. PCRUN_TEST_FAKE_VERSION=<rank>:<text>
-- makes that rank report pcrun version <text>: the test hook of the
-- mismatch check (spec/cluster_spec.lua).
local function identity()
  local v = core.version
  local fake = os.getenv("PCRUN_TEST_FAKE_VERSION")
  if fake then
    local r, text = fake:match("^(%d+):(.*)$")
    if tonumber(r) == M.rank() then v = text end
  end
  return { version = v, format = core.format_version,
           jit = jit.version, gc64 = ffi.abi("gc64"), arch = jit.arch }
end

-- Workers are forked after MPI_Init. Over InfiniBand that is safe only
-- where the kernel copies pinned pages at fork (Linux 5.13 on) or the
-- verbs library was told to care (RDMAV_FORK_SAFE / IBV_FORK_SAFE): else
-- the reason to warn, naming the host.
local function ibcheck()
  pcall(ffi.cdef, "void *opendir(const char *); int closedir(void *);"
                  .. "struct pcr_dirent { unsigned long ino; long off; "
                  .. "unsigned short reclen; unsigned char type; "
                  .. "char name[256]; };"
                  .. "struct pcr_dirent *readdir(void *);")
  local d = ffi.C.opendir("/sys/class/infiniband")
  if d == nil then return nil end
  local any = false
  while true do
    local e = ffi.C.readdir(d)
    if e == nil then break end
    if ffi.string(e.name):sub(1, 1) ~= "." then any = true end
  end
  ffi.C.closedir(d)
  if not any then return nil end
  if os.getenv("RDMAV_FORK_SAFE") or os.getenv("IBV_FORK_SAFE") then
    return nil
  end
  local r = io.open("/proc/sys/kernel/osrelease")
  local rel = r and r:read("*l") or "0.0"
  if r then r:close() end
  local maj, min = rel:match("^(%d+)%.(%d+)")
  maj, min = tonumber(maj) or 0, tonumber(min) or 0
  if maj > 5 or (maj == 5 and min >= 13) then return nil end
  return ("pcrun.cluster: warning: %s has InfiniBand and Linux %s (before "
          .. "5.13): forking workers after MPI_Init is safe there only with "
          .. "RDMAV_FORK_SAFE=1 (see docs/cluster.md)"):format(host(), rel)
end

local FIELDS = { { "version", "pcrun version" },
                 { "format", "serializer format" },
                 { "jit", "LuaJIT version" }, { "gc64", "GC64 mode" },
                 { "arch", "architecture" } }

local function mismatch(mine, theirs, rank, h)
  for _, f in ipairs(FIELDS) do
    local a, b = mine[f[1]], theirs[f[1]]
    if a ~= b then
      return ("pcrun.cluster: rank %d (%s) runs %s %s, rank 0 runs %s; "
              .. "every rank must run the same pcrun build"):format(
              rank, h, f[2], tostring(b), tostring(a))
    end
  end
end

-- -- Agents (ranks >= 1) ---------------------------------------------------

local function agent(o, tm)
  local LT = require "pcrun.transport_local"
  local me = identity()
  tm.control(0, { op = "hello", id = me, host = host() })
  local go = tm.await(function(v) return v.op == "go" or v.op == "abort" end,
                      1e9)
  if go.op == "abort" then
    mpi.finalize()
    os.exit(0, true)
  end
  local n = o.workers or core.default_workers()
  local ia = o.initargs or {}
  local T = LT.new { n = n, size = n, id = 1, initializer = o.initializer,
                     initargs = { n = ia.n or #ia, unpack(ia, 1, ia.n or #ia) },
                     remote = true }
  local slots, pids = {}, {}
  for k = 1, n do
    slots[k] = { index = k }
    T:spawn(slots[k])
    pids[k] = slots[k].pid
  end
  tm.control(0, { op = "ready", workers = n, pids = pids, host = host(),
                  pid = core.getpid(), ib = ibcheck() })
  -- The slots that are up, rebuilt only when one goes down or up.
  local busy, owner
  local function rebuild()
    busy, owner = {}, {}
    for k, s in ipairs(slots) do
      if s.pid then busy[#busy + 1] = s owner[#busy] = k end
    end
  end
  rebuild()
  local function serve()
    local last = now()
    while true do
      -- Spin about 100 us after traffic, else sleep on the workers' pipes
      -- (a reply wakes us at once) before the next probe of MPI: 1 ms
      -- while work is about, 5 ms after 0.25 s without traffic, 20 ms
      -- after 2 s (a wake-up costs 30-100 us on a loaded VM: 1 ms naps
      -- alone would take 3 % of a core, 5 ms ones measured 2.2 % there).
      local quiet = now() - last
      local nap = quiet < 100e-6 and 0 or quiet < 0.25 and 1e-3
                  or quiet < 2 and 5e-3 or 20e-3
      local i
      if #busy > 0 then i = LT.select(busy, nap, 0)
      elseif nap > 0 then ffi.C.usleep(nap * 1e6) end
      if i then
        last = now()
        local s, k = busy[i], owner[i]
        while true do
          local ev, a, b = T:recv_raw(s)
          if ev == nil then break end
          if ev == "reply" then
            mpi.send(0, k, b, a)
          elseif ev == "dead" then
            tm.control(0, { op = "dead", w = k, info = a })
            rebuild()
            break
          end
        end
      end
      -- MPI: batches for the workers, orders from rank 0.
      while true do
        -- A frame stays in MPI's receive buffer until written to the
        -- worker (a view, not a string): no copy on the way through.
        local src, tag, kind, v = mpi.recv("view")
        if not src then break end
        last = now()
        if kind == tm.BYE then return end
        if tag > 0 then
          local s = slots[tag]
          if s and s.pid then T:send_raw(s, kind, v) end
        else
          local c = core.decode(v)
          local s = c.w and slots[c.w]
          if c.op == "close" then return end
          if c.op == "kill" and s and s.pid then
            T:kill(s)
          elseif c.op == "stop" and s then
            T:stop(s, c.sig)
            rebuild()
          elseif c.op == "spawn" and s and not s.pid then
            T:spawn(s)
            rebuild()
            tm.control(0, { op = "up", w = c.w, pid = s.pid })
          end
        end
      end
    end
  end
  local ok, err = pcall(serve)
  T:close()
  if not ok then
    io.stderr:write(("pcrun: rank %d agent failed: %s\n")
                    :format(M.rank(), tostring(err)))
  else
    pcall(tm.control, 0, { op = "closed" })
  end
  mpi.finalize()
  os.exit(ok and 0 or 1, true)
end

-- -- Rank 0 -----------------------------------------------------------------

local function gather(tm, op, what)
  local got, size = {}, mpi.size()
  for _ = 1, size - 1 do
    local v = tm.await(function(v) return v.op == op and not got[v.src] end,
                       CHECKIN)
    if not v then
      local missing = {}
      for r = 1, size - 1 do
        if not got[r] then missing[#missing + 1] = tostring(r) end
      end
      error(("pcrun.cluster: rank %s did not %s within %g s (does every "
             .. "rank call pcrun.cluster?)"):format(
             table.concat(missing, ", "), what, CHECKIN), 0)
    end
    got[v.src] = v
  end
  return got
end

local used = false

--- pcrun.cluster{ workers =, initializer =, initargs =, timeout =,
-- maxtasksperchild =, progress = }: see docs/cluster.md.
function M.cluster(opts)
  local o = options.check("pcrun.cluster", opts, OPTS, 2)
  local popts = { initializer = o.initializer, initargs = o.initargs,
                  timeout = o.timeout, maxtasksperchild = o.maxtasksperchild,
                  progress = o.progress }
  local pool = require "pcrun.pool"
  if not M.active() then
    local p = pool.new(o.workers, popts)
    p._ranks = { { rank = 0, host = host(), workers = p.n } }
    return p
  end
  if used then
    error("pcrun.cluster: one cluster per run (the other ranks have "
          .. "exited)", 2)
  end
  used = true
  local tm = require "pcrun.transport_mpi"
  if mpi.rank() ~= 0 then return agent(o, tm) end
  local mine = identity()
  local hellos = gather(tm, "hello", "check in")
  for r = 1, mpi.size() - 1 do
    local why = mismatch(mine, hellos[r].id, r, hellos[r].host)
    if why then
      for q = 1, mpi.size() - 1 do tm.control(q, { op = "abort" }) end
      error(why, 2)
    end
  end
  mpi.serving(true)
  for r = 1, mpi.size() - 1 do tm.control(r, { op = "go" }) end
  local readies = gather(tm, "ready", "start its workers")
  local ranks = {}
  local warn = ibcheck()
  if warn then io.stderr:write(warn, "\n") end
  for r = 1, mpi.size() - 1 do
    local v = readies[r]
    if v.ib then io.stderr:write(v.ib, "\n") end
    ranks[r] = { rank = r, host = v.host, workers = v.workers,
                 pids = v.pids, pid = v.pid }
  end
  local p = pool._new_cluster(o.workers, popts, tm, ranks)
  local n0 = p.n
  for _, r in ipairs(ranks) do n0 = n0 - r.workers end
  table.insert(ranks, 1, { rank = 0, host = host(), workers = n0,
                          pid = core.getpid() })
  p._ranks = ranks
  return p
end

return M
