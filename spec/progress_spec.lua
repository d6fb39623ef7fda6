-- Progress bars: drawn on stderr only when it is a terminal (here a pty
-- made by script(1)), for map, starmap, imap, imap_unordered and
-- as_completed; erased before anything else reaches the terminal.
local helpers = require "helpers"

local has = helpers.assert_has
local ERASE = "\r\27[K"

local function have_script()
  local h = io.popen("command -v script 2>/dev/null")
  local out = h:read("*a")
  h:close()
  return out ~= ""
end

-- Run src with the CLI on a pseudo-terminal; returns everything written
-- to it (stdout and stderr together).
local function on_tty(src)
  local path = helpers.script(src)
  local cmd = ("script -qec %q /dev/null </dev/null 2>&1"):format(
    helpers.bin .. " " .. path)
  local h = io.popen(cmd)
  local out = h:read("*a")
  h:close()
  os.remove(path)
  return (out:gsub("\r\n", "\n"))
end

-- The visible lines: each line as the terminal shows it (what follows
-- the last carriage return or erase).
local function visible(out)
  local lines = {}
  for line in (out .. "\n"):gmatch("(.-)\n") do
    line = line:gsub("^.*\r", ""):gsub("\27%[K", "")
    lines[#lines + 1] = line
  end
  return lines
end

local PRELUDE = [[
  local pcrun = require "pcrun"
  local pool = pcrun.pool(2)
  local function range(n) local t = {} for i = 1, n do t[i] = i end return t end
]]

describe("progress bars", function()
  after_each(function() helpers.assert_no_children() end)

  local ok = have_script()

  it("are not drawn when stderr is not a terminal", function()
    local r = helpers.run_cli({ "-e", PRELUDE .. [[
      pool:map(function(x) return x end, range(50), { progress = true })
      for _ in pool:imap(function(x) return x end, range(5),
                         { progress = "l" }) do end
      print("done")
    ]] }, nil, { env = { PCRUN_PROGRESS = "1" } })
    assert.are.equal(0, r.status)
    assert.are.equal("", r.stderr)
    assert.are.equal("done\n", r.stdout)
  end)

  it("show a known total as a bar with rate, elapsed and ETA, and leave "
     .. "one line when done", function()
    assert(ok, "script(1) is needed for this spec")
    local out = on_tty(PRELUDE .. [[
      local r = pool:map(function(x) pcrun.sleep(0.002) return x end,
                         range(100), { progress = "squares" })
      print("map done", #r)
      local t = pool:starmap(function(a, b) return a + b end,
                             { { 1, 2 }, { 3, 4 } }, { progress = true })
      print("starmap done", t[2])
    ]])
    has(out, "squares [", " 0/100   0% ", "/s elapsed ", " ETA ")
    local lines = visible(out)
    local function find(pat)
      for i, l in ipairs(lines) do if l:find(pat) then return i, l end end
    end
    local i, final = find("^squares %[")
    assert.is_truthy(final, out)
    assert.is_truthy(final:find("%[=+%] 100/100 100%% "), final)
    assert.are.equal("map done\t100", lines[i + 1])
    local _, sm = find("^starmap %[")
    assert.is_truthy(sm and sm:find("2/2 100%%"), out)
    assert.is_truthy(find("^starmap done\t7$"), out)
  end)

  it("show an unknown total as a count with rate", function()
    assert(ok, "script(1) is needed for this spec")
    local out = on_tty(PRELUDE .. [[
      local k = 0
      for _ in pool:imap_unordered(function(x) return x end, function()
        k = k + 1
        if k <= 30 then return k end
      end, { progress = "stream" }) do end
      print("stream done")
    ]])
    has(out, "stream 0 done 0/s elapsed 0.0s")
    local lines = visible(out)
    assert.is_truthy(lines[#lines - 1]:find("^stream done"), out)
    -- once the iterator ends, the total is known
    assert.is_truthy(lines[#lines - 2]:find("^stream %[=+%] 30/30 100%%"),
                     out)
  end)

  it("are erased before the script's and the workers' output",
     function()
    assert(ok, "script(1) is needed for this spec")
    local out = on_tty(PRELUDE .. [[
      local n = 0
      for i in pool:imap(function(x)
        if x == 20 then print("from worker") end
        pcrun.sleep(0.005)
        return x
      end, range(40), { progress = "it" }) do
        if i == 10 then print("from script") end
        if i == 30 then io.write("written\n") end
      end
    ]])
    has(out, ERASE .. "from worker\n", ERASE .. "from script\n",
        ERASE .. "written\n")
    for _, l in ipairs(visible(out)) do
      if l:find("from") or l:find("written") then
        assert.is_nil(l:find("it %["), l)
      end
    end
  end)

  it("are erased before an error message", function()
    assert(ok, "script(1) is needed for this spec")
    local out = on_tty(PRELUDE .. [[
      pool:map(function(x) pcrun.sleep(0.01) if x == 30 then error("bad", 0) end
        return x end, range(40), { progress = "failing" })
    ]])
    has(out, "failing [", ERASE .. "pcrun: worker ")
    local lines = visible(out)
    for _, l in ipairs(lines) do
      if l:find("pcrun: worker") then assert.is_nil(l:find("failing"), l) end
    end
  end)

  it("count futures in as_completed", function()
    assert(ok, "script(1) is needed for this spec")
    local out = on_tty(PRELUDE .. [[
      local fs = {}
      for i = 1, 20 do fs[i] = pool:submit(function(x) return x end, i) end
      local n = 0
      for _ in pcrun.as_completed(fs, { progress = "futs" }) do n = n + 1 end
      print("got", n)
    ]])
    local lines = visible(out)
    assert.is_truthy(lines[#lines - 2]:find("^futs %[=+%] 20/20 100%%"), out)
    assert.are.equal("got\t20", lines[#lines - 1])
  end)
end)
