-- pcrun.arena: the shared region every pcrun object lives in, its size
-- (PCRUN_ARENA) and accounting (no leak when objects go away).
local helpers = require "helpers"
local pcrun = require "pcrun"

local has = helpers.assert_has

local MiB = 2^20

local function used() return pcrun.arena().used end

-- Size PCRUN_ARENA asks for in this process, or nil if unset.
local function env_size()
  local s = os.getenv("PCRUN_ARENA")
  if not s or s == "" then return nil end
  local n, unit = s:match("^(%d+)(%a?)$")
  local mult = ({ [""] = 1, k = 2^10, K = 2^10, m = MiB, M = MiB,
                  g = 2^30, G = 2^30 })[unit]
  return n and mult and tonumber(n) * mult
end

describe("pcrun.arena", function()
  local base

  before_each(function()
    collectgarbage()
    collectgarbage()
    base = used()
  end)

  after_each(function()
    helpers.assert_no_children()
  end)

  it("reports the arena's size and the bytes in use", function()
    local a = pcrun.arena()
    assert.is_number(a.size)
    assert.is_number(a.used)
    assert.are.equal(env_size() or 2^30, a.size)
    assert.is_true(a.used >= 0 and a.used <= a.size)
    assert.are.equal(0, a.used % 32)  -- whole blocks
  end)

  it("returns a fresh table each call", function()
    local a = pcrun.arena()
    a.used = -1
    assert.are_not.equal(-1, pcrun.arena().used)
  end)

  it("counts a pipe's buffers in used until the pipe is closed", function()
    local a, b = pcrun.pipe()
    local with_pipe = used()
    assert.is_true(with_pipe >= base + 2 * MiB)  -- two 1 MiB rings
    a:close()
    assert.are.equal(with_pipe, used())  -- b still holds both rings
    b:close()
    assert.are.equal(base, used())
  end)

  it("returns used to its start after 10,000 pipes are made and closed",
     function()
    for _ = 1, 10000 do
      local a, b = pcrun.pipe()
      a:close()
      b:close()
    end
    assert.are.equal(base, used())
    for _ = 1, 1000 do
      local r, w = pcrun.pipe(false, { buffer = 4096 })
      w:close()
      r:close()
    end
    assert.are.equal(base, used())
  end)

  it("frees the buffers of pipes that are collected without close",
     function()
    for _ = 1, 20 do pcrun.pipe() end
    collectgarbage()
    collectgarbage()
    assert.are.equal(base, used())
  end)

  it("frees a large message's block once it is received", function()
    local a, b = pcrun.pipe()
    local with_pipe = used()
    a:send(("L"):rep(2 * MiB))  -- past the ring: through an arena block
    assert.is_true(used() > with_pipe)
    assert.are.equal(2 * MiB, #b:recv(5))
    assert.are.equal(with_pipe, used())
    a:close()
    b:close()
    assert.are.equal(base, used())
  end)

  it("frees a large message's block when the pipe is closed unread",
     function()
    local a, b = pcrun.pipe()
    a:send(("L"):rep(2 * MiB))
    a:close()
    b:close()
    assert.are.equal(base, used())
  end)

  -- However a child holding a pipe ends, its buffers come back.
  for _, case in ipairs {
    { "has returned", function() end },
    { "called os.exit", function() os.exit(0) end },
    { "was killed", function() while true do helpers.sleep(0.05) end end,
      kill = true },
  } do
    it("returns a pipe's buffers once a child holding it " .. case[1],
       function()
      local a, b = pcrun.pipe()
      local p = pcrun.process(function()
        b:send("hi")
        case[2]()
      end):start()
      assert.are.equal("hi", a:recv(5))
      if case.kill then p:kill() end
      assert.is_true(p:join(5))
      a:close()
      b:close()
      assert.are.equal(base, used())
    end)
  end

  it("shares one arena with children: their allocations show here",
     function()
    local a, b = pcrun.pipe()
    local with_pipe = used()
    local p = pcrun.process(function()
      local x, y = pcrun.pipe()
      b:send("made")
      b:recv()       -- hold x, y until told
      x:close()
      y:close()
    end):start()
    assert.are.equal("made", a:recv(5))
    assert.is_true(used() >= with_pipe + 2 * MiB)
    a:send("go")
    assert.is_true(p:join(5))
    assert.are.equal(with_pipe, used())
    a:close()
    b:close()
  end)

  it("honours PCRUN_ARENA", function()
    local code = "local a = require('pcrun').arena() print(a.size, a.used)"
    for _, case in ipairs {
      { "64M", 64 * MiB }, { "64m", 64 * MiB }, { "1G", 2^30 },
      { "131072K", 128 * MiB },
    } do
      local r = helpers.run_cli({ "-e", code }, nil,
                                { env = { PCRUN_ARENA = case[1] } })
      assert.are.equal(0, r.status)
      assert.are.equal(("%d\t0\n"):format(case[2]), r.stdout)
    end
  end)

  it("gives an error naming PCRUN_ARENA when the arena is full", function()
    local r = helpers.run_cli({ "-e", [[
      local pcrun = require "pcrun"
      local base = pcrun.arena().used
      local function fill()
        local keep, err = {}, nil
        for i = 1, 1000 do
          local ok, a, b = pcall(pcrun.pipe, true, { buffer = 2^20 })
          if not ok then err = a break end
          keep[#keep + 1] = a
          keep[#keep + 1] = b
        end
        for _, c in ipairs(keep) do c:close() end
        return #keep / 2, err
      end
      local n, err = fill()
      print("pipes", n)
      print("error", err)
      print("back", pcrun.arena().used == base)
      print("again", fill() == n)  -- what was freed serves again
    ]] }, nil, { env = { PCRUN_ARENA = "16M" } })
    assert.are.equal(0, r.status)
    local n = tonumber(r.stdout:match("pipes\t(%d+)"))
    assert.is_true(n >= 1 and n < 1000)
    has(r.stdout, "error\tpcrun.pipe: out of shared arena space",
        "PCRUN_ARENA", "back\ttrue", "again\ttrue")
  end)

  it("still serves a smaller pipe after a larger one did not fit",
     function()
    -- A fresh 4 MiB arena holds a pipe with 512 KiB buffers; it must
    -- still hold one after an attempt at 1 MiB buffers failed and left
    -- nothing in use.
    local env = { env = { PCRUN_ARENA = "4M" } }
    local r = helpers.run_cli({ "-e", [[
      local a, b = require("pcrun").pipe(true, { buffer = 2^19 })
      print("fresh ok")
    ]] }, nil, env)
    assert.are.equal(0, r.status)
    assert.are.equal("fresh ok\n", r.stdout)
    r = helpers.run_cli({ "-e", [[
      local pcrun = require "pcrun"
      print(pcall(pcrun.pipe, true, { buffer = 2^20 }))
      print("used", pcrun.arena().used)
      local ok, err = pcall(pcrun.pipe, true, { buffer = 2^19 })
      print("smaller", ok, err)
    ]] }, nil, env)
    assert.are.equal(0, r.status)
    has(r.stdout, "false\tpcrun.pipe: out of shared arena space",
        "used\t0\n", "smaller\ttrue")
  end)

  it("serves half the arena in one block after small blocks filled it "
     .. "and were freed", function()
    -- Freed blocks merge with their buddies: an arena once filled with
    -- 1 KiB arrays serves a 7 MiB one (a block of 8 MiB, half of 16 MiB:
    -- the largest a power-of-two allocator has) once they are gone.
    local r = helpers.run_cli({ "-e", [[
      local pcrun = require "pcrun"
      for round = 1, 3 do
        local keep = {}
        while true do
          local ok, a = pcall(pcrun.array, "uint8_t", 1000 + round)
          if not ok then print("full", a) break end
          keep[#keep + 1] = a
        end
        print("filled", #keep > 5000)
        keep = nil
        collectgarbage()
        collectgarbage()
        print("used", pcrun.arena().used)
        local ok, big = pcall(pcrun.array, "uint8_t", 7 * 2^20)
        print("big", ok, ok and big[7 * 2^20 - 1] or big)
        big = nil
        collectgarbage()
        collectgarbage()
      end
      print("end", pcrun.arena().used)
    ]] }, nil, { env = { PCRUN_ARENA = "16M" }, timeout = 60 })
    assert.are.equal(0, r.status)
    has(r.stdout, "pcrun.array: out of shared arena space")
    local _, fills = r.stdout:gsub("filled\ttrue\nused\t0\nbig\ttrue\t0\n",
                                   "")
    assert.are.equal(3, fills, r.stdout)
    has(r.stdout, "end\t0\n")
  end)

  it("passes a message larger than the free arena through the ring",
     function()
    local r = helpers.run_cli({ "-e", [[
      local pcrun = require "pcrun"
      local a, b = pcrun.pipe(true, { buffer = 4096 })
      local big = ("0123456789abcdef"):rep(2^19)  -- 8 MiB
      local p = pcrun.process(function() b:send(big) end):start()
      b:close()
      local got = a:recv(20)
      print(#got, got == big)
      assert(p:join(5))
      a:close()
      print("used", pcrun.arena().used)
    ]] }, nil, { env = { PCRUN_ARENA = "4M" }, timeout = 30 })
    assert.are.equal(0, r.status)
    assert.are.equal(("%d\ttrue\nused\t0\n"):format(8 * MiB), r.stdout)
  end)
end)
