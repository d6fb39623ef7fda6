-- A producer/consumer pipeline over shared memory: the parent puts lines
-- of text on a bounded queue, worker processes take them and count word
-- lengths into one shared array with atomic adds, and a barrier lets the
-- workers agree that the input is done before they report.
--   pcrun examples/wordfreq.lua [lines] [workers]
local pcrun = require "pcrun"

local nlines = tonumber(arg and arg[1]) or 200000
local nworkers = tonumber(arg and arg[2]) or pcrun.cpu_count()

local MAXLEN = 16
local lengths = pcrun.array("int64_t", MAXLEN + 1)  -- [k]: words of length k
local words = pcrun.value("int64_t", 0)
local lines = pcrun.queue(1024)                     -- put blocks when full
local done = pcrun.barrier(nworkers)
local report = pcrun.lock()

local function worker(id)
  local mine, local_len = 0, {}
  for k = 0, MAXLEN do local_len[k] = 0 end
  for line in lines:iter() do  -- until the queue is closed and drained
    for w in line:gmatch("%a+") do
      local k = math.min(#w, MAXLEN)
      local_len[k] = local_len[k] + 1
      mine = mine + 1
    end
  end
  report:with(function()  -- one writer at a time: plain adds are safe
    for k = 0, MAXLEN do lengths[k] = lengths[k] + local_len[k] end
  end)
  words:add(mine)
  local idx = done:wait(60)  -- every worker has added its counts
  if idx == 0 then print(("worker %d reached the barrier first"):format(id)) end
end

local ps = {}
for i = 1, nworkers do ps[i] = pcrun.process(worker, i):start() end

local text = { "the quick brown fox jumps over the lazy dog",
               "pack my box with five dozen liquor jugs",
               "sphinx of black quartz judge my vow" }
local t0 = pcrun.now()
for i = 1, nlines do lines:put(text[i % #text + 1]) end
lines:close()
for _, p in ipairs(ps) do p:join() end
local dt = pcrun.now() - t0

local total = 0
for k = 1, MAXLEN do total = total + tonumber(lengths[k]) end
print(("%d lines, %d words in %.3f s by %d workers (%.0f lines/s)")
      :format(nlines, words:load(), dt, nworkers, nlines / dt))
for k = 1, MAXLEN do
  if lengths[k] > 0 then
    print(("  length %2d: %d"):format(k, tonumber(lengths[k])))
  end
end
print(("counted %d = %d words"):format(total, words:load()))
