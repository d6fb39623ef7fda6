-- `make bench`: pcrun against its counterparts (LuaJIT's string.buffer in
-- this process, Python's pickle and multiprocessing in a subprocess), one
-- table row per measure, with the issue's targets.
--
--   pcrun bench/run.lua [group ...]     groups: see GROUPS; default all
--
-- A case group is bench/cases/<name>.lua, with its Python side in
-- bench/py/<name>.py: it returns { run = fn }, where run() measures both
-- sides (H.measure) and returns the rows (fields: see cell()).

local here = (arg and arg[0] or ""):match("^(.*)/[^/]*$") or "."
package.path = here .. "/?.lua;" .. package.path

local H = require "harness"
H.dir = here

local GROUPS = { "serializer", "pipe", "process", "pool", "queue", "sync",
                 "array", "dict", "embed", "cluster" }
local GROUP_TIMEOUT = 600  -- seconds; a hung group is killed and reported
                           -- (pool takes 2-4 min on a loaded 2-core box)

-- The cells of one row. A figure is a number, or a string saying why there
-- is none (an error, listed in full after the table; "python3 missing");
-- the ratio needs two numbers.
-- Fields: measure, unit, fmt, reps, pcrun, vs_name, vs, lower (smaller is
-- better: times), target (least acceptable ratio), limit (instead of a
-- target: the most pcrun's own figure may be, whatever the counterpart's),
-- noratio.
local function cell(r)
  local ratio, result = "", "-"
  local both = type(r.pcrun) == "number" and type(r.vs) == "number"
  if both and not r.noratio then
    local x = r.lower and r.vs / r.pcrun or r.pcrun / r.vs
    ratio = ("%.2fx"):format(x)
    if r.target then result = x >= r.target and "PASS" or "MISS" end
  elseif type(r.pcrun) ~= "number" then
    result = "ERROR"
  elseif r.target then
    result = "n/a"
  end
  if r.limit and type(r.pcrun) == "number" then
    result = r.pcrun <= r.limit and "PASS" or "MISS"
  end
  if r.least and type(r.pcrun) == "number" then
    result = r.pcrun >= r.least and "PASS" or "MISS"
  end
  local function clip(s) return #s > 28 and s:sub(1, 25) .. "..." or s end
  return {
    r.measure, r.unit, tostring(r.reps),
    type(r.pcrun) == "number" and H.format(r.fmt, r.pcrun) or "error",
    r.vs_name, clip(H.format(r.fmt, r.vs)),
    ratio, r.target and (">= %gx"):format(r.target)
           or r.limit and ("pcrun <= %g"):format(r.limit)
           or r.least and ("pcrun >= %g"):format(r.least) or "-", result,
  }
end

local HEAD = { "measure", "unit", "reps", "pcrun", "counterpart", "its figure",
               "ratio", "target", "result" }
local RIGHT = { [3] = true, [4] = true, [6] = true, [7] = true }

local function render(rows)
  local lines, width = { HEAD }, {}
  for _, r in ipairs(rows) do lines[#lines + 1] = cell(r) end
  for _, l in ipairs(lines) do
    for i, c in ipairs(l) do width[i] = math.max(width[i] or 0, #c) end
  end
  for n, l in ipairs(lines) do
    local out = {}
    for i, c in ipairs(l) do
      local pad = (" "):rep(width[i] - #c)
      out[i] = RIGHT[i] and pad .. c or c .. pad
    end
    print((table.concat(out, "  "):gsub("%s+$", "")))
    if n == 1 then
      local rule = {}
      for i = 1, #width do rule[i] = ("-"):rep(width[i]) end
      print(table.concat(rule, "  "))
    end
  end
end

local function pick_groups()
  local want = {}
  for i = 1, arg and #arg or 0 do want[#want + 1] = arg[i] end
  if #want == 0 then return GROUPS end
  return want
end

-- Each group runs in a forked child: it starts from this small heap (a
-- fork's cost grows with the parent's memory, and LuaJIT keeps much of
-- what a group allocated), and a crash in one group cannot take the others
-- down. The rows come back through string.buffer, not pcrun's serializer,
-- which is under test. Returns the rows, or nil and why.
local function run_group(pcrun, name)
  local buffer = require "string.buffer"
  local a, b = pcrun.pipe()
  local child = pcrun.process(function()
    H.errors = {}  -- only this group's go back
    local ok, rows = xpcall(function()
      return require("cases." .. name).run()
    end, debug.traceback)
    b:send(buffer.encode{ rows = ok and rows or nil, crash = not ok and rows
                          or nil, errors = H.errors,
                          python = H.python_version })
  end):start()
  b:close()  -- the child holds the only writer: its death ends a:recv()
  local ok, msg = pcall(a.recv, a, GROUP_TIMEOUT)
  if not ok or msg == nil then
    child:kill()
    child:join()
    return nil, ("group %s: no result (%s, exit code %s)"):format(
      name, ok and "timeout" or H.short(msg), tostring(child.exitcode))
  end
  child:join()
  a:close()
  local r = buffer.decode(msg)
  for _, e in ipairs(r.errors) do H.errors[#H.errors + 1] = e end
  H.python_version = H.python_version or r.python
  if r.crash then return nil, "group " .. name .. ": " .. r.crash end
  return r.rows
end

local function main()
  local pcrun = require "pcrun"
  local t0 = H.now()
  local rows = {}
  for _, name in ipairs(pick_groups()) do
    io.stderr:write(("bench: %s ...\n"):format(name))
    local got, why = run_group(pcrun, name)
    if not got then H.errors[#H.errors + 1] = why end
    for _, r in ipairs(got or {}) do rows[#rows + 1] = r end
  end
  print(("pcrun bench, %s: %s, %s, Python %s, %d CPUs"):format(
    os.date("%Y-%m-%d %H:%M"), pcrun._VERSION, jit and jit.version or _VERSION,
    H.python_version or (H.have_python() and "?" or "missing"),
    pcrun.cpu_count()))
  print("figures are medians of `reps` repetitions; ratio = pcrun/counterpart,"
        .. " inverted for times: > 1 means pcrun is better")
  print()
  render(rows)
  print()
  print(("total %.0f s"):format(H.now() - t0))
  if #H.errors > 0 then
    -- First lines here, tracebacks on stderr; a MISS alone is not a failure.
    print("\nfailed:")
    for _, e in ipairs(H.errors) do print("  " .. H.short(e)) end
    io.stdout:flush()
    io.stderr:write("\n", table.concat(H.errors, "\n\n"), "\n")
    os.exit(1)
  end
end

main()
