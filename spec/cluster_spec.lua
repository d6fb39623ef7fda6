-- pcrun.cluster over MPI (label mpi): each case runs a script under
-- `mpirun -n 3 --oversubscribe --bind-to none pcrun script.lua` and checks
-- what rank 0 prints, the exit status and that no process is left.
-- Skipped when pcrun was built without MPI or mpirun is missing.
local helpers = require "helpers"
local core = require "pcrun.core"

local has = helpers.assert_has
local MPIRUN = "/usr/bin/mpirun"
local usable = core.mpi ~= nil and io.open(MPIRUN) ~= nil
local ENV = { OMPI_ALLOW_RUN_AS_ROOT = "1",
              OMPI_ALLOW_RUN_AS_ROOT_CONFIRM = "1",
              OMPI_MCA_rmaps_base_oversubscribe = "1" }

-- The prologue every script starts with: two workers per rank, and a
-- helper that prints "OK <name>" when a check holds.
local PRE = [=[
local pcrun = require "pcrun"
local function same(a, b)
  if type(a) ~= "table" or type(b) ~= "table" then return a == b end
  for k, v in pairs(a) do if not same(v, b[k]) then return false end end
  for k in pairs(b) do if a[k] == nil then return false end end
  return true
end
local function ok(name, cond, detail)
  print((cond and "OK " or "FAIL ") .. name .. (cond and "" or
        (": " .. tostring(detail))))
end
]=]

