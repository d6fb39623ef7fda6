-- Shared arrays and values: typed memory in the arena, at the same address
-- in every process. An array is an ffi struct { T *ptr; double n } with a
-- bounds-checked metatype, so a loop over it compiles like one over an ffi
-- array; it crosses processes by reference (the arena offset).
local core = require "pcrun.core"
local ffi = require "ffi"

local M = {}

local anchors = setmetatable({}, { __mode = "k" })  -- handle -> ObjRef
local views = {}  -- element ctype id -> handle ctype
local Array = { __name = "pcrun.Array" }
local methods = {}

local function bad_index(a, i)
  if type(i) ~= "number" then
    error("pcrun.Array: index must be a number, got " .. type(i), 3)
  end
  error(("pcrun.Array: index %s out of range [0, %d)")
        :format(tostring(i), a._n), 3)
end

local function view_of(ct)
  local id = tonumber(ct)
  local vt = views[id]
  if vt then return vt end
  -- The field named after the id keeps each view's declaration distinct:
  -- busted caches ffi.typeof by its first argument alone. The fields are
  -- _ptr and _n, read as ptr and n through __index, so that writing n or
  -- ptr reaches __newindex and its message, not ffi's.
  vt = ffi.metatype(ffi.typeof(
    ("struct { $ *const _ptr; const double _n; int32_t _%d; }"):format(id),
    ct), {
    __index = function(a, i)
      if type(i) == "number" then
        if i >= 0 and i < a._n then return a._ptr[i] end
        bad_index(a, i)
      end
      if i == "n" then return a._n end
      if i == "ptr" then return a._ptr end
      if type(i) ~= "string" then bad_index(a, i) end
      return methods[i]
    end,
    __newindex = function(a, i, v)
      if type(i) == "number" and i >= 0 and i < a._n then
        a._ptr[i] = v
        return
      end
      if i == "n" or i == "ptr" then
        error("pcrun.Array: " .. i .. " is read-only", 2)
      end
      bad_index(a, i)
    end,
    __len = function(a) return a._n end,
    __tostring = function(a)
      return ("pcrun.Array(%s, %d): %s"):format(anchors[a] and
        select(3, anchors[a]:info()) or "?", a.n, tostring(a.ptr))
    end,
  })
  views[id] = vt
  core.cdhook(tonumber(vt), Array)
  return vt
end

-- The array's finalizer releases ref in the collection that finds a dead.
-- Left to ref's own __gc, the memory would come back one full collection
-- later: a weak-keyed table keeps its values (ref) through the cycle that
-- clears their dead keys (a), as LuaJIT's weak tables are not ephemerons.
local function wrap(ref)
  local addr, n, ctype = ref:info()
  local a = view_of(ffi.typeof(ctype))(ffi.cast("void *", addr), n)
  anchors[a] = ref
  return ffi.gc(a, function() core.release(ref) end)
end

function Array.__serialize(a) return anchors[a] end
function Array.__deserialize(ref) return wrap(ref) end

local function ctype_of(who, ctype)
  if type(ctype) ~= "string" and type(ctype) ~= "cdata" then
    error(who .. ": ctype must be a string or an ffi ctype, got "
          .. type(ctype), 3)
  end
  local ok, ct = pcall(ffi.typeof, ctype)
  if not ok then error(who .. ": unknown ctype '" .. tostring(ctype) .. "'", 3) end
  local okp, size = pcall(ffi.sizeof, ct)
  if not okp or not size or size == 0 then
    error(who .. ": ctype '" .. tostring(ctype) .. "' has no fixed size", 3)
  end
  -- Other processes rebuild the type from its name: keep the user's.
  local name = type(ctype) == "string" and ctype
               or tostring(ct):match("^ctype<(.*)>$")
  if not pcall(ffi.typeof, name) or #name >= 120 then
    error(who .. ": " .. tostring(ct) .. " has no name other processes can "
          .. "use (declare it with ffi.cdef and pass its name)", 3)
  end
  return ct, size, name
end

