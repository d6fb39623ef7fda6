-- Write a few valid encodings into the directory given, as fuzz seeds.
local pcrun = require "pcrun"
local dir = assert(arg[1], "usage: fuzz_seeds.lua DIR")
local shared = { 1, 2 }
local cyc = {}
cyc.self = cyc
local seeds = {
  0, -0.0, 1 / 0, 0 / 0, 2 ^ 53, "", "a\0b", ("x"):rep(300), true, false,
  { 1, 2, 3 }, { a = 1, b = { c = "d" } }, { shared, shared }, cyc,
  setmetatable({}, { __index = { x = 1 } }), math, math.floor,
  function(x) return x + #shared end,
}
for i, v in ipairs(seeds) do
  local f = assert(io.open(("%s/seed%02d"):format(dir, i), "wb"))
  f:write(pcrun.encode(v))
  f:close()
end