local function spawn(src, opts)
  opts = opts or {}
  local path = helpers.script(PRE .. src)
  local env = {}
  for k, v in pairs(ENV) do env[k] = v end
  for k, v in pairs(opts.env or {}) do env[k] = v end
  local args = { "-n", tostring(opts.n or 3), "--oversubscribe",
                 "--bind-to", "none" }
  for _, a in ipairs(opts.mpiargs or {}) do args[#args + 1] = a end
  args[#args + 1] = helpers.bin
  args[#args + 1] = path
  local bin = helpers.bin
  helpers.bin = MPIRUN
  local h = helpers.spawn_cli(args, { env = env })
  helpers.bin = bin
  h.script = path
  return h
end

local function run(src, opts)
  local h = spawn(src, opts)
  local r = helpers.wait_cli(h, (opts or {}).timeout or 120)
  os.remove(h.script)
  return r
end

-- Every "OK x" line for the names given, and no FAIL.
local function oks(r, ...)
  local all = r.stdout .. "\n--- stderr:\n" .. r.stderr
  assert(not r.stdout:find("FAIL"), all)
  for _, name in ipairs { ... } do
    assert(r.stdout:find("OK " .. name, 1, true), "no OK " .. name .. "\n"
           .. all)
  end
end

-- The pids a script printed as "PIDS a b c": gone once mpirun is.
local function assert_gone(out)
  local list = out:match("PIDS ([%d ]+)")
  assert(list, "no PIDS line in:\n" .. out)
  for pid in list:gmatch("%d+") do
    assert(helpers.wait_dead(tonumber(pid), 5),
           "process " .. pid .. " outlived the job")
  end
end

local PRINTPIDS = [=[
local function printpids(pool)
  local t = {}
  for _, r in ipairs(pool:ranks()) do
    if r.pid then t[#t + 1] = r.pid end
    for _, p in ipairs(r.pids) do t[#t + 1] = p end
  end
  print("PIDS " .. table.concat(t, " "))
  io.stdout:flush()
end
]=]

local describe_mpi = usable and describe or pending

-- This process is a subreaper (helpers): a process whose parent died
-- first (a killed rank's workers, a rank mpirun did not wait for) is
-- adopted here and stays a zombie until reaped; init would reap it. Reap
-- those that are dead, then nothing may be left, live or zombie.
local function no_children()
  local deadline = helpers.now() + 2
  repeat
    local live = 0
    for _, k in ipairs(helpers.children()) do
      if k.state == "Z" then helpers.reap(k.pid, 1) else live = live + 1 end
    end
    if live == 0 then break end
    helpers.sleep(0.05)
  until helpers.now() > deadline
  helpers.assert_no_children()
end

describe_mpi("pcrun.cluster", function()
  after_each(no_children)

  it("gives every pool method the results of a local pool, and ranks()",
     function()
    local r = run(PRINTPIDS .. [=[
local function sq(x) return x * x end
local function add(a, b) return a + b end
local function where() return pcrun.rank(), pcrun.size() end
local pool = pcrun.cluster { workers = 2 }
assert(pcrun.rank() == 0, "only rank 0 gets here")
local local_ = pcrun.pool(2)
local xs = {}
for i = 1, 300 do xs[i] = i end
ok("map", same(pool:map(sq, xs), local_:map(sq, xs)))
ok("map chunks", same(pool:map(sq, xs, 7), local_:map(sq, xs)))
local pairs_ = {}
for i = 1, 50 do pairs_[i] = { i, 2 * i } end
ok("starmap", same(pool:starmap(add, pairs_), local_:starmap(add, pairs_)))
local got = {}
for i, v in pool:imap(sq, xs) do got[i] = v end
ok("imap", same(got, local_:map(sq, xs)))
got = {}
for i, v in pool:imap_unordered(sq, xs) do got[i] = v end
ok("imap_unordered", same(got, local_:map(sq, xs)))
ok("apply", pool:apply(add, 2, 3) == 5)
local fs = {}
for i = 1, 40 do fs[i] = pool:submit(sq, i) end
local n = 0
for f in pcrun.as_completed(fs) do n = n + 1 end
local sum = 0
for i = 1, 40 do sum = sum + fs[i]:result() end
ok("submit/as_completed", n == 40 and sum == 22140, sum)
ok("map_async", same(pool:map_async(sq, xs):get(), local_:map(sq, xs)))
-- every rank took part; pcrun.rank() in a worker is its rank
local seen = {}
for _, rk in ipairs(pool:map(function() pcrun.sleep(0.01) return pcrun.rank() end,
                             xs, 1)) do seen[rk] = true end
ok("ranks used", seen[0] and seen[1] and seen[2], next(seen))
local rs = pool:ranks()
ok("ranks()", #rs == 3 and rs[1].rank == 0 and rs[2].rank == 1
   and rs[3].rank == 2 and rs[2].workers == 2 and #rs[3].pids == 2
   and type(rs[2].host) == "string", #rs)
local w = pool:map(where, { 1 })
ok("size in worker", select(2, pool:apply(where)) == 3)
ok("pids", #pool:pids() == 6, #pool:pids())
printpids(pool)
local_:close() local_:join()
pool:close()
pool:join()
ok("closed", true)
]=])
    assert.are.equal(0, r.status, r.stdout .. r.stderr)
    oks(r, "map", "map chunks", "starmap", "imap", "imap_unordered", "apply",
        "submit/as_completed", "map_async", "ranks used", "ranks()",
        "size in worker", "pids", "closed")
    assert_gone(r.stdout)
  end)

  it("fails only its own task when a remote worker exits, crashes, is "
     .. "killed or times out", function()
    local flag = os.tmpname()
    local r = run(([=[
local FLAG = %q
local ffi = require "ffi"
ffi.cdef "int kill(int pid, int sig); int getpid(void);"
-- The first task that runs on a remote rank and takes the flag file
-- dies the way asked; every other task returns its input.
local function task(how, x)
  pcrun.sleep(0.02)
  if pcrun.rank() > 0 and os.rename(FLAG .. how, FLAG .. how .. ".taken") then
    if how == "exit" then os.exit(3) end
    if how == "segv" then ffi.cast("int *", 0)[0] = 1 end
    if how == "kill" then ffi.C.kill(ffi.C.getpid(), 9) end
    if how == "sleep" then pcrun.sleep(60) end
  end
  return x
end
local pool = pcrun.cluster { workers = 2 }
local tpool = pcrun.cluster and pool
for _, how in ipairs { "exit", "segv", "kill" } do
  io.open(FLAG .. how, "w"):close()
  local fs = {}
  for i = 1, 30 do fs[i] = pool:submit(task, how, i) end
  local good, bad, err = 0, 0, nil
  for i = 1, 30 do
    local okk, v = pcall(fs[i].result, fs[i])
    if okk and v == i then good = good + 1 else bad, err = bad + 1, v end
  end
  print(how, good, bad, err)
  local pat = ({ exit = "exited with status 3",
                 segv = "killed by signal 11 %%(SIGSEGV%%)",
                 kill = "killed by signal 9 %%(SIGKILL%%)" })[how]
  ok(how, good == 29 and bad == 1 and tostring(err):find(
     "^rank %%d %%(.-%%) worker %%d %%(pid %%d+%%) died running task %%d+: "
     .. pat), err)
  os.remove(FLAG .. how .. ".taken")
end
pool:close() pool:join()
]=]):format(flag))
    os.remove(flag)
    assert.are.equal(0, r.status, r.stdout .. r.stderr)
    oks(r, "exit", "segv", "kill")
  end)

  it("times out a remote task without failing the others", function()
    local flag = os.tmpname()
    local r = run(([=[
local FLAG = %q
local function task(x)
  pcrun.sleep(0.02)
  if pcrun.rank() > 0 and os.rename(FLAG, FLAG .. ".taken") then
    pcrun.sleep(60)
  end
  return x
end
local pool = pcrun.cluster { workers = 2, timeout = 3 }
local fs = {}
for i = 1, 20 do fs[i] = pool:submit(task, i) end
local good, bad, err = 0, 0
for i = 1, 20 do
  local okk, v = pcall(fs[i].result, fs[i])
  if okk and v == i then good = good + 1 else bad, err = bad + 1, v end
end
ok("timeout", good == 19 and bad == 1 and
   tostring(err):find("^rank %%d %%(.-%%) worker %%d %%(pid %%d+%%) died "
                      .. "running task %%d+: timed out after 3s"), err)
ok("after", pool:apply(function(a) return a + 1 end, 1) == 2)
pool:close() pool:join()
os.remove(FLAG .. ".taken")
]=]):format(flag))
    os.remove(flag)
    assert.are.equal(0, r.status, r.stdout .. r.stderr)
    oks(r, "timeout", "after")
  end)

  it("prefixes a remote task's error with its rank and host", function()
    local r = run([=[
local pool = pcrun.cluster { workers = 2 }
local errs = {}
local fs = {}
for i = 1, 30 do
  fs[i] = pool:submit(function(x) pcrun.sleep(0.01)
    if pcrun.rank() > 0 then error("boom " .. x) end return x end, i)
end
local remote = 0
for i = 1, 30 do
  local okk, e = pcall(fs[i].result, fs[i])
  if not okk then
    remote = remote + 1
    errs[#errs + 1] = e
  end
end
ok("prefix", remote > 0 and tostring(errs[1]):find(
   "^rank [12] %(.-%) worker [12]: task %d+: .*boom"), errs[1])
pool:close() pool:join()
]=])
    assert.are.equal(0, r.status, r.stdout .. r.stderr)
    oks(r, "prefix")
  end)

  it("refuses arena handles with the path", function()
    local r = run([=[
local pool = pcrun.cluster { workers = 2 }
local q = pcrun.queue()
local e = select(2, pcall(pool.apply, pool, function(x) return 1 end, q))
ok("args", tostring(e):find("args%[1%]: cannot send a pcrun%.Queue to "
                            .. "another node"), e)
local e2 = select(2, pcall(pool.map, pool, function(x) return q end, { 1 }))
ok("fn", tostring(e2):find("cannot send a pcrun%.Queue to another node"), e2)
print(pcall(pool.map, pool, function() pcrun.sleep(0.01)
  return pcrun.rank() > 0 and pcrun.lock() or true end, { 1, 2, 3, 4, 5, 6,
  7, 8, 9, 10, 11, 12 }, 1))
pool:close() pool:join()
]=])
    assert.are.equal(0, r.status, r.stdout .. r.stderr)
    oks(r, "args", "fn")
    has(r.stdout, "result: cannot send a pcrun.Lock to another node")
  end)

  it("refuses a rank that runs another pcrun version, naming it",
     function()
    local r = run([=[
local pool = pcrun.cluster { workers = 1 }
print("NOT REFUSED")
]=], { env = { PCRUN_TEST_FAKE_VERSION = "2:9.9.9" } })
    assert.are_not.equal(0, r.status)
    assert.is_nil(r.stdout:find("NOT REFUSED"), r.stdout)
    has(r.stderr, "pcrun.cluster: rank 2 (", ") runs pcrun version 9.9.9, "
        .. "rank 0 runs " .. core.version)
  end)

  it("moves 1 MiB results both ways and a 64 MiB argument", function()
    local r = run([=[
local pool = pcrun.cluster { workers = 1 }
local big = string.rep("abcdefgh", 2^17)  -- 1 MiB
local xs = {}
for i = 1, 12 do xs[i] = big .. i end
local res = pool:map(function(s) pcrun.sleep(0.01)
  return { r = pcrun.rank(), s = s:upper() } end, xs, 1)
local okk, ranks = true, {}
for i = 1, 12 do
  okk = okk and res[i].s == xs[i]:upper()
  ranks[res[i].r] = true
end
ok("1MiB", okk and ranks[1] and ranks[2])
local huge = string.rep("x", 64 * 2^20)
local fs = {}
for i = 1, 3 do fs[i] = pool:submit(function(s) pcrun.sleep(0.05)
  return #s, pcrun.rank() end, huge) end
local got = {}
for i = 1, 3 do local n, rk = fs[i]:result() got[rk] = n end
ok("64MiB", got[1] == 64 * 2^20 or got[2] == 64 * 2^20)
pool:close() pool:join()
]=], { timeout = 240 })
    assert.are.equal(0, r.status, r.stdout .. r.stderr)
    oks(r, "1MiB", "64MiB")
  end)

  it("stops the agents and their workers when rank 0 ends without close",
     function()
    local r = run(PRINTPIDS .. [=[
local pool = pcrun.cluster { workers = 2 }
ok("map", pool:map(function(x) return x + 1 end, { 1, 2, 3 })[3] == 4)
printpids(pool)
]=])
    assert.are.equal(0, r.status, r.stdout .. r.stderr)
    oks(r, "map")
    assert_gone(r.stdout)
  end)

  it("stops the agents when rank 0's script raises, and exits 1",
     function()
    local r = run(PRINTPIDS .. [=[
local pool = pcrun.cluster { workers = 1 }
printpids(pool)
pool:map(function(x) return x end, { 1, 2, 3 })
error("script failed on purpose")
]=])
    assert.are.equal(1, r.status, r.stdout .. r.stderr)
    has(r.stderr, "script failed on purpose")
    assert_gone(r.stdout)
  end)

  it("ends with a non-zero exit within seconds when a rank is killed",
     function()
    local h = spawn(PRINTPIDS .. [=[
local pool = pcrun.cluster { workers = 1 }
printpids(pool)
pool:map(function(x) pcrun.sleep(0.05) return x end, (function()
  local t = {} for i = 1, 4000 do t[i] = i end return t end)(), 1)
print("FINISHED")
]=])
    local list = helpers.wait_output(h, "PIDS ([%d ]+)\n", 60)
    assert(list, helpers.output(h))
    local agent = tonumber(list:match("^%d+ %d+ (%d+)"))  -- rank 1's pid
    helpers.sleep(0.5)
    local t0 = helpers.now()
    helpers.kill(agent, helpers.SIGKILL)
    local r = helpers.wait_cli(h, 30)
    os.remove(h.script)
    assert.are_not.equal("timeout", r.status)
    assert.are_not.equal(0, r.status)
    assert.is_true(helpers.now() - t0 < 20)
    assert.is_nil(r.stdout:find("FINISHED"))
    assert_gone(r.stdout)
  end)

  it("raises when a worker calls MPI, and agents idle under 2 % of a core",
     function()
    local r = run([=[
local core = require "pcrun.core"
local pool = pcrun.cluster { workers = 1 }
local okk, e = pool:apply(function()
  return pcall(core.mpi.send, 0, 1, 1, "x") end)
ok("worker mpi", okk == false and tostring(e):find(
   "pcrun.mpi.send: MPI belongs to process %d+ %(rank 0%); a forked "
   .. "process %(%d+%) cannot call it"), e)
local function cpu(pid)
  local f = io.open("/proc/" .. pid .. "/stat")
  local s = f:read("*a") f:close()
  local fields = {}
  for x in s:match("%) (.*)"):gmatch("%S+") do fields[#fields + 1] = x end
  return (tonumber(fields[12]) + tonumber(fields[13])) / 100  -- utime+stime
end
local agents = {}
for _, r in ipairs(pool:ranks()) do
  if r.rank > 0 then agents[#agents + 1] = r.pid end
end
pcrun.sleep(2.5)  -- idle from here on (the agents' longest nap)
local c0, t0 = {}, pcrun.now()
for i, p in ipairs(agents) do c0[i] = cpu(p) end
pcrun.sleep(4)
local worst = 0
for i, p in ipairs(agents) do
  worst = math.max(worst, (cpu(p) - c0[i]) / (pcrun.now() - t0))
end
ok("idle", worst < 0.02, worst)
pool:close() pool:join()
]=])
    assert.are.equal(0, r.status, r.stdout .. r.stderr)
    oks(r, "worker mpi", "idle")
  end)

  it("keeps maxtasksperchild and reports an initializer that fails",
     function()
    local r = run([=[
local pool = pcrun.cluster { workers = 1, maxtasksperchild = 2 }
local xs = {}
for i = 1, 40 do xs[i] = i end
local res = pool:map(function(x) pcrun.sleep(0.005)
  return { pcrun.rank(), pcrun.getpid() } end, xs, 1)
local per = {}
for _, v in ipairs(res) do
  per[v[2]] = (per[v[2]] or 0) + 1
end
local most = 0
for _, n in pairs(per) do most = math.max(most, n) end
ok("maxtasks", most <= 2, most)
pool:close() pool:join()
]=])
    assert.are.equal(0, r.status, r.stdout .. r.stderr)
    oks(r, "maxtasks")
    local r2 = run([=[
local pool = pcrun.cluster { workers = 1, initializer = function()
  if pcrun.rank() == 2 then error("no init here") end end }
local e = select(2, pcall(pool.map, pool, function(x) pcrun.sleep(0.01)
  return x end, { 1, 2, 3, 4, 5, 6, 7, 8 }, 1))
ok("init", tostring(e):find("initializer failed in rank 2 %(.-%) worker 1"
   .. ": .*no init here"), e)
pool:terminate()
]=])
    assert.are.equal(0, r2.status, r2.stdout .. r2.stderr)
    oks(r2, "init")
  end)
end)

describe_mpi("examples/cluster.lua", function()
  after_each(no_children)

  it("renders the rows on every rank, with the serial checksum", function()
    local bin = helpers.bin
    helpers.bin = MPIRUN
    local env = {}
    for k, v in pairs(ENV) do env[k] = v end
    local r = helpers.wait_cli(helpers.spawn_cli({ "-n", "3",
      "--oversubscribe", "--bind-to", "none", bin,
      helpers.src .. "/examples/cluster.lua", "200", "50", "1" },
      { env = env }), 120)
    helpers.bin = bin
    assert.are.equal(0, r.status, r.stdout .. r.stderr)
    has(r.stdout, "200x200, 50 iterations on 3 ranks, 3 workers",
        "(checksum 807857)", "rank 2 on ")
  end)
end)

describe("pcrun.cluster without MPI", function()
  after_each(helpers.assert_no_children)

  it("is a local pool", function()
    local r = helpers.run_cli({ "-e", [=[
local pcrun = require "pcrun"
local p = pcrun.cluster { workers = 2 }
assert(pcrun.rank() == 0 and pcrun.size() == 1)
assert(p:map(function(x) return x * 2 end, { 1, 2, 3 })[3] == 6)
local rs = p:ranks()
assert(#rs == 1 and rs[1].rank == 0 and rs[1].workers == 2 and #rs[1].pids == 2)
p:close() p:join()
print("LOCAL OK")
]=] }, nil, { env = { PCRUN_MPI = "0" } })
    assert.are.equal(0, r.status, r.stderr)
    has(r.stdout, "LOCAL OK")
  end)

  it("checks its options", function()
    local pcrun = require "pcrun"
    helpers.assert_error_has({ "pcrun.cluster: workers must be a positive "
                               .. "integer" }, pcrun.cluster, { workers = 0 })
    helpers.assert_error_has({ "pcrun.cluster: unknown option 'worker'" },
                             pcrun.cluster, { worker = 2 })
  end)
end)
