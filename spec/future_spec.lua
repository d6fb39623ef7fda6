-- pcrun.future: the futures of pool:submit, pcrun.as_completed and
-- pcrun.wait. Bodies run in a forked copy of busted under a deadline
-- (helpers.with_timeout): a hang fails one test, not the run.
local helpers = require "helpers"
local pcrun = require "pcrun"

local has = helpers.assert_has
local error_has = helpers.assert_error_has

local mkpool, finish_all, forked = helpers.pool_tracker(pcrun)

-- Tasks sleep through the module `helpers`, sent to workers by name.
local function sleeper(s, v)
  return function() helpers.sleep(s) return v end
end

local function failer(msg)
  return function() error(msg, 0) end
end

-- The futures of list as a set, for comparing done / not_done lists.
local function set(list)
  local t = {}
  for _, f in ipairs(list) do
    assert(not t[f], "a future appears twice")
    t[f] = true
  end
  return t
end

local function index_of(list, x)
  for i, v in ipairs(list) do if v == x then return i end end
end

describe("pcrun.future", function()
  after_each(function()
    finish_all(false)
    helpers.assert_no_children()
  end)

  describe("pcrun.Future", function()
    it("is not done while its task runs, then done with the result",
       forked(10, function()
      local p, go = mkpool(1), pcrun.event()
      local f = p:submit(function() assert(go:wait(8)) return "v" end)
      assert.is_false(f:done())
      assert.is_false(f:cancelled())
      go:set()
      assert.are.equal("v", f:result(5))
      assert.is_true(f:done())
      assert.is_false(f:running())
      assert.is_false(f:cancelled())
      assert.are.equal("v", f:result())  -- again: same result
    end))

    it("becomes done by polling done() alone", forked(10, function()
      local p = mkpool(1)
      local f = p:submit(sleeper(0.1, 1))
      local deadline = helpers.now() + 5
      while not f:done() and helpers.now() < deadline do
        helpers.sleep(0.01)
      end
      assert.is_true(f:done())
      assert.are.equal(1, f:result(0))
    end))

    it("reports running while a worker runs it, not while queued",
       forked(10, function()
      local p, go = mkpool(1), pcrun.event()
      local fs = { p:submit(function() assert(go:wait(8)) return 1 end) }
      for i = 2, 5 do fs[i] = p:submit(sleeper(0.1, i)) end
      helpers.sleep(0.1)
      assert.is_false(fs[1]:done())       -- poll the pool once
      assert.is_true(fs[1]:running())
      assert.is_false(fs[5]:running())    -- still in the parent's queue
      assert.is_false(fs[5]:done())
      go:set()  -- the first task ends only now
      assert.are.equal(1, fs[1]:result(5))
      assert.is_false(fs[1]:running())
    end))

    it("result waits at most timeout seconds, then raises 'timeout'",
       forked(10, function()
      local p = mkpool(1)
      local f = p:submit(sleeper(0.8, "late"))
      local t0 = helpers.now()
      error_has("pcrun.Future:result: timeout", f.result, f, 0.2)
      local took = helpers.now() - t0
      assert.is_true(took >= 0.15 and took < 0.7, ("took %.2fs"):format(took))
      error_has("pcrun.Future:error: timeout", f.error, f, 0)
      assert.is_false(f:done())
      assert.are.equal("late", f:result(5))  -- still comes afterwards
    end))

    it("result raises the task's error, error() returns it",
       forked(10, function()
      local p = mkpool(2)
      local f = p:submit(failer("it broke"))
      local err = error_has({ "it broke", "task 1:" }, f.result, f, 5)
      assert.is_truthy(err:find("^worker %d+: task 1: it broke"), err)
      assert.are.equal(err, f:error())
      assert.is_true(f:done())
      assert.is_false(f:cancelled())
      local ok = p:submit(function() return false end)
      assert.is_nil(ok:error(5))
      assert.is_false(ok:result())
    end))

    it("cancels a task no worker has yet", forked(15, function()
      local p = mkpool(1)
      local mark = os.tmpname()
      os.remove(mark)
      local fs = {}
      for i = 1, 4 do fs[i] = p:submit(sleeper(0.2, i)) end
      local last = p:submit(function(path)
        local f = io.open(path, "w")
        f:write("ran")
        f:close()
        return "ran"
      end, mark)
      assert.is_true(last:cancel())
      assert.is_true(last:cancelled())
      assert.is_true(last:done())
      assert.is_false(last:running())
      assert.is_true(last:cancel())  -- again: still cancelled
      local err = error_has("cancelled", last.result, last)
      has(err, "pcrun.Future:result:")
      has(last:error(), "cancel")
      for i = 1, 4 do assert.are.equal(i, fs[i]:result(5)) end
      -- the cancelled task never ran
      assert.is_nil(io.open(mark, "r"))
      assert.are.equal("after", p:apply(function() return "after" end))
      assert.is_nil(io.open(mark, "r"))
    end))

    it("does not cancel a task that runs or has finished",
       forked(10, function()
      local p = mkpool(1)
      local f = p:submit(sleeper(0.3, "r"))
      helpers.sleep(0.1)
      assert.is_false(f:cancel())
      assert.is_false(f:cancelled())
      assert.are.equal("r", f:result(5))
      assert.is_false(f:cancel())
      assert.is_false(f:cancelled())
      assert.are.equal("r", f:result())
      local g = p:submit(failer("x"))
      g:error(5)
      assert.is_false(g:cancel())
      has(g:error(), "x")
    end))

    it("calls a done callback once, with the future", forked(10, function()
      local p = mkpool(1)
      local f = p:submit(sleeper(0.1, 5))
      local calls, order = {}, {}
      f:add_done_callback(function(g)
        calls[#calls + 1] = g
        order[#order + 1] = "a"
        assert.is_true(g:done())
      end)
      f:add_done_callback(function() order[#order + 1] = "b" end)
      assert.are.equal(5, f:result(5))
      assert.are.equal(1, #calls)
      assert.are.equal(f, calls[1])
      assert.are.same({ "a", "b" }, order)
      -- further waits and polls do not call it again
      f:result()
      f:done()
      p:apply(function() end)
      assert.are.equal(1, #calls)
    end))

    it("calls a callback added after completion at once", forked(10, function()
      local p = mkpool(1)
      local f = p:submit(function() return 1 end)
      f:result(5)
      local got, n = nil, 0
      f:add_done_callback(function(g) got, n = g, n + 1 end)
      assert.are.equal(1, n)
      assert.are.equal(f, got)
      p:apply(function() end)
      assert.are.equal(1, n)
    end))

    it("calls done callbacks of failed and cancelled futures",
       forked(10, function()
      local p = mkpool(1)
      local bad = p:submit(failer("cb"))
      local n_bad = 0
      bad:add_done_callback(function(g)
        n_bad = n_bad + 1
        has(g:error(), "cb")
      end)
      local blockers = { p:submit(sleeper(0.2)), p:submit(sleeper(0.2)) }
      local c = p:submit(sleeper(0.2))
      local n_c, seen = 0, nil
      c:add_done_callback(function(g) n_c, seen = n_c + 1, g:cancelled() end)
      assert.is_true(c:cancel())
      assert.are.equal(1, n_c)
      assert.is_true(seen)
      bad:error(5)
      for _, b in ipairs(blockers) do b:result(5) end
      assert.are.equal(1, n_bad)
      assert.are.equal(1, n_c)
    end))

    it("goes on after a done callback raises", forked(10, function()
      local p = mkpool(1)
      local f = p:submit(function() return "fine" end)
      local after = 0
      f:add_done_callback(function() error("callback trouble") end)
      f:add_done_callback(function() after = after + 1 end)
      assert.are.equal("fine", f:result(5))
      assert.are.equal(1, after)
    end))

    it("logs a raising done callback the same on a settled future",
       function()
      -- settled before the callbacks are added, and after: both go on
      local r = helpers.run_cli({ "-e", [[
        local pcrun = require "pcrun"
        local p = pcrun.pool(1)
        local f = p:submit(function() return "fine" end)
        f:result(5)
        local after = 0
        f:add_done_callback(function() error("early trouble", 0) end)
        f:add_done_callback(function() after = after + 1 end)
        local g = p:submit(function() return "later" end)
        g:add_done_callback(function() error("late trouble", 0) end)
        g:add_done_callback(function() after = after + 1 end)
        assert(g:result(5) == "later")
        print("after", after)
        p:close() p:join()
      ]] })
      assert.are.equal(0, r.status, r.stderr)
      assert.are.equal("after\t2\n", r.stdout)
      has(r.stderr, "pcrun: done callback failed: early trouble\n",
          "pcrun: done callback failed: late trouble\n")
    end)

    it("lets a done callback submit more work", forked(15, function()
      local p = mkpool(2)
      local follow = {}
      local fs = {}
      for i = 1, 6 do
        fs[i] = p:submit(function(x) return x * 10 end, i)
        fs[i]:add_done_callback(function(g)
          follow[#follow + 1] = p:submit(function(y) return y + 1 end,
                                         g:result())
        end)
      end
      for i = 1, 6 do assert.are.equal(i * 10, fs[i]:result(5)) end
      assert.are.equal(6, #follow)
      local sum = 0
      for _, g in ipairs(follow) do sum = sum + g:result(5) end
      assert.are.equal(216, sum)  -- 10 + ... + 60, plus 6
    end))

    it("shows its state in tostring", forked(10, function()
      local p = mkpool(1)
      local f = p:submit(sleeper(0.2))
      local g = p:submit(sleeper(0.2))
      local h = p:submit(sleeper(0.2))
      assert.are.equal("pcrun.Future(running)", tostring(f))
      assert.are.equal("pcrun.Future(pending)", tostring(h))
      h:cancel()
      assert.are.equal("pcrun.Future(cancelled)", tostring(h))
      g:result(5)
      assert.are.equal("pcrun.Future(done)", tostring(f))
    end))

    it("checks its arguments", forked(10, function()
      local p = mkpool(1)
      local f = p:submit(function() return 1 end)
      error_has("pcrun.Future:result: timeout must be", f.result, f, -1)
      error_has("pcrun.Future:result: timeout must be", f.result, f, "1")
      error_has("pcrun.Future:result: timeout must be", f.result, f, 0 / 0)
      error_has("pcrun.Future:error: timeout must be", f.error, f, -1)
      error_has("pcrun.Future:add_done_callback: cb must be a function",
                f.add_done_callback, f, 5)
      error_has("pcrun.Future:result:", f.result, {})
      error_has("pcrun.Future:done:", f.done, 5)
      error_has("pcrun.Future:cancel:", f.cancel)
      local err = error_has("pcrun.Future:add_done_callback:", function()
        f:add_done_callback("x")
      end)
      has(err, "future_spec.lua:")
      assert.are.equal(1, f:result(5))
    end))
  end)

  describe("pcrun.future", function()
    it("is settled by set_result or set_exception", function()
      local f = pcrun.future()
      assert.are.equal(pcrun.Future, getmetatable(f))
      assert.is_false(f:done())
      local seen
      f:add_done_callback(function(g) seen = g end)
      f:set_result(1, nil, "three")
      assert.is_true(f:done())
      assert.are.equal(f, seen)
      local a, b, c = f:result()
      assert.are.same({ 1, nil, "three" }, { a, b, c })
      assert.is_nil(f:error())
      local e = pcrun.future()
      local obj = { code = 7 }
      e:set_exception(obj)
      assert.are.equal(obj, e:error(0))
      local ok, err = pcall(e.result, e)
      assert.is_false(ok)
      assert.are.equal(obj, err)
      -- cancelled while pending, as Python's
      local c = pcrun.future()
      assert.is_true(c:cancel())
      error_has("pcrun.Future:set_result: the future is already cancelled",
                c.set_result, c, 1)
    end)

    it("raises on misuse, naming the method", forked(10, function()
      local f = pcrun.future()
      f:set_result(1)
      error_has("pcrun.Future:set_result: the future is already settled",
                f.set_result, f, 2)
      error_has("pcrun.Future:set_exception: the future is already settled",
                f.set_exception, f, "x")
      error_has("pcrun.Future:set_exception: err must not be nil",
                pcrun.future().set_exception, pcrun.future())
      local p = mkpool(1)
      local g = p:submit(function() return 1 end)
      error_has("pcrun.Future:set_result: only a future made by "
                .. "pcrun.future() can be settled by hand", g.set_result, g, 2)
      assert.are.equal(1, g:result(5))
      -- nothing in flight can ever settle it: an error, not a hang
      local lone = pcrun.future()
      error_has("pcrun.Future:result: timeout", lone.result, lone, 0)
      error_has("nothing can settle this future", lone.result, lone, 5)
    end))

    it("is settled by a pool future's callback while the caller waits",
       forked(20, function()
      local p = mkpool(2)
      local g = p:submit(function() helpers.sleep(0.2) return 21 end)
      local f = pcrun.future()
      g:add_done_callback(function(x) f:set_result(x:result() * 2) end)
      assert.are.equal(42, f:result(10))
      -- mixed with pool futures in wait and as_completed
      local h = pcrun.future()
      local k = p:submit(function() helpers.sleep(0.2) return "k" end)
      k:add_done_callback(function() h:set_exception("h failed") end)
      local done, not_done = pcrun.wait({ h, k }, { timeout = 10 })
      assert.are.equal(2, #done)
      assert.are.equal(0, #not_done)
      assert.are.equal("h failed", h:error())
      local ready = pcrun.future()
      ready:set_result("now")
      local order = {}
      local slow = p:submit(function() helpers.sleep(0.3) return 1 end)
      for x in pcrun.as_completed({ slow, ready }, 10) do
        order[#order + 1] = x
      end
      assert.are.same({ ready, slow }, order)
    end))
  end)

  describe("pcrun.as_completed", function()
    it("drops its reference to each future it has yielded",
       forked(15, function()
      local p = mkpool(2)
      local fs = {}
      for i = 1, 8 do fs[i] = p:submit(function(x) return x end, i) end
      local weak = setmetatable({}, { __mode = "k" })
      local it = pcrun.as_completed(fs)
      fs = nil  -- the caller keeps none: only the iterator could
      for _ = 1, 8 do
        local f = it()
        weak[f] = true
        f = nil  -- luacheck: ignore
        collectgarbage()
        collectgarbage()
        assert.is_nil(next(weak), "a yielded future is still held")
      end
      assert.is_nil(it())
    end))

    it("yields each future once, as they finish", forked(15, function()
      local p = mkpool(2)
      local s1 = p:submit(sleeper(0.05, "s1"))
      local s2 = p:submit(sleeper(0.1, "s2"))
      local long = p:submit(sleeper(0.8, "long"))
      local got = {}
      for f in pcrun.as_completed({ long, s2, s1 }) do
        assert.is_true(f:done())
        got[#got + 1] = f
      end
      assert.are.equal(3, #got)
      set(got)  -- no repeats
      assert.are.equal(long, got[3])
      assert.is_truthy(index_of(got, s1) < index_of(got, long))
      assert.is_truthy(index_of(got, s2) < index_of(got, long))
    end))

    it("yields futures already done first, and failed ones too",
       forked(10, function()
      local p = mkpool(2)
      local done = p:submit(function() return 1 end)
      done:result(5)
      local bad = p:submit(failer("as_completed failure"))
      local slow = p:submit(sleeper(0.3, 2))
      local got = {}
      for f in pcrun.as_completed({ slow, bad, done }) do got[#got + 1] = f end
      assert.are.equal(done, got[1])
      assert.are.equal(3, #got)
      set(got)
      has(bad:error(), "as_completed failure")
    end))

    it("raises 'timeout' when the time runs out", forked(10, function()
      local p = mkpool(2)
      local quick = p:submit(function() return "q" end)
      local slow = p:submit(sleeper(2, "s"))
      quick:result(5)
      local it = pcrun.as_completed({ slow, quick }, 0.3)
      local t0 = helpers.now()
      assert.are.equal(quick, it())
      local ok, err = pcall(it)
      local took = helpers.now() - t0
      assert.is_false(ok)
      has(tostring(err), "pcrun.as_completed: timeout")
      assert.is_true(took >= 0.2 and took < 1.5, ("took %.2fs"):format(took))
      assert.is_false(slow:done())
      p:terminate()
    end))

    it("yields nothing for an empty list", forked(10, function()
      local n = 0
      for _ in pcrun.as_completed({}) do n = n + 1 end
      assert.are.equal(0, n)
      for _ in pcrun.as_completed({}, 0) do n = n + 1 end
      assert.are.equal(0, n)
    end))

    it("yields a future listed twice only once", forked(10, function()
      local p = mkpool(1)
      local f = p:submit(sleeper(0.05, 1))
      local g = p:submit(sleeper(0.05, 2))
      local got = {}
      for x in pcrun.as_completed({ f, g, f }) do got[#got + 1] = x end
      assert.are.equal(2, #got)
      set(got)
    end))

    it("waits on futures of several pools", forked(10, function()
      -- a cannot finish before as_completed has yielded b: the order holds
      -- however late q's worker starts
      local p, q, go = mkpool(1), mkpool(1), pcrun.event()
      local a = p:submit(function() assert(go:wait(8)) return "a" end)
      local b = q:submit(sleeper(0.05, "b"))
      local got = {}
      for f in pcrun.as_completed({ a, b }) do
        got[#got + 1] = f:result()
        go:set()
      end
      assert.are.same({ "b", "a" }, got)
    end))

    it("checks its arguments", function()
      error_has("pcrun.as_completed: futures must be a list",
                pcrun.as_completed, 5)
      error_has("pcrun.as_completed: item 1 is not a future",
                pcrun.as_completed, { {} })
      error_has("pcrun.as_completed: timeout must be", pcrun.as_completed,
                {}, -1)
    end)
  end)

  describe("pcrun.wait", function()
    it("returns when all are done by default", forked(10, function()
      local p = mkpool(2)
      local fs = { p:submit(sleeper(0.1, 1)), p:submit(failer("w")),
                   p:submit(sleeper(0.2, 3)) }
      local done, not_done = pcrun.wait(fs)
      assert.are.same(set(fs), set(done))
      assert.are.same({}, not_done)
      done, not_done = pcrun.wait(fs, { return_when = "ALL_COMPLETED" })
      assert.are.equal(3, #done)
      assert.are.equal(0, #not_done)
    end))

    it("returns at the first completion with FIRST_COMPLETED",
       forked(10, function()
      local p = mkpool(2)
      local fast = p:submit(sleeper(0.05, "fast"))
      local slow = p:submit(sleeper(2, "slow"))
      local t0 = helpers.now()
      local done, not_done = pcrun.wait({ slow, fast },
                                        { return_when = "FIRST_COMPLETED" })
      assert.is_true(helpers.now() - t0 < 1.5)
      assert.are.same({ fast }, done)
      assert.are.same({ slow }, not_done)
      p:terminate()
    end))

    it("returns at the first error with FIRST_EXCEPTION", forked(10, function()
      local p = mkpool(2)
      local ok1 = p:submit(function() return 1 end)
      -- Settled before the wait: on a loaded machine its reply could
      -- otherwise come after bad's, and done would rightly lack it.
      assert.are.equal(1, ok1:result(5))
      local bad = p:submit(failer("first exception"))
      local slow = p:submit(sleeper(5, "slow"))
      local t0 = helpers.now()
      local done, not_done = pcrun.wait({ ok1, bad, slow },
                                        { return_when = "FIRST_EXCEPTION" })
      assert.is_true(helpers.now() - t0 < 4)
      assert.are.same(set({ ok1, bad }), set(done))
      assert.are.same({ slow }, not_done)
      has(bad:error(), "first exception")
      p:terminate()
    end))

    it("waits for all with FIRST_EXCEPTION when none fails",
       forked(10, function()
      local p = mkpool(2)
      local fs = { p:submit(sleeper(0.05, 1)), p:submit(sleeper(0.1, 2)),
                   p:submit(sleeper(0.3, 3)) }
      local done, not_done = pcrun.wait(fs,
                                        { return_when = "FIRST_EXCEPTION" })
      assert.are.equal(3, #done)
      assert.are.equal(0, #not_done)
      for i, f in ipairs(fs) do assert.are.equal(i, f:result(0)) end
    end))

    it("returns what is done when the timeout passes", forked(10, function()
      local p = mkpool(2)
      local quick = p:submit(function() return 1 end)
      local slow = p:submit(sleeper(2, 2))
      quick:result(5)
      local t0 = helpers.now()
      local done, not_done = pcrun.wait({ quick, slow }, { timeout = 0.3 })
      local took = helpers.now() - t0
      assert.is_true(took >= 0.2 and took < 1.5, ("took %.2fs"):format(took))
      assert.are.same({ quick }, done)
      assert.are.same({ slow }, not_done)
      done, not_done = pcrun.wait({ slow },
        { timeout = 0, return_when = "FIRST_COMPLETED" })
      assert.are.same({}, done)
      assert.are.same({ slow }, not_done)
      p:terminate()
    end))

    it("counts cancelled futures as done", forked(10, function()
      local p = mkpool(1)
      local a, b = p:submit(sleeper(0.1)), p:submit(sleeper(0.1))
      local c = p:submit(sleeper(0.1))
      assert.is_true(c:cancel())
      local done, not_done = pcrun.wait({ c }, { timeout = 0 })
      assert.are.same({ c }, done)
      assert.are.same({}, not_done)
      done = pcrun.wait({ a, b, c })
      assert.are.equal(3, #done)
    end))

    it("checks its arguments", function()
      error_has("pcrun.wait: futures must be a list", pcrun.wait, 5)
      error_has("pcrun.wait: item 1 is not a future", pcrun.wait, { 3 })
      error_has("pcrun.wait: opts must be a table", pcrun.wait, {}, 5)
      error_has("pcrun.wait: return_when must be", pcrun.wait, {},
                { return_when = "SOMETIME" })
      error_has("pcrun.wait: timeout must be", pcrun.wait, {},
                { timeout = -1 })
      local done, not_done = pcrun.wait({})
      assert.are.same({}, done)
      assert.are.same({}, not_done)
    end)
  end)
end)
