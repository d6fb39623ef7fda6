-- Run by embed_natives: the host's C functions, from the parent and from a
-- pool's workers (by name, "native.<fn>").
local pcrun = require "pcrun"
local native = require "pcrun.native"
local ffi = require "ffi"

native.log("script started with " .. #arg .. " argument(s)")
local xs = {}
for i = 1, 1000 do xs[i] = i end

local pool = pcrun.pool(2)
local steps = pool:map("native.collatz", xs)
pool:close()
pool:join()

local longest, at = 0, 0
for i, s in ipairs(steps) do
  assert(s == native.collatz(i), "worker and parent disagree")
  if s > longest then longest, at = s, i end
end
print(("longest Collatz chain below 1000: %d steps, from %d"):format(
  longest, at))
assert(at == 871 and longest == 178)

local a = ffi.new("double[4]", { 1, 2, 3, 6 })
assert(native.mean(a, 4) == 3)
print(("damped(1, 0.5) = %.6f"):format(native.damped(1, 0.5)))
local ok, err = pcall(native.damped, 1)
assert(not ok and err:find("expected 2 arguments"))
native.log("script done")
