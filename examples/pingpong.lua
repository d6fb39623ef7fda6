-- Two processes bat a counter back and forth over a pipe, then the child
-- reports how long a round trip took on its side.
--   pcrun examples/pingpong.lua [rounds]
local pcrun = require "pcrun"

local rounds = tonumber(arg and arg[1]) or 100000
local here, there = pcrun.pipe()

local child = pcrun.process(function(conn)
  local t0 = os.clock()
  for _ = 1, rounds do
    local n = conn:recv()
    conn:send(n + 1)
  end
  conn:send(("child: %.2f us of CPU per round trip"):format(
    (os.clock() - t0) / rounds * 1e6))
end, there)
child:start()
there:close()  -- the child holds its own copy

local clock = pcrun.now
local t0, n = clock(), 0
for _ = 1, rounds do
  here:send(n)
  n = here:recv()
end
local elapsed = clock() - t0
print(here:recv())
child:join()
print(("%d round trips in %.3f s: %.2f us each, counter = %d, exit code %d")
      :format(rounds, elapsed, elapsed / rounds * 1e6, n, child.exitcode))
