-- The Mandelbrot set of examples/mandelbrot.lua, one task per row, on
-- every core of every rank of an MPI job (docs/cluster.md):
--   mpirun -n 3 --oversubscribe --bind-to none pcrun examples/cluster.lua
--   mpirun --map-by ppr:1:node --bind-to none pcrun examples/cluster.lua 4000
-- Without mpirun it runs on a local pool, unchanged.
--   pcrun examples/cluster.lua [size] [iterations] [workers per rank]
local pcrun = require "pcrun"
local now = pcrun.now

-- Code above pcrun.cluster runs on every rank: define what tasks use here.
local size = tonumber(arg and arg[1]) or 800
local iters = tonumber(arg and arg[2]) or 200
local per = tonumber(arg and arg[3])

-- Escape count of every pixel of row y, summed (a checksum of the row).
local function row(y)
  local ci = 2.0 * y / size - 1.0
  local sum = 0
  for x = 0, size - 1 do
    local cr = 2.5 * x / size - 2.0
    local zr, zi, n = 0.0, 0.0, 0
    while n < iters and zr * zr + zi * zi <= 4.0 do
      zr, zi = zr * zr - zi * zi + cr, 2.0 * zr * zi + ci
      n = n + 1
    end
    sum = sum + n
  end
  return sum
end

-- Ranks >= 1 serve here and exit when rank 0 closes the pool.
local pool = pcrun.cluster { workers = per }

local rows = {}
for y = 0, size - 1 do rows[#rows + 1] = y end
local t0 = now()
local sums = pool:map(row, rows)
local el = now() - t0
local total = 0
for _, v in ipairs(sums) do total = total + v end
local ranks, workers = pool:ranks(), 0
for _, r in ipairs(ranks) do workers = workers + r.workers end
print(("%dx%d, %d iterations on %d ranks, %d workers: %.3f s "
       .. "(checksum %d)"):format(size, size, iters, #ranks, workers, el,
                                  total))
for _, r in ipairs(ranks) do
  print(("  rank %d on %s: %d workers"):format(r.rank, r.host, r.workers))
end
pool:close()
pool:join()