--- pcrun.array(ctype, n [, init]): n elements of ctype in the arena,
-- zero-filled, then set from init (a table, 0-based or 1-based sequence,
-- or a number for every element).
function M.array(ctype, n, init)
  local _, size, name = ctype_of("pcrun.array", ctype)
  if type(n) ~= "number" or n < 0 or n % 1 ~= 0 or n >= 2^48 then
    error("pcrun.array: n must be a non-negative integer", 2)
  end
  if init ~= nil and type(init) ~= "table" and type(init) ~= "number" then
    error("pcrun.array: init must be a table or a number, got "
          .. type(init), 2)
  end
  local ref = core.array_new(name, size, n, "pcrun.array")
  local a = wrap(ref)
  if type(init) == "number" then
    local p = a.ptr
    for i = 0, n - 1 do p[i] = init end
  elseif init then
    local p, base = a.ptr, init[0] ~= nil and 0 or 1
    for i = 0, math.min(n, #init + 1 - base) - 1 do p[i] = init[i + base] end
  end
  return a
end

methods.len = function(a) return a.n end
methods.totable = function(a)
  local t, p = {}, a.ptr
  for i = 0, a.n - 1 do t[i + 1] = p[i] end
  return t
end
methods.fill = function(a, v)
  local p = a.ptr
  if a.n > 0 then  -- one store first: a bad value fails with our name
    local ok, err = pcall(function() p[0] = v end)
    if not ok then
      error("pcrun.Array:fill: " .. tostring(err):gsub("^.-:%d+: ", ""), 2)
    end
  end
  for i = 1, a.n - 1 do p[i] = v end
  return a
end
methods.ctype = function(a) return (select(3, anchors[a]:info())) end

-- -- Shared values ------------------------------------------------------

local Value = { __name = "pcrun.Value" }
Value.__index = Value

local function numkind(ct, size)
  local ok, r = pcall(function()
    if tonumber(ffi.new(ct, 0.5)) == 0.5 then return "f" end
    if tonumber(ffi.new(ct, 1)) ~= 1 then return nil end
    return tonumber(ffi.new(ct, -1)) == -1 and "i" or "u"
  end)
  if ok and r and (size == 1 or size == 2 or size == 4 or size == 8) then
    return r
  end
end

--- pcrun.value(ctype, init): one shared number with atomic operations.
function M.value(ctype, init)
  local ct, size, name = ctype_of("pcrun.value", ctype)
  local kind = numkind(ct, size)
  if not kind then
    error("pcrun.value: ctype must be an integer or floating-point type, "
          .. "got '" .. tostring(ctype) .. "'", 2)
  end
  if init ~= nil and type(init) ~= "number" then
    error("pcrun.value: init must be a number, got " .. type(init), 2)
  end
  local ref = core.array_new(name, size, 1, "pcrun.value")
  local v = setmetatable({ _ref = ref, _kind = kind }, Value)
  if init then ref:value_op(kind, "s", init) end
  return v
end

local function checknum(who, x, i)
  if type(x) ~= "number" then
    error(("pcrun.Value:%s: argument %d must be a number, got %s")
          :format(who, i, type(x)), 3)
  end
end

local function checkself(who, v)
  if getmetatable(v) ~= Value then
    error(("pcrun.Value:%s: call it as v:%s(...)"):format(who, who), 3)
  end
end

function Value:load()
  checkself("load", self)
  return self._ref:value_op(self._kind, "l")
end
function Value:store(x)
  checkself("store", self)
  checknum("store", x, 1)
  self._ref:value_op(self._kind, "s", x)
end
function Value:add(d)
  checkself("add", self)
  checknum("add", d, 1)
  return self._ref:value_op(self._kind, "a", d)
end
function Value:cas(old, new)
  checkself("cas", self)
  checknum("cas", old, 1)
  checknum("cas", new, 2)
  return self._ref:value_op(self._kind, "c", old, new)
end
--- A pointer to the value for ffi code (plain, not atomic, access).
function Value:ptr()
  checkself("ptr", self)
  local addr, _, ctype = self._ref:info()
  return view_of(ffi.typeof(ctype))(ffi.cast("void *", addr), 1).ptr
end
function Value:__tostring()
  return ("pcrun.Value(%s): %s"):format(select(3, self._ref:info()),
                                        tostring(self:load()))
end
function Value.__serialize(v) return { v._ref, v._kind } end
function Value.__deserialize(t)
  return setmetatable({ _ref = t[1], _kind = t[2] }, Value)
end

M.Array, M.Value = Array, Value

return M
