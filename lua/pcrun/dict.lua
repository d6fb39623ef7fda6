-- Dicts: key-value tables in the shared arena that every process reads
-- and writes, with no server process. The C core (runtime/dict.c, the
-- binding runtime/ldict.c) does the work; this layer adds pairs and the
-- ffi fast paths for number and string values under string and number
-- keys (an ffi call compiles into the caller's trace, a lua_CFunction
-- ends it).
local core = require "pcrun.core"
local ffi = require "ffi"

local M = {}

local Dict = core.Dict
local methods = Dict.__methods
core.register_type("pcrun.Dict", Dict, { capability = true })

--- pcrun.dict(): an empty dict, passed to tasks and processes by
-- reference like a queue.
function M.dict(...)
  if select("#", ...) > 0 then
    error("pcrun.dict: takes no arguments (fill it with d[k] = v)", 2)
  end
  return core.dict()
end

local function check(d, m)
  if type(d) ~= "userdata" or getmetatable(d) ~= Dict then
    error(("pcrun.Dict:%s: call it as d:%s(...) on a pcrun.Dict")
          :format(m, m), 3)
  end
end

--- d:pairs(): iterate over a snapshot taken at one moment.
function methods.pairs(d)
  check(d, "pairs")
  return next, d:totable(), nil
end

local f_get = ffi.cast("int (*)(void *, int, const char *, size_t, double, "
                       .. "double *, const char **, size_t *)", Dict.__fast.get)
local f_setnum = ffi.cast("int (*)(void *, int, const char *, size_t, "
                          .. "double, double, int, double *)",
                          Dict.__fast.setnum)
local num = ffi.new("double[1]")
local str = ffi.new("const char *[1]")
local len = ffi.new("size_t[1]")
local c_get, c_set, c_add = methods.get, methods.set, methods.add

-- Value kinds as runtime/dict.h numbers them.
local K_NUMBER, K_TRUE, K_FALSE, K_STRING = 1, 2, 3, 4

local function fastget(d, k, dflt)
  local tk, r = type(k), -1
  if tk == "string" then r = f_get(d, 1, k, #k, 0, num, str, len)
  elseif tk == "number" then r = f_get(d, 2, nil, 0, k, num, str, len) end
  if r == K_NUMBER then return num[0]
  elseif r == K_STRING then return ffi.string(str[0], len[0])
  elseif r == 0 then return dflt
  elseif r == K_TRUE then return true
  elseif r == K_FALSE then return false end
  return c_get(d, k, dflt)
end

local function fastset(d, k, v)
  if type(v) == "number" then
    local tk = type(k)
    if tk == "string" then
      if f_setnum(d, 1, k, #k, 0, v, 0, num) == 0 then return end
    elseif tk == "number" then
      if f_setnum(d, 2, nil, 0, k, v, 0, num) == 0 then return end
    end
  end
  return c_set(d, k, v)
end

function methods.get(d, k, dflt)
  check(d, "get")
  return fastget(d, k, dflt)
end

function methods.set(d, k, v)
  check(d, "set")
  return fastset(d, k, v)
end

function methods.add(d, k, n)
  check(d, "add")
  if type(n) == "number" then
    local tk = type(k)
    if tk == "string" then
      if f_setnum(d, 1, k, #k, 0, n, 1, num) == 0 then return num[0] end
    elseif tk == "number" then
      if f_setnum(d, 2, nil, 0, k, n, 1, num) == 0 then return num[0] end
    end
  end
  return c_add(d, k, n)
end

-- d.k / d[k]: a method's name gives the method, any other key the value
-- (so a key named like a method is read with d:get(k)).
Dict.__index = function(d, k)
  local m = methods[k]
  if m ~= nil then return m end
  return fastget(d, k, nil)
end
Dict.__newindex = fastset

return M
