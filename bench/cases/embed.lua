-- The embedding API: an exported Lua function (a C pointer, each call run
-- in a worker process) called from 1, 2 and 4 host threads, against the
-- same Lua function called in-process by one thread through pcr_call. The
-- figures come from the C program bench/embed.c (build/bench_embed), run
-- `rounds` times; each figure is the median. No Python counterpart.
local core = require "pcrun.core"
local H = require "harness"

local P = {
  rounds = 5,      -- runs of bench_embed
  calls = 20000,   -- calls per thread per run
}

-- bench_embed lies next to the pcrun binary running this script.
local function binary()
  local env = os.getenv("PCRUN_BENCH_EMBED")
  if env then return env end
  local f = io.popen("readlink /proc/" .. core.getpid() .. "/exe")
  local exe = f and f:read("*l")
  if f then f:close() end
  return (exe and exe:match("^(.*)/[^/]*$") or ".") .. "/bench_embed"
end

local function run_once(bin)
  local f = assert(io.popen(("%q %d; echo status $?"):format(bin, P.calls)))
  local t, status = {}, nil
  for line in f:lines() do
    local k, v = line:match("^(%S+)%s+(%S+)$")
    if k == "status" then status = tonumber(v)
    elseif k then t[k] = tonumber(v) end
  end
  f:close()
  if status ~= 0 then error(bin .. " failed (status " .. tostring(status)
                            .. ")") end
  return t
end

local M = {}

function M.run()
  local bin, samples = binary(), {}
  for _ = 1, P.rounds do
    for k, v in pairs(run_once(bin)) do
      samples[k] = samples[k] or {}
      table.insert(samples[k], v)
    end
  end
  local m = {}
  for k, v in pairs(samples) do m[k] = H.median(v) end
  local rows, vs = {}, "in-process pcr_call, 1 thread"
  for _, nt in ipairs{ 1, 2, 4 } do
    rows[#rows + 1] = {
      measure = ("exported fn, %d host thread%s"):format(nt,
                                                        nt > 1 and "s" or ""),
      unit = "calls/s", fmt = "rate", reps = P.rounds,
      pcrun = m["export" .. nt .. "_rate"] or "no figure",
      vs_name = vs, vs = m.inproc_rate }
    rows[#rows + 1] = {
      measure = ("exported fn, %d host thread%s, per call"):format(nt,
                                                   nt > 1 and "s" or ""),
      unit = "us", fmt = "f2", reps = P.rounds, lower = true,
      pcrun = m["export" .. nt .. "_us"] or "no figure",
      vs_name = vs, vs = m.inproc_us }
  end
  return rows
end

return M
