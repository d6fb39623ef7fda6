-- Counting words by key in a pcrun.dict: a pool's workers add each word's
-- count straight into one shared table (atomic adds, no server process),
-- read a setting the parent published once, record their status by id,
-- and keep a nested record up to date with update.
--   pcrun examples/dictcount.lua [lines] [workers]
local pcrun = require "pcrun"

local nlines = tonumber(arg and arg[1]) or 100000
local nworkers = tonumber(arg and arg[2]) or pcrun.cpu_count()

local counts = pcrun.dict()   -- word -> count
local status = pcrun.dict()   -- chunk id -> "done", plus a "stats" record
status.config = { min_len = 3 }  -- published once, read by every worker

local text = { "the quick brown fox jumps over the lazy dog",
               "pack my box with five dozen liquor jugs",
               "sphinx of black quartz judge my vow" }

local function count_chunk(id, first, last)
  local min_len = status.config.min_len  -- a copy of the stored table
  local mine = {}
  for i = first, last do
    for w in text[i % #text + 1]:gmatch("%a+") do
      if #w >= min_len then mine[w] = (mine[w] or 0) + 1 end
    end
  end
  for w, n in pairs(mine) do counts:add(w, n) end
  status[id] = "done"
  -- status.stats.chunks = ... would change a copy only: update writes back
  status:update("stats", function(s)
    s = s or { chunks = 0, lines = 0 }
    s.chunks, s.lines = s.chunks + 1, s.lines + (last - first + 1)
    return s
  end)
end

local chunks, size = {}, math.ceil(nlines / (4 * nworkers))
for first = 1, nlines, size do
  chunks[#chunks + 1] = { #chunks + 1, first, math.min(first + size - 1, nlines) }
end

local t0 = require("pcrun.core").now()
local pool = pcrun.pool(nworkers)
pool:starmap(count_chunk, chunks)
pool:close()
pool:join()
local dt = require("pcrun.core").now() - t0

local words = {}
for w, n in counts:pairs() do words[#words + 1] = { w, n } end
table.sort(words, function(a, b) return a[2] > b[2] or
                                         (a[2] == b[2] and a[1] < b[1]) end)
local stats = status.stats
print(("%d lines in %d chunks, %d distinct words in %.3f s by %d workers")
      :format(stats.lines, stats.chunks, counts:len(), dt, nworkers))
for i = 1, math.min(5, #words) do
  print(("  %-8s %d"):format(words[i][1], words[i][2]))
end
local done = 0
for i = 1, #chunks do if status[i] == "done" then done = done + 1 end end
print(("chunks done: %d of %d"):format(done, #chunks))
