-- Progress bars on stderr, for pool calls and as_completed. Only when
-- stderr is a terminal. One bar is on screen at a time (the latest); the
-- script's print and writes to io.stdout/io.stderr erase it first and
-- redraw it after a complete line, and workers erase it before they write
-- (the parent redraws it at its next update), so no output lands on the
-- bar's line and no stale bar stays in the scrollback.
local core = require "pcrun.core"

local M = {}

local now, floor, max = core.now, math.floor, math.max
local EVERY = 0.1   -- seconds between redraws
local STALE = 2.0   -- a bar not updated for this long is not redrawn
local WIDTH = 30

local shown       -- the bar on screen, or nil
local rawwrite    -- the file method write, before wrapping
local flags = {}  -- shared words that tell workers a bar is on screen

local function err(s) rawwrite(io.stderr, s) end

local function erase()
  if shown and shown.visible then
    err("\r\27[K")
    shown.visible = false
  end
end

local function tell(on)
  for f in pairs(flags) do f[0] = on and 1 or 0 end
end

local function clock(s)
  if s >= 3600 then
    return ("%d:%02d:%02d"):format(s / 3600, s % 3600 / 60, s % 60)
  elseif s >= 60 then
    return ("%d:%02d"):format(s / 60, s % 60)
  end
  return ("%.1fs"):format(s)
end

local function rate(r)
  if r >= 1e6 then return ("%.2fM/s"):format(r / 1e6) end
  if r >= 1e4 then return ("%.1fk/s"):format(r / 1e3) end
  return ("%.0f/s"):format(r)
end

local function draw(b)
  local t = now()
  local el = t - b.t0
  local r = b.done / max(el, 1e-9)
  local s
  if b.total then
    local frac = b.total > 0 and b.done / b.total or 1
    local n = floor(frac * WIDTH)
    local eta = r > 0 and (b.total - b.done) / r or 0
    s = ("%s[%s%s] %d/%d %3d%% %s elapsed %s ETA %s"):format(
      b.label, ("="):rep(n), (" "):rep(WIDTH - n), b.done, b.total,
      floor(frac * 100), rate(r), clock(el), clock(eta))
  else
    s = ("%s%d done %s elapsed %s"):format(b.label, b.done, rate(r),
                                           clock(el))
  end
  err("\r\27[K" .. s)
  b.visible, b.drawn = true, t
  if shown ~= b then
    if shown then shown.visible = false end
    shown = b
    tell(true)
  end
end

-- Wrap print and the write method of files once: output to a terminal
-- erases the bar; a complete line lets it be drawn again.
local function install()
  if rawwrite then return end
  local methods = getmetatable(io.stdout).__index
  rawwrite = methods.write
  methods.write = function(f, ...)
    if not (shown and (f == io.stdout or f == io.stderr)) then
      return rawwrite(f, ...)
    end
    erase()
    local r = { rawwrite(f, ...) }
    f:flush()
    local last = select(select("#", ...), ...)
    if type(last) == "string" and last:sub(-1) == "\n"
       and now() - shown.drawn < STALE then
      draw(shown)
    end
    return unpack(r)
  end
  local iowrite = io.write  -- writes without the method: through it
  io.write = function(...)
    if not shown then return iowrite(...) end
    return io.output():write(...)
  end
  local print0 = print
  _G.print = function(...)
    if not shown then return print0(...) end
    erase()
    io.stdout:flush()
    print0(...)
    io.stdout:flush()
    if now() - shown.drawn < STALE then draw(shown) end
  end
end

--- A bar for total items (nil: unknown), labelled by label (true: none),
-- or nil when stderr is not a terminal.
function M.new(label, total)
  if not core.isatty(2) then return nil end
  install()
  local b = { label = type(label) == "string" and label .. " " or "",
              total = total, done = 0, t0 = now(), drawn = 0 }
  draw(b)
  return b
end

--- Record done items (and the total, once known); redraws at most every
-- EVERY seconds.
function M.update(b, done, total)
  if not b then return end
  b.done = done
  if total then b.total = total end
  if now() - b.drawn >= EVERY then draw(b) end
end

--- The call is over: ok leaves the final bar as a line of its own,
-- otherwise (an error, Ctrl-C) the bar is erased.
function M.finish(b, ok)
  if not b or b.finished then return end
  b.finished = true
  if ok then
    draw(b)
    err("\n")
    b.visible = false
  elseif shown == b then
    erase()
  end
  if shown == b then
    shown = nil
    tell(false)
  end
end

--- A pool's shared word (a uint32_t pointer) its workers read: 1 while a
-- bar is on screen.
function M.share(flag)
  flags[flag] = true
  flag[0] = shown and 1 or 0
end

function M.unshare(flag) flags[flag] = nil end

--- In a worker: erase the parent's bar before writing to a terminal.
function M.worker(flag)
  local methods = getmetatable(io.stdout).__index
  local write, print0 = methods.write, print
  local tty = { [io.stdout] = core.isatty(1), [io.stderr] = core.isatty(2) }
  methods.write = function(f, ...)
    if flag[0] ~= 0 and tty[f] then write(f, "\r\27[K") end
    return write(f, ...)
  end
  local iowrite = io.write
  io.write = function(...)
    if flag[0] ~= 0 then return io.output():write(...) end
    return iowrite(...)
  end
  _G.print = function(...)
    if flag[0] ~= 0 and tty[io.stdout] then
      io.stdout:flush()
      write(io.stdout, "\r\27[K")
    end
    return print0(...)
  end
end

return M
