-- Monte Carlo estimate of pi on every core: each task throws darts with
-- its own random stream and counts the hits inside the unit circle.
--   pcrun examples/pi.lua [darts]        (default 200 million)
local pcrun = require "pcrun"
local bit = require "bit"

local darts = tonumber(arg and arg[1]) or 2e8
local tasks = 64

-- A small xorshift generator: math.random is per process and would need
-- reseeding; this one is seeded by task number, so runs are repeatable.
local function count_hits(seed, n)
  local x = bit.bxor(0x9E3779B9, seed * 2654435761 % 4294967296)
  if x == 0 then x = 1 end
  local hits, scale = 0, 1 / 4294967296
  for _ = 1, n do
    x = bit.bxor(x, bit.lshift(x, 13))
    x = bit.bxor(x, bit.rshift(x, 17))
    x = bit.bxor(x, bit.lshift(x, 5))
    local u = (x % 4294967296) * scale
    x = bit.bxor(x, bit.lshift(x, 13))
    x = bit.bxor(x, bit.rshift(x, 17))
    x = bit.bxor(x, bit.lshift(x, 5))
    local v = (x % 4294967296) * scale
    if u * u + v * v <= 1 then hits = hits + 1 end
  end
  return hits
end

local per = math.floor(darts / tasks)
local args = {}
for i = 1, tasks do args[i] = { i, per } end

local clock = pcrun.now
local t0 = clock()
local pool = pcrun.pool()
local hits = 0
for _, h in ipairs(pool:starmap(count_hits, args)) do hits = hits + h end
local elapsed = clock() - t0
pool:close()
pool:join()

local total = per * tasks
local pi = 4 * hits / total
print(("pi ~ %.6f (error %.1e) from %d darts"):format(pi,
      math.abs(pi - math.pi), total))
print(("%d workers, %.2f s, %.0f M darts/s"):format(pool.n, elapsed,
      total / elapsed / 1e6))
