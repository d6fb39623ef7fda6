-- Smoke runs of examples/: each runs through the pcrun CLI, small, and
-- prints what it promises.
local helpers = require "helpers"

local has = helpers.assert_has
local SRC = os.getenv("PCRUN_SRC") or "."

local function example(name, ...)
  local r = helpers.run_cli({ SRC .. "/examples/" .. name, ... }, nil,
                            { timeout = 60 })
  assert.are.equal(0, r.status, r.stderr)
  return r.stdout
end

describe("examples", function()
  after_each(helpers.assert_no_children)

  it("pi.lua estimates pi on all cores", function()
    local out = example("pi.lua", "2e6")
    local pi = tonumber(out:match("pi ~ ([%d%.]+)"))
    assert.is_true(math.abs(pi - math.pi) < 0.01, out)
    has(out, "workers", "darts/s")
  end)

  it("pingpong.lua counts every round trip", function()
    local out = example("pingpong.lua", "2000")
    has(out, "2000 round trips", "counter = 2000", "exit code 0",
        "child: ")
  end)

  it("wordfreq.lua counts every word once through a queue and a shared "
     .. "array", function()
    local out = example("wordfreq.lua", "3000", "3")
    has(out, "3000 lines, 24000 words", "by 3 workers",
        "counted 24000 = 24000 words", "reached the barrier first")
  end)

  it("dictcount.lua counts words by key in a shared dict", function()
    local out = example("dictcount.lua", "3000", "2")
    has(out, "3000 lines in 8 chunks, 20 distinct words", "by 2 workers",
        "the      2000", "chunks done: 8 of 8")
  end)

  it("mandelbrot.lua gives the serial checksum from a pool", function()
    local out = example("mandelbrot.lua", "120", "50", "1", "2")
    has(out, "serial", "workers  1:", "workers  2:", "speedup")
  end)
end)
