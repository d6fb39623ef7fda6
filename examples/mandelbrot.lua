-- Mandelbrot set, one task per row, on a pool; prints the speedup over
-- the same loop run serially.
--   pcrun examples/mandelbrot.lua [size] [iterations] [workers...]
-- e.g. pcrun examples/mandelbrot.lua 1600 200 1 2 4 8 16
local pcrun = require "pcrun"
local now = pcrun.now

local size = tonumber(arg and arg[1]) or 800
local iters = tonumber(arg and arg[2]) or 200

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

local rows = {}
for y = 0, size - 1 do rows[#rows + 1] = y end

local function total(t)
  local s = 0
  for _, v in ipairs(t) do s = s + v end
  return s
end

local t0 = now()
local serial = {}
for i, y in ipairs(rows) do serial[i] = row(y) end
local tserial = now() - t0
local want = total(serial)
print(("%dx%d, %d iterations: serial %.3f s (checksum %d)"):format(
  size, size, iters, tserial, want))

local counts = {}
for i = 3, #(arg or {}) do counts[#counts + 1] = tonumber(arg[i]) end
if #counts == 0 then counts = { pcrun.cpu_count() } end
for _, n in ipairs(counts) do
  local pool = pcrun.pool(n)
  local t1 = now()
  local got = pool:map(row, rows)
  local el = now() - t1
  pool:close()
  pool:join()
  assert(total(got) == want, "wrong checksum")
  print(("workers %2d: %.3f s, speedup %.2fx"):format(n, el, tserial / el))
end
