-- pcrun.cluster over MPI, side by side in one run with a local pool on
-- the same cores and with Python's mpi4py.futures (Debian's
-- python3-mpi4py), on the same workloads (bench/cluster_job.lua, and
-- bench/py/cluster.py). Equal cores: the cluster is 2 ranks of W/2
-- workers (rank 0 schedules too), the local pool W workers, mpi4py W
-- worker ranks plus its master. W = this machine's CPU count.
local pcrun = require "pcrun"
local H = require "harness"

local W = math.max(2, pcrun.cpu_count())
local P = { reps = 3, n5 = 200, ms = 5, nexp = 200, tiny = 200000,
            big_n = 20, msg_mib = 64 }
local MPIRUN = "OMPI_ALLOW_RUN_AS_ROOT=1 OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=1 "
               .. "mpirun --oversubscribe --bind-to none "

local function ok(r) return r == 0 or r == true end

local function sh(s) return "'" .. s:gsub("'", "'\\''") .. "'" end

-- Run cmd; "key value" lines -> key -> list of values; nil, why.
local function lines(cmd)
  local f = assert(io.popen(cmd .. " 2>/dev/null; echo status $?"))
  local t, status = {}, nil
  for line in f:lines() do
    local k, v = line:match("^(%S+)%s+(%S+)")
    if k == "status" then status = tonumber(v)
    elseif k == "python" then  -- the system python3 mpi4py needs: not the column's
    elseif k and tonumber(v) then  -- Python prints every sample on one line
      t[k] = t[k] or {}
      for x in line:gmatch("%s(%S+)") do
        if tonumber(x) then table.insert(t[k], tonumber(x)) end
      end
    end
  end
  f:close()
  if status ~= 0 then return nil, "exit status " .. tostring(status) end
  return t
end

local function med(t, k, why)
  if not t then return why end
  return t[k] and H.median(t[k]) or ("no " .. k)
end

local M = {}

function M.run()
  local ffi = require "ffi"
  pcall(ffi.cdef, "long readlink(const char *, char *, size_t);")
  local buf = ffi.new("char[4096]")
  local n = ffi.C.readlink("/proc/self/exe", buf, 4096)
  local bin = n > 0 and ffi.string(buf, n) or "pcrun"  -- this pcrun
  local job = sh(H.dir .. "/cluster_job.lua")
  local args = table.concat({ P.reps, P.n5, P.ms, P.nexp, P.tiny, P.big_n,
                              P.msg_mib }, " ")
  local have_mpi = require("pcrun.core").mpi ~= nil
    and ok(os.execute("command -v mpirun >/dev/null 2>&1"))
  local loc, lwhy = lines(sh(bin) .. " " .. job .. " " .. W .. " " .. args)
  local clu, cwhy = "no MPI", nil
  if have_mpi then
    clu, cwhy = lines(MPIRUN .. "-n 2 " .. sh(bin) .. " " .. job .. " "
                      .. math.floor(W / 2) .. " " .. args)
  end
  local py, pwhy = nil, "python3-mpi4py missing"
  local pym
  -- Debian's python3-mpi4py is for the system's python3, which may not be
  -- the first on PATH (pyenv).
  local python
  for _, p in ipairs { "python3", "/usr/bin/python3" } do
    if not python and have_mpi
       and ok(os.execute(p .. " -c 'import mpi4py' 2>/dev/null")) then
      python = p
    end
  end
  if python then
    local pyargs = ("--workers %d --reps %d --n5 %d --ms %s --nexp %d "
                    .. "--tiny %d --big-n %d --msg-mib %d"):format(W,
                    P.reps, P.n5, P.ms,
                    P.nexp, P.tiny, P.big_n, P.msg_mib)
    local script = sh(H.dir .. "/py/cluster.py")
    py, pwhy = lines(MPIRUN .. "-n " .. (W + 1) .. " " .. python .. " -B -m "
                     .. "mpi4py.futures " .. script .. " --part pool "
                     .. pyargs)
    pym = lines(MPIRUN .. "-n 2 " .. python .. " -B " .. script .. " --part msg "
                .. pyargs)
  end
  local rows = {}
  local reps = P.reps
  local function pair(key, what, target_local, target_py)
    local c = med(clu, key, cwhy)
    rows[#rows + 1] = { measure = "cluster " .. what, unit = "s",
      fmt = "f3", reps = reps, pcrun = c, lower = true,
      vs_name = ("local pool(%d)"):format(W), vs = med(loc, key, lwhy),
      target = target_local }
    rows[#rows + 1] = { measure = "cluster " .. what, unit = "s",
      fmt = "f3", reps = reps, pcrun = c, lower = true,
      vs_name = ("mpi4py.futures (%d)"):format(W) .. (key == "tiny" and
        " cs n/4W" or ""), vs = med(py, key, pwhy),
      target = target_py }
  end
  pair("five", ("%d x %g ms"):format(P.n5, P.ms), 0.9)
  pair("expo", ("%d exponential, mean %g ms"):format(P.nexp, P.ms), 0.9)
  pair("tiny", ("%dk tiny tasks"):format(P.tiny / 1000), 1 / 3, 1)
  pair("big", ("%d x 1 MiB args and results"):format(P.big_n))
  pair("arg64", ("2 x %d MiB arguments (one per slot)"):format(P.msg_mib))
  local gb = function(t)
    if type(t) ~= "number" then return t end
    return P.msg_mib * 2^20 / t / 1e9
  end
  rows[#rows + 1] = { measure = ("one %d MiB message, rank 0 to 1"):format(
      P.msg_mib), unit = "GB/s", fmt = "f2", reps = 9,
    pcrun = gb(med(clu, "msg", cwhy)), vs_name = "mpi4py Send/Recv",
    vs = gb(med(pym, "msg", pwhy)), least = 2 }
  return rows
end

return M
