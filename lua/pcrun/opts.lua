-- pcrun.opts: strict options tables, shared by every function of the API
-- that takes one. Use:
--   local opts = require "pcrun.opts"
--   local SPEC = opts.spec { timeout = "positive number", label = "string" }
--   local o = opts.check("pcrun.thing", o, SPEC, 3)  -- {} when o is nil
-- An unknown key raises "pcrun.thing: unknown option 'k' (did you mean
-- 'x'?)"; a value of the wrong kind "pcrun.thing: timeout must be a
-- positive number, got string". lvl is the level the caller of check
-- would give error() (2: its own caller).
-- A kind is one of the names in KINDS below, or several joined by " or ".
local M = {}

local function isint(v)
  return type(v) == "number" and v % 1 == 0 and v >= -2^53 and v <= 2^53
end

local KINDS = {
  ["function"] = function(v) return type(v) == "function" end,
  table = function(v) return type(v) == "table" end,
  boolean = function(v) return type(v) == "boolean" end,
  string = function(v) return type(v) == "string" end,
  number = function(v) return type(v) == "number" and v == v end,
  ["positive integer"] = function(v) return isint(v) and v >= 1 end,
  ["positive number"] = function(v)
    return type(v) == "number" and v > 0 end,
  ["non-negative number"] = function(v)
    return type(v) == "number" and v >= 0 end,
}

--- Compile {key = "kind [or kind...]"} into a spec for check.
function M.spec(t)
  local s = {}
  for k, kind in pairs(t) do
    local tests = {}
    for name in (kind .. " or "):gmatch("(.-) or ") do
      tests[#tests + 1] = assert(KINDS[name], "pcrun.opts: unknown kind")
    end
    s[k] = { kind = kind, tests = tests }
  end
  return s
end

-- Edit distance, for the suggestion; keys are short.
local function distance(a, b)
  local prev = {}
  for j = 0, #b do prev[j] = j end
  for i = 1, #a do
    local cur = { [0] = i }
    for j = 1, #b do
      local cost = a:byte(i) == b:byte(j) and 0 or 1
      cur[j] = math.min(prev[j] + 1, cur[j - 1] + 1, prev[j - 1] + cost)
    end
    prev = cur
  end
  return prev[#b]
end

local function norm(s) return s:lower():gsub("[_%-]", "") end

-- The known key closest to k, if close enough to be a likely typo.
local function suggest(k, spec)
  local best, bd = nil, math.huge
  local nk = norm(k)
  for name in pairs(spec) do
    local nn = norm(name)
    local d = distance(nk, nn)
    if nn:sub(1, #nk) == nk or nk:sub(1, #nn) == nn then d = math.min(d, 1) end
    if d < bd or (d == bd and name < best) then best, bd = name, d end
  end
  if best and bd <= math.max(1, math.floor(#nk / 3)) then return best end
end

--- Check opts (nil or a table) against spec; returns opts or {}.
-- hints: optional {key = "advice"} for keys users often guess wrong.
function M.check(who, opts, spec, lvl, hints)
  lvl = (lvl or 2) + 1
  if opts == nil then return {} end
  if type(opts) ~= "table" then
    error(("%s: opts must be a table, got %s"):format(who, type(opts)), lvl)
  end
  for k, v in pairs(opts) do
    local s = spec[k]
    if not s then
      local ks = type(k) == "string" and ("'" .. k .. "'") or tostring(k)
      local hint = hints and hints[k]
      local near = not hint and type(k) == "string" and suggest(k, spec)
      error(("%s: unknown option %s%s"):format(who, ks,
            hint and (" (" .. hint .. ")")
            or near and (" (did you mean '" .. near .. "'?)") or ""), lvl)
    end
    local ok = false
    for _, test in ipairs(s.tests) do
      if test(v) then ok = true break end
    end
    if not ok then
      error(("%s: %s must be a %s, got %s"):format(who, k, s.kind,
            type(v) == "number" and tostring(v) or type(v)), lvl)
    end
  end
  return opts
end

return M
