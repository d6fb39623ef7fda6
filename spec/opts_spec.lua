-- Strict options tables: every function that takes one raises on an
-- unknown key (with a suggestion for a likely typo) and on a value of the
-- wrong kind, naming itself and the option. Nothing is forked on error.
local helpers = require "helpers"
local pcrun = require "pcrun"
local options = require "pcrun.opts"

-- The error of fn(...), without the caller's position.
local function errof(fn, ...)
  local ok, err = pcall(fn, ...)
  assert(not ok, "expected an error, got none")
  return (tostring(err):gsub("^[^:]*%.lua:%d+: ", ""))
end

describe("options tables", function()
  after_each(function() helpers.assert_no_children() end)

  it("raise on unknown keys with a suggestion", function()
    local cases = {
      { "pcrun.pool: unknown option 'chunk_size' (did you mean "
        .. "'chunksize'?)", pcrun.pool, 2, { chunk_size = 10 } },
      { "pcrun.pool: unknown option 'processes' (the number of workers is "
        .. "the first argument: pcrun.pool(n, opts))",
        pcrun.pool, { processes = 1 } },
      { "pcrun.pool: unknown option 'time_out' (did you mean 'timeout'?)",
        pcrun.pool, 1, { time_out = 1 } },
      { "pcrun.pool: unknown option 'init' (did you mean 'initargs' or "
        .. "'initializer'?)",
        pcrun.pool, 1, { init = print } },
      { "pcrun.pool: unknown option 'zzz'", pcrun.pool, 1, { zzz = 1 } },
      { "pcrun.pool: unknown option 1", pcrun.pool, 1, { 5 } },
      { "pcrun.pipe: unknown option 'buf' (did you mean 'buffer'?)",
        pcrun.pipe, true, { buf = 4096 } },
      { "pcrun.wait: unknown option 'time_out' (did you mean 'timeout'?)",
        pcrun.wait, {}, { time_out = 1 } },
      { "pcrun.wait: unknown option 'returnwhen' (did you mean "
        .. "'return_when'?)", pcrun.wait, {}, { returnwhen = "x" } },
      { "pcrun.decode: unknown option 'trust' (did you mean 'trusted'?)",
        pcrun.decode, pcrun.encode(1), { trust = true } },
    }
    for _, c in ipairs(cases) do
      assert.are.equal(c[1], errof(unpack(c, 2)))
    end
  end)

  it("raise on a value of the wrong kind, naming the option", function()
    local cases = {
      { "pcrun.pool: progress must be a boolean, got string",
        pcrun.pool, 1, { progress = "yes" } },
      { "pcrun.pool: timeout must be a positive number, got -1",
        pcrun.pool, 1, { timeout = -1 } },
      { "pcrun.pool: initializer must be a function, got string",
        pcrun.pool, 1, { initializer = "f" } },
      { "pcrun.pool: chunksize must be a positive integer, got 1.5",
        pcrun.pool, 1, { chunksize = 1.5 } },
      { "pcrun.pool: opts must be a table, got string", pcrun.pool, 1, "x" },
      { "pcrun.wait: timeout must be a non-negative number, got string",
        pcrun.wait, {}, { timeout = "1" } },
      { "pcrun.pipe: buffer must be a number, got boolean",
        pcrun.pipe, true, { buffer = true } },
      { "pcrun.decode: trusted must be a boolean, got string",
        pcrun.decode, pcrun.encode(1), { trusted = "yes" } },
    }
    for _, c in ipairs(cases) do
      assert.are.equal(c[1], errof(unpack(c, 2)))
    end
  end)

  it("of pool calls and as_completed are checked too", function()
    local p = pcrun.pool(1)
    local id = function(x) return x end
    local cases = {
      { "pcrun.Pool:map: unknown option 'chunk_size' (did you mean "
        .. "'chunksize'?)", p.map, p, id, { 1 }, { chunk_size = 1 } },
      { "pcrun.Pool:starmap: progress must be a boolean or string, got 1",
        p.starmap, p, id, { { 1 } }, { progress = 1 } },
      { "pcrun.Pool:imap: chunksize must be a positive integer, got 0",
        p.imap, p, id, { 1 }, { chunksize = 0 } },
      { "pcrun.Pool:imap_unordered: unknown option 'progres' (did you mean "
        .. "'progress'?)", p.imap_unordered, p, id, { 1 }, { progres = 1 } },
      { "pcrun.as_completed: unknown option 'time_out' (did you mean "
        .. "'timeout'?)", pcrun.as_completed, {}, { time_out = 1 } },
    }
    for _, c in ipairs(cases) do
      assert.are.equal(c[1], errof(unpack(c, 2)))
    end
    assert.are.same({ 1, 2 }, p:map(id, { 1, 2 }, { chunksize = 1,
                                                    progress = false }))
    p:terminate()
  end)

  it("are blamed on the caller's line", function()
    local ok, err = pcall(function() pcrun.pool(1, { chunk_size = 1 }) end)
    assert.is_false(ok)
    assert.is_truthy(err:find("opts_spec%.lua:%d+: pcrun%.pool: "), err)
  end)

  it("accept every documented option", function()
    local p = pcrun.pool(1, { initializer = function() end, initargs = {},
      maxtasksperchild = 5, timeout = 10, progress = false, chunksize = 3 })
    assert.are.same({ 1, 2, 3, 4 }, p:map(function(x) return x end,
                                          { 1, 2, 3, 4 }))
    local f = p:submit(function() return 1 end)
    local done = pcrun.wait({ f }, { timeout = 10,
                                     return_when = "ALL_COMPLETED" })
    assert.are.equal(1, #done)
    p:terminate()
    local a = pcrun.pipe(true, { buffer = 8192 })
    a:close()
    assert.are.equal(1, pcrun.decode(pcrun.encode(1), { trusted = false }))
  end)

  it("pcrun.opts checks a spec of its own", function()
    local spec = options.spec { label = "string", n = "positive integer" }
    assert.are.same({ label = "x" }, options.check("f", { label = "x" }, spec))
    assert.are.same({}, options.check("f", nil, spec))
    assert.are.equal("f: unknown option 'lable' (did you mean 'label'?)",
      errof(options.check, "f", { lable = "x" }, spec))
    assert.are.equal("f: n must be a positive integer, got 0",
      errof(options.check, "f", { n = 0 }, spec))
  end)
end)
