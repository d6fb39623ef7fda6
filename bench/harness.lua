-- Helpers shared by the bench case groups: a clock, H.measure (pcrun's
-- repetitions interleaved with the Python side's, run as a subprocess),
-- medians, a deep comparison and number formats.
local core = require "pcrun.core"

local H = {}

H.now = core.now  -- monotonic, seconds

H.dir = "."       -- bench/ itself; run.lua sets it from arg[0]

H.errors = {}     -- full tracebacks of failed measurements, printed last

function H.median(t)
  local s = {}
  for i = 1, #t do s[i] = t[i] end
  table.sort(s)
  local n = #s
  if n % 2 == 1 then return s[(n + 1) / 2] end
  return (s[n / 2] + s[n / 2 + 1]) / 2
end

-- First line of an error, without the "file:line: " prefix noise.
local function short(err)
  return (tostring(err):match("^[^\n]*"):gsub("^[^:]*:%d+: ", ""))
end
H.short = short

local function shquote(s)
  return "'" .. tostring(s):gsub("'", "'\\''") .. "'"
end

local function succeeded(a, b, c)  -- os.execute, Lua 5.1 or 5.2 style
  return a == 0 or (a == true and (c == nil or c == 0))
end

local python_ok
function H.have_python()
  if python_ok == nil then
    python_ok = succeeded(os.execute("command -v python3 >/dev/null 2>&1"))
  end
  return python_ok
end

-- A table whose missing keys read as the reason they are missing, so that
-- a row can take py.key whether Python ran or not.
local function results(t, reason)
  return setmetatable(t, { __index = function(_, k)
    return reason or ("python gave no '" .. k .. "'")
  end })
end

-- python3 bench/py/<script> --key value ... (every param but rounds).
-- Returns key -> list of samples (its output lines are "key v1 v2 ..."),
-- or nil and why.
local function python(script, params)
  if not H.have_python() then return nil, "python3 missing" end
  -- -B: no __pycache__ left in the source tree
  local cmd = { "python3", "-B", shquote(H.dir .. "/py/" .. script) }
  local keys = {}
  for k in pairs(params) do
    if k ~= "rounds" then keys[#keys + 1] = k end
  end
  table.sort(keys)
  for _, k in ipairs(keys) do
    cmd[#cmd + 1] = "--" .. k:gsub("_", "-") .. " " .. shquote(params[k])
  end
  -- LuaJIT's pclose does not return the exit status: the shell prints it.
  local f = assert(io.popen(table.concat(cmd, " ") .. "; echo status $?"))
  local t, status = {}, nil
  for line in f:lines() do
    local k, rest = line:match("^(%S+)%s+(.-)%s*$")
    if k == "status" then status = tonumber(rest)
    elseif k == "python" then H.python_version = rest
    elseif k then
      t[k] = {}
      for v in rest:gmatch("%S+") do t[k][#t[k] + 1] = tonumber(v) end
    end
  end
  f:close()
  if status ~= 0 then return nil, "python " .. script .. " failed" end
  return t
end

-- Keep a failed function's first error, with its traceback for the end.
local function failed(out, name, err)
  out[name] = short(err)
  H.errors[#H.errors + 1] = name .. ": " .. tostring(err)
end

--- Measure a case group. spec.lua: name -> function returning one figure
-- (a rate, a time); spec.py: the Python script; spec.params: rounds,
-- reps and the data shapes both sides use. Each of spec.params.rounds
-- rounds runs the Python script once (it takes reps samples of each of
-- its figures), then every Lua function reps times, interleaved; so a
-- burst of load on this shared machine hits pcrun and its counterparts
-- alike. Returns two tables, Lua's and Python's: name -> median of all
-- samples, or a string saying why there is none. A function that raised
-- is not called again.
function H.measure(spec)
  local P, names, samples, out = spec.params, {}, {}, {}
  for name in pairs(spec.lua) do names[#names + 1] = name end
  table.sort(names)  -- a fixed order from run to run
  for _, name in ipairs(names) do samples[name] = {} end
  local pys, pyerr = {}, spec.py == nil and "no Python counterpart" or nil
  for _ = 1, P.rounds or 1 do
    if not pyerr then
      local t, why = python(spec.py, P)
      pyerr = why
      for k, v in pairs(t or {}) do
        pys[k] = pys[k] or {}
        for _, x in ipairs(v) do table.insert(pys[k], x) end
      end
    end
    for _ = 1, P.reps do
      for _, name in ipairs(names) do
        if out[name] == nil then
          local ok, v = xpcall(spec.lua[name], debug.traceback)
          if ok then table.insert(samples[name], v)
          else failed(out, name, v) end
        end
      end
    end
  end
  for _, name in ipairs(names) do
    if out[name] == nil then out[name] = H.median(samples[name]) end
  end
  local py = {}
  if not pyerr then
    for k, v in pairs(pys) do py[k] = H.median(v) end
  end
  return out, results(py, pyerr)
end

--- Deep equality of plain data: checks a round trip before timing it, so a
-- broken serializer cannot post a fast figure.
function H.same(a, b)
  if type(a) ~= "table" or type(b) ~= "table" then return a == b end
  for k, v in pairs(a) do
    if not H.same(v, b[k]) then return false end
  end
  for k in pairs(b) do
    if a[k] == nil then return false end
  end
  return true
end

-- Number formats, by the row's fmt field.
local fmts = {
  rate = function(x)  -- 1234567 -> 1.23M
    if x >= 1e9 then return ("%.2fG"):format(x / 1e9) end
    if x >= 1e6 then return ("%.2fM"):format(x / 1e6) end
    if x >= 1e3 then return ("%.1fk"):format(x / 1e3) end
    return ("%.1f"):format(x)
  end,
  f1 = function(x) return ("%.1f"):format(x) end,
  f2 = function(x) return ("%.2f"):format(x) end,
  f3 = function(x) return ("%.3f"):format(x) end,
}

function H.format(fmt, x)
  if type(x) ~= "number" then return tostring(x) end
  return (fmts[fmt] or fmts.f2)(x)
end

return H
