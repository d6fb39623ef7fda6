-- make soak: ownership under churn and kills (issue 9). Not part of make
-- test: minutes, not seconds. Three phases, then the arena's use, the
-- process's RSS, its children and its open fds are compared with the
-- start (taken after a warm-up of each phase):
--   arena: exactly the start's bytes: every block has an owner;
--   children: none; fds (/proc/self/fd): none more than at the start;
--   RSS (RssAnon: private memory, the arena is shared and counted above):
--     within 1 % of the start or SOAK_RSS_FLOOR bytes (default 4 MiB),
--     whichever is larger. The start is 1-3 MiB, so 1 % of it is 10-30
--     KiB: less than LuaJIT's heap and libc's arenas move by themselves
--     (a collection frees pages libc keeps; a 1 MB result decoded leaves
--     its buffer's high-water mark). A leak per kill, per pool or per
--     round shows as megabytes at these counts; the floor is the
--     allocators' noise, not a budget for leaks.
--   SOAK_SCALE=0.1 build/pcrun tests/soak.lua     (a tenth of each phase)
local pcrun = require "pcrun"
local core = require "pcrun.core"
local ffi = require "ffi"

ffi.cdef [[ int kill(int pid, int sig); ]]

local scale = tonumber(os.getenv("SOAK_SCALE") or "1")
local RSS_FLOOR = tonumber(os.getenv("SOAK_RSS_FLOOR") or 4 * 2^20)
local POOLS = math.floor(10000 * scale)
local TASKS = math.floor(1000000 * scale)
local ROUNDS = math.floor(2000 * scale)

-- Private resident memory: the arena's pages, which freed blocks keep
-- for reuse, are shared memory and counted by the arena's figure.
local function rss()
  local f = io.open("/proc/self/status")
  local kb = f:read("*a"):match("RssAnon:%s*(%d+)")
  f:close()
  return tonumber(kb) * 1024
end

local function fds()
  local f = io.popen("ls /proc/" .. core.getpid() .. "/fd")
  local s = f:read("*a")
  f:close()  -- reaps ls
  local n = 0
  for _ in s:gmatch("%S+") do n = n + 1 end
  return n - 1  -- the ls pipe itself
end

local function children()
  local f = io.open(("/proc/%d/task/%d/children"):format(core.getpid(),
                                                        core.getpid()))
  local s = f and f:read("*a") or ""
  if f then f:close() end
  local t = {}
  for pid in s:gmatch("%d+") do t[#t + 1] = tonumber(pid) end
  return t
end

local function settle()
  for _ = 1, 3 do collectgarbage() end
  core.reap_all(0)
end

local function state()
  settle()
  return { arena = pcrun.arena().used, rss = rss(), fds = fds(),
           kids = #children() }
end

local function report(name, t0, s0)
  local s = state()
  print(("%-44s %6.1f s  arena %+d B  rss %+.2f %%  fds %+d  children %d")
        :format(name, core.now() - t0, s.arena - s0.arena,
                100 * (s.rss - s0.rss) / s0.rss, s.fds - s0.fds, s.kids))
  return s
end

-- 1. Pools left to the GC (no close), each mapping once.
local function pools(n)
  for i = 1, n do
    local p = pcrun.pool(2)
    p:map(function(x) return x + 1 end, { 1, 2, 3 })
    if i % 100 == 0 then collectgarbage() end
  end
end

-- 2. Tasks with a worker killed every 100 ms, half the results 1 MB.
local function tasks(TASKS)
  local p = pcrun.pool(2)
  local killer = pcrun.process(function(ppid)
    while true do
      local t = core.now() + 0.1
      while core.now() < t do core.wait(ppid, 0.02) end
      local f = io.open(("/proc/%d/task/%d/children"):format(ppid, ppid))
      local pids = {}
      for pid in (f and f:read("*a") or ""):gmatch("%d+") do
        if tonumber(pid) ~= core.getpid() then pids[#pids + 1] = pid end
      end
      if f then f:close() end
      if #pids > 0 then ffi.C.kill(tonumber(pids[math.random(#pids)]), 9) end
    end
  end, core.getpid()):start()
  local MB = ("m"):rep(2^20 - 8)
  local ok, failed, big, i = 0, 0, 0, 0
  -- Each 1 MB result its own string: one sent twice in a chunk would be
  -- written once (a back-reference).
  local it = p:imap_unordered(function(x)
    if x % 2 == 0 then return MB .. ("%8d"):format(x) end
    return x
  end, function() i = i + 1 if i <= TASKS then return i end end, 64)
  while true do
    local good, k, v = pcall(it)
    if good then
      if k == nil then break end
      ok = ok + 1
      if type(v) == "string" and #v == 2^20 then big = big + 1 end
    else
      failed = failed + 1
    end
  end
  killer:terminate()
  killer:join(5)
  p:close() p:join()
  return ok, failed, big
end

-- 3. Pipes and queues carrying handles, killed on both sides.
local function rounds(ROUNDS)
 for r = 1, ROUNDS do
  local a, b = pcrun.pipe()
  local q = pcrun.queue()
  local p = pcrun.process(function()
    for k = 1, 50 do
      local c, d = pcrun.pipe()
      b:send({ c, pcrun.queue(), k })
      q:put({ d, pcrun.lock(), ("q"):rep(k * 5000) })
    end
    b:recv()
  end):start()
  for _ = 1, r % 7 do
    local t = a:recv(5)
    local u = q:get(5)
  end
  if r % 2 == 0 then p:kill() else a:send("bye") end
  p:join(10)
  if r % 3 == 0 then  -- the parent side goes too: a child that dies
    local p2 = pcrun.process(function() q:get() a:recv() os.exit(0) end)
    p2:start() p2:kill() p2:join(10)
  end
  a:close() b:close() q = nil
  -- The garbage queue still holds the pipes of its unread items: arena
  -- pressure collects only in the process that allocates (the child).
  collectgarbage()
 end
end

-- Warm up with a little of each (LuaJIT's heap and libc's arenas grow to
-- their working size), then measure from there.
local T0 = core.now()
pools(20) tasks(2000) rounds(10)
local start = state()
local s0, t0 = start, core.now()
pools(POOLS)
s0 = report(("%d pools left to the GC"):format(POOLS), t0, s0)
t0 = core.now()
local ok, failed, big = tasks(TASKS)
print(("  %d results (%d of 1 MiB), %d tasks failed with their killed "
       .. "worker"):format(ok, big, failed))
s0 = report(("%d tasks, a worker killed every 100 ms"):format(TASKS), t0,
            s0)
t0 = core.now()
rounds(ROUNDS)
s0 = report(("%d rounds of handles over pipes and queues"):format(ROUNDS),
            t0, s0)

local s = state()
local rssok = s.rss - start.rss <= math.max(0.01 * start.rss, RSS_FLOOR)
local okall = s.arena == start.arena and s.kids == 0 and s.fds <= start.fds
              and rssok
print(("end: arena %d -> %d B, rss %.1f -> %.1f MiB (%+.2f %%, bound "
       .. "%.1f MiB), fds %d -> %d, children %d, %.0f s: %s")
      :format(start.arena, s.arena, start.rss / 2^20, s.rss / 2^20,
              100 * (s.rss - start.rss) / start.rss,
              math.max(0.01 * start.rss, RSS_FLOOR) / 2^20, start.fds, s.fds,
              s.kids, core.now() - T0, okall and "PASS" or "FAIL"))
os.exit(okall and 0 or 1)
