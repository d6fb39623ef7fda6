-- Write the fuzz corpus's seeds into the directory given: valid encodings
-- that between them use every tag of docs/format.md, nested tables,
-- sharing, registered types (the same as runtime/fuzz/fuzz_decode.c
-- registers), and the hostile shapes of issue 10 (nested counts claiming
-- the same bytes, forged capabilities), so that mutations start deep in
-- the format rather than at its header.
local pcrun = require "pcrun"
local ffi = require "ffi"
local dir = assert(arg[1], "usage: fuzz_seeds.lua DIR")

ffi.cdef "struct fz_point { double x, y; };"
local T = { __serialize = function(o) return o[1] end,
            __deserialize = function(v) return { v } end }
local C = { __serialize = function(o) return o[1] end,
            __deserialize = function(v) return { v } end }
pcrun.register_type("T", T)
pcrun.register_type("C", C, { capability = true })

local shared = { 1, 2 }
local cyc = {}
cyc.self = cyc
local up = 0
local function inc() up = up + 1 return up end
local function get() return up end
local deep, cur = {}, nil
cur = deep
for i = 1, 60 do cur[1] = { i, k = "v" .. i } cur = cur[1] end
local wide = {}
for i = 1, 200 do wide["key" .. i] = i % 3 == 0 and { i } or i * 0.5 end
local ints, nums = {}, {}
for i = 1, 50 do ints[i] = i * 1000 - 7 nums[i] = i / 7 end
local long = ("L"):rep(100)

local seeds = {
  -- scalars: nil, false, true, number, int, small int, strings
  0, 63, 64, -1, -2 ^ 31, 2 ^ 31, -0.0, 1 / 0, 0 / 0, 2 ^ 53, 0.1,
  "", "a\0b", ("s"):rep(63), long, true, false,
  -- tables: array, hash, holes, nested, keys of every kind, sharing
  { 1, 2, 3 }, { a = 1, b = { c = "d" } }, { 1, nil, 3, [0] = 0, x = false },
  { [1.5] = 1, [true] = 2, [-1] = 3, [{}] = 4, [long] = long },
  { shared, shared, { shared } }, cyc, deep, wide, { long, long, long },
  -- packed int32 and double arrays
  ints, nums, { 1, 2, 3, 0.5 },
  -- metatables: a registered type (type tag), a copied one, an ext
  setmetatable({ x = 1 }, T), T, setmetatable({}, { __index = { y = 2 } }),
  setmetatable({ { 1, "two" } }, T), { setmetatable({ "cap" }, C) },
  -- names: module, field; functions with upvalues, a shared upvalue
  math, { io, math.floor }, { inc = inc, get = get }, inc,
  function(x) return x + #shared end,
  -- cdata: int64, uint64, a struct, a VLA
  ffi.new("int64_t", -3), ffi.new("uint64_t", 3),
  ffi.new("struct fz_point", 1, 2), ffi.new("double[?]", 3, 1, 2, 3),
}

local n = 0
local function put(s)
  n = n + 1
  local f = assert(io.open(("%s/seed%03d"):format(dir, n), "wb"))
  f:write(s)
  f:close()
end
for i = 1, #seeds + 1 do  -- + 1: the nil at the end of a list
  put(pcrun.encode(seeds[i]))
end
-- Hostile shapes: a nested-count bomb (array and hash parts), a forged
-- pcrun.Process-like capability, a count past the end.
put("\183\2\0" .. ("\6\128\128\4\0"):rep(50) .. ("\0"):rep(300))
put("\183\2\0" .. ("\6\0\128\128\2\192"):rep(50) .. ("\0"):rep(300))
put("\183\2\0\7\0\0\13\1C")
put("\183\2\0\14\1C\6\0\1\131pid\196")
put("\183\2\1\2\6\2\0\5\64" .. ("x"):rep(64) .. "\9\1")
put("\183\2\0\18\255\255\255\255\15")
