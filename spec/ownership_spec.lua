-- Ownership across fork (issue 9): every arena object has one owner at
-- every moment; a forked copy never frees its parent's objects; arena
-- pressure runs the collector; timeouts hold whatever the size;
-- PCRUN_ARENA is parsed strictly. Each case runs in a CLI process of its
-- own (its own arena) and reports the arena's use at the end.
local helpers = require "helpers"

local has = helpers.assert_has
local MiB = 2^20

local function run(src, env, timeout)
  return helpers.run_cli({ "-e", src }, nil,
                         { env = env or {}, timeout = timeout or 60 })
end

-- Run body (Lua source for one round; it sees pcrun and round) n times
-- in a CLI process of its own. After each round and a full collection
-- the arena must hold what it held at the start: any other figure is a
-- leak, reported with its round.
local function leakfree(n, body)
  local r = run([[
    local pcrun = require "pcrun"
    collectgarbage()
    local base = pcrun.arena().used
    local leaks = {}
    local function once(round)
]] .. body .. [[
    end
    for round = 1, ]] .. n .. [[ do
      once(round)
      collectgarbage() collectgarbage()
      local x, y = pcrun.pipe()  -- a pipe operation sweeps lent sockets
      x:send(1) y:recv() x:close() y:close()
      local left = pcrun.arena().used - base
      if left ~= 0 then leaks[#leaks + 1] = round .. ":" .. left end
    end
    print("leaks", table.concat(leaks, " "))
  ]], nil, 120)
  assert.are.equal(0, r.status, r.stderr)
  assert.are.equal("leaks\t\n", r.stdout)
end

describe("ownership", function()
  after_each(function()
    helpers.assert_no_children()
  end)

  -- Case 1: workers forked while an older pool is garbage inherit its
  -- finalizer; collecting it there freed the parent's block (abort 134).
  it("lets a worker collect a pool it inherited without freeing it",
     function()
    local r = run([[
      local pcrun = require "pcrun"
      local a = pcrun.pool(1); a = nil
      local b = pcrun.pool(1)
      print(b:apply(function() collectgarbage() collectgarbage() return 1 end))
      collectgarbage()
      b:close() b:join() b = nil
      collectgarbage() collectgarbage()
      print("survived", pcrun.arena().used)
    ]])
    assert.are.equal(0, r.status, r.stderr)
    assert.are.equal("1\nsurvived\t0\n", r.stdout)
  end)

  it("survives pools that are mapped and left to the GC", function()
    local r = run([[
      local pcrun = require "pcrun"
      local function f()
        local p = pcrun.pool(2)
        return p:map(function(x) collectgarbage() return x + 1 end,
                     { 1, 2, 3, 4 })[4]
      end
      local s = 0
      for i = 1, 40 do s = s + f() end
      collectgarbage() collectgarbage()
      print(s, pcrun.arena().used)
    ]], nil, 120)
    assert.are.equal(0, r.status, r.stderr)
    assert.are.equal("200\t0\n", r.stdout)
  end)

  -- Case 5: garbage handles used to exhaust the arena.
  for _, case in ipairs {
    { "pipes", "local a, b = pcrun.pipe()" },
    { "8 MB arrays", "local a = pcrun.array('double', 2^20)" },
    { "queues", "local q = pcrun.queue() q:put(('x'):rep(1e6))" },
  } do
    it("collects garbage " .. case[1] .. " when the arena is full",
       function()
      local r = run(([[
        local pcrun = require "pcrun"
        for i = 1, 300 do %s end
        collectgarbage() collectgarbage()
        print("used", pcrun.arena().used)
      ]]):format(case[2]), { PCRUN_ARENA = "256M" })
      assert.are.equal(0, r.status, r.stderr)
      assert.are.equal("used\t0\n", r.stdout)
    end)
  end

  it("names the arena's size and PCRUN_ARENA when it is really full",
     function()
    local r = run([[
      local pcrun = require "pcrun"
      local keep = {}
      local ok, err = pcall(function()
        for i = 1, 100 do keep[i] = pcrun.array("double", 2^20) end
      end)
      print(err)
    ]], { PCRUN_ARENA = "64M" })
    assert.are.equal(0, r.status, r.stderr)
    has(r.stdout, "pcrun.array: out of shared arena space (the arena is "
        .. "64 MiB; raise PCRUN_ARENA, e.g. PCRUN_ARENA=128M)")
  end)

  -- Case 6: PCRUN_ARENA is <n>[K|M|G] from 1M to 1024G, else pcrun stops.
  it("refuses a PCRUN_ARENA it cannot read, naming it", function()
    for _, v in ipairs { "abc", "0", "-1G", "64T", "nan", "inf", "512K",
                         "2048G", "64MB", " 64M", "1.5G" } do
      local r = run("print('ran')", { PCRUN_ARENA = v })
      assert.are.equal(1, r.status, v)
      assert.are.equal("", r.stdout, v)
      has(r.stderr, "PCRUN_ARENA='" .. v .. "'", "<n>[K|M|G]",
          "from 1M to 1024G")
    end
    for _, c in ipairs { { "1M", 2 * MiB }, { "8m", 8 * MiB },
                         { "1024G", 2^40 } } do
      local r = run("print(require('pcrun').arena().size)",
                    { PCRUN_ARENA = c[1] })
      assert.are.equal(0, r.status, r.stderr)
      assert.are.equal(("%d\n"):format(c[2]), r.stdout)
    end
  end)

  it("runs a pool in an 8M arena", function()
    local r = run([[
      local pcrun = require "pcrun"
      local p = pcrun.pool(2)
      local res = p:map(function(x) return x * 2 end, { 1, 2, 3 })
      p:close() p:join()
      p = nil collectgarbage() collectgarbage()
      print(res[3], pcrun.arena().used)
    ]], { PCRUN_ARENA = "8M" })
    assert.are.equal(0, r.status, r.stderr)
    assert.are.equal("6\t0\n", r.stdout)
  end)

  -- Case 4: a send's timeout held only until the message started to
  -- stream through the ring; it must hold whatever the size and leave
  -- nothing half-sent.
  it("times out a large send to a reader that does not read", function()
    local r = run([[
      local pcrun = require "pcrun"
      local now = require("pcrun.core").now
      local a, b = pcrun.pipe()
      local big = ("y"):rep(100 * 2^20)
      local t0 = now()
      print(a:send(big, 1))
      local dt = now() - t0
      print("bounded", dt >= 0.95 and dt < 1.5, dt)
      print(b:recv(0.2))           -- the aborted frame is dropped
      local p = pcrun.process(function() b:send(#b:recv()) end):start()
      assert(a:send(big, 30))      -- now a reader reads: it goes through
      print("got", a:recv(30))
      assert(p:join(10))
      a:close() b:close() big = nil
      collectgarbage() collectgarbage()
      print("used", pcrun.arena().used)
    ]], { PCRUN_ARENA = "64M" })
    assert.are.equal(0, r.status, r.stderr)
    has(r.stdout, "nil\ttimeout\nbounded\ttrue", "nil\ttimeout\n",
        ("got\t%d\n"):format(100 * MiB), "used\t0\n")
  end)

  it("times out the sixteenth of sixteen 50 MB sends nobody reads",
     function()
    local r = run([[
      local pcrun = require "pcrun"
      local now = require("pcrun.core").now
      local a, b = pcrun.pipe()
      local s = ("x"):rep(50 * 2^20)
      local out = {}
      for i = 1, 16 do
        local t0 = now()
        local ok, why = a:send(s, 2)
        if not ok then
          out[#out + 1] = ("%d %s %s"):format(i, why, now() - t0 < 2.5)
        end
      end
      print(table.concat(out, ","))
      a:close() b:close()
      collectgarbage() collectgarbage()
      print("used", pcrun.arena().used)
    ]], nil, 90)
    assert.are.equal(0, r.status, r.stderr)
    has(r.stdout, "16 timeout true", "used\t0\n")
  end)

  -- Case 2: a handle inside a message that never arrives.
  it("drops the handles of a message that was never sent or never read",
     function()
    local r = run([[
      local pcrun = require "pcrun"
      collectgarbage()
      local base = pcrun.arena().used
      local a, b = pcrun.pipe()
      local c, d = pcrun.pipe()
      for i = 1, 5 do  -- the encode raises after taking c's reference
        assert(not pcall(a.send, a, { c, coroutine.create(print) }))
      end
      local q = pcrun.queue(1)
      q:put(1)
      for i = 1, 5 do assert(q:put({ c }, 0.01) == nil) end  -- timed out
      local q2 = pcrun.queue()
      q2:put(("x"):rep(1e6))
      a:send({ q2, d })  -- never read
      q2 = nil
      a:close() b:close() c:close() d:close() q = nil
      collectgarbage() collectgarbage()
      print("used", pcrun.arena().used - base)
    ]])
    assert.are.equal(0, r.status, r.stderr)
    assert.are.equal("used\t0\n", r.stdout)
  end)

  -- Case 3: a sender killed while it copies a large message in.
  it("frees the block of a large send whose sender was killed", function()
    local r = run([[
      local pcrun = require "pcrun"
      local now = require("pcrun.core").now
      collectgarbage()
      local base = pcrun.arena().used
      local big = ("z"):rep(200 * 2^20)
      for round = 1, 3 do
        local a, b = pcrun.pipe()
        local p = pcrun.process(function() b:send(big) end):start()
        local t = now() + 0.03
        while now() < t do end
        p:kill()
        p:join(5)
        a:close() b:close() p = nil
        collectgarbage() collectgarbage()
        print(round, pcrun.arena().used - base)
      end
    ]], nil, 90)
    assert.are.equal(0, r.status, r.stderr)
    assert.are.equal("1\t0\n2\t0\n3\t0\n", r.stdout)
  end)

  -- Case 7: what a child killed by a signal owned (handles it made or
  -- received, messages still in its pipes) is dropped when it is reaped.
  it("drops what a killed child owned when it is reaped", function()
    local r = run([[
      local pcrun = require "pcrun"
      collectgarbage()
      local base = pcrun.arena().used
      for round = 1, 3 do
        local a, b = pcrun.pipe()
        local q = pcrun.queue()
        local p = pcrun.process(function()
          local keep = {}
          for k = 1, 20 do
            local c, d = pcrun.pipe()
            keep[k] = { c, d, pcrun.queue(), pcrun.lock() }
            b:send({ c })
            q:put({ d })
          end
          b:send("done")
          b:recv()
        end):start()
        repeat local m = a:recv(5) until m == "done"
        p:kill()
        p:join(5)
        a:close() b:close() q = nil
        collectgarbage() collectgarbage()
        print(round, pcrun.arena().used - base)
      end
    ]], nil, 60)
    assert.are.equal(0, r.status, r.stderr)
    assert.are.equal("1\t0\n2\t0\n3\t0\n", r.stdout)
  end)
  -- A message's references are its sender's until the frame is published:
  -- a sender killed while its send or put waits for room (after encoding)
  -- left the references the message took to nobody.
  it("drops the handles of a message whose sender was killed before it "
     .. "was sent", function()
    local r = run([[
      local pcrun = require "pcrun"
      collectgarbage()
      local base = pcrun.arena().used
      for round = 1, 2 do
        local a, b = pcrun.pipe(true, { buffer = 4096 })
        local q, ready = pcrun.queue(1), pcrun.queue()
        local p = pcrun.process(function()
          local c, d = pcrun.pipe()
          b:send(("x"):rep(4000))  -- the ring is full from here
          q:put("x")               -- and so is the queue
          ready:put(true)
          if round == 1 then b:send({ c }) else q:put({ d }) end
        end):start()
        ready:get(5)
        pcrun.sleep(0.3)           -- blocked, its message encoded
        p:kill()
        p:join(5)
        a:close() b:close() q = nil ready = nil
        collectgarbage() collectgarbage()
        print(round, pcrun.arena().used - base)
      end
    ]], nil, 60)
    assert.are.equal(0, r.status, r.stderr)
    assert.are.equal("1\t0\n2\t0\n", r.stdout)
  end)

  -- A frame takes over its handles and its large block with the store
  -- that publishes it, and a receiver records them with the store that
  -- consumes it (one journal commit each): a sender or receiver killed
  -- anywhere in a loop of such messages leaves each of them to the frame
  -- or to its reaper, never to nobody.
  it("frees what children killed sending and receiving handles left",
     function()
    leakfree(60, [[
      local big = ("b"):rep(300000)  -- over both block thresholds
      local a, b = pcrun.pipe()
      local q = pcrun.queue()
      local ready = pcrun.queue()
      local sender = pcrun.process(function()
        ready:put(true)
        while true do
          b:send({ pcrun.lock(), big })
          q:put({ pcrun.queue(), big })
        end
      end):start()
      local receiver = pcrun.process(function()
        ready:put(true)
        while true do a:recv() q:get() end
      end):start()
      ready:get(5) ready:get(5)
      pcrun.sleep(0.005 + 0.03 * math.random())
      if round % 2 == 0 then sender:kill() receiver:kill()
      else receiver:kill() sender:kill() end
      sender:join(5) receiver:join(5)
      a:close() b:close()
    ]])
  end)

  -- An arena object is its creator's from its allocation on: a child
  -- killed anywhere in a create/close loop (a ring allocated but not yet
  -- in a handle, a queue's segment being linked, an object being freed)
  -- left it to nobody (about 2 MiB a kill before).
  it("frees what a child killed in a create/close loop was making",
     function()
    leakfree(120, [[
      local ready = pcrun.queue()
      local p = pcrun.process(function()
        ready:put(true)
        while true do
          local a, b = pcrun.pipe()
          local q = pcrun.queue()
          q:put(("x"):rep(20000))  -- a second segment, linked
          local l = pcrun.lock()
          local arr = pcrun.array("double", 1000)
          a:close() b:close()
          q = nil l = nil arr = nil
          if math.random() < 0.2 then collectgarbage() end
        end
      end):start()
      ready:get(5)
      pcrun.sleep(0.002 + 0.02 * math.random())
      p:kill()
      p:join(5)
    ]])
  end)

  -- Case 7, the receiver's side: a frame taken is the receiver's (its
  -- block and the references it carries) until decoded; a receiver killed
  -- between taking and decoding it stranded them (2 MiB a round before).
  it("drops what a receiver killed while decoding had taken", function()
    leakfree(30, [[
      local big = ("r"):rep(2^20)
      local a, b = pcrun.pipe()
      local q = pcrun.queue()
      local p = pcrun.process(function()
        while true do
          local m = b:recv()
          local v = q:get()
        end
      end):start()
      for k = 1, 30 do
        local c, d = pcrun.pipe()
        if not a:send({ c, big, k }, 1) then break end
        q:put({ d, pcrun.lock(), big })
        c:close() d:close()
      end
      pcrun.sleep(0.001 * math.random(0, 20))
      p:kill()
      p:join(5)
      a:close() b:close()
    ]])
  end)

  -- A message decode that raised left "inside a message" set: a later
  -- decode of a handle outside a message adopted a reference nobody took.
  it("decodes a handle outside a message as such after a failed decode",
     function()
    local r = run([[
      local pcrun = require "pcrun"
      local a, b = pcrun.pipe()
      local p = pcrun.process(function()
        local mt = {}
        pcrun.register_type("OnlyHere", mt)
        b:send(setmetatable({}, mt))
      end):start()
      print(pcall(a.recv, a, 5))
      p:join(5)
      local q = pcrun.queue()
      local mt = getmetatable(q)
      print(pcall(mt.__deserialize, mt.__serialize(q)))
      print(pcrun.decode(pcrun.encode(q), { trusted = true }) == q)
    ]])
    assert.are.equal(0, r.status, r.stderr)
    assert.are.equal("false\tpcrun.decode: unknown type 'OnlyHere' "
      .. "(register it with pcrun.register_type)\n"
      .. "false\tpcrun.decode: a shared object in untrusted input "
      .. "(decode with { trusted = true })\ntrue\n", r.stdout)
  end)

  -- "Inside a message" was a process global: an encode or decode nested
  -- in a hook that raised left it cleared for the rest of the outer
  -- message, so a handle after it crossed without the message's
  -- reference (freed early, then twice) or was refused.
  it("keeps a message's handles owned across an encode raising in a hook",
     function()
    local r = run([[
      local pcrun = require "pcrun"
      local base = pcrun.arena().used
      local W = {}
      W.__serialize = function()
        assert(not pcall(pcrun.encode, coroutine.create(print)))
        local other = pcrun.queue()  -- encoded outside a message
        local s = pcrun.encode({ other })
        other:close()
        return #s
      end
      W.__deserialize = function(n) return setmetatable({ n = n }, W) end
      pcrun.register_type("NestedEnc", W)
      local q, box = pcrun.queue(), pcrun.queue()
      for i = 1, 20 do
        box:put({ setmetatable({}, W), q })
        local got = box:get(5)
        got[2]:put(i)
        got = nil
        collectgarbage() collectgarbage()
        assert(q:get(5) == i)
      end
      q:put("last")
      print(q:get(5))
      q:close() box:close() q, box = nil, nil
      collectgarbage() collectgarbage()
      print("used", pcrun.arena().used - base)
    ]])
    assert.are.equal(0, r.status, r.stderr)
    assert.are.equal("last\nused\t0\n", r.stdout)
  end)

  it("decodes a message's handles as such after a decode raising in a hook",
     function()
    local r = run([[
      local pcrun = require "pcrun"
      local base = pcrun.arena().used
      local W = {}
      local held
      W.__serialize = function() return pcrun.encode(held) end
      W.__deserialize = function(s)
        assert(not pcall(pcrun.decode, "junk"))
        local t = pcrun.decode(s, { trusted = true })  -- outside a message
        t[1]:put("inner")
        return setmetatable({ t = t }, W)
      end
      pcrun.register_type("NestedDec", W)
      local q, box = pcrun.queue(), pcrun.queue()
      held = { pcrun.queue() }
      for i = 1, 20 do
        box:put({ setmetatable({}, W), q })
        local got = box:get(5)
        got[2]:put(i)
        assert(got[1].t[1]:get(5) == "inner")
        got = nil
        collectgarbage() collectgarbage()
        assert(q:get(5) == i)
      end
      print(q:get(0.01))
      held[1]:close() q:close() box:close() held, q, box = nil, nil, nil
      collectgarbage() collectgarbage()
      print("used", pcrun.arena().used - base)
    ]])
    assert.are.equal(0, r.status, r.stderr)
    assert.are.equal("nil\ttimeout\nused\t0\n", r.stdout)
  end)

  -- The message transaction was one per process: a hook that sent while
  -- a message was encoded rolled back the references that message had
  -- taken, and its frame went without them (freed early, then twice).
  it("keeps an outer message's handles when a hook sends a message",
     function()
    local r = run([[
      local pcrun = require "pcrun"
      local base = pcrun.arena().used
      local side, held = pcrun.queue(), pcrun.queue()
      local W = {}
      W.__serialize = function()
        side:put({ held })  -- a message of its own, inside this one
        return 1
      end
      W.__deserialize = function() return setmetatable({}, W) end
      pcrun.register_type("SendsInHook", W)
      local q, box = pcrun.queue(), pcrun.queue()
      for i = 1, 20 do
        box:put({ q, setmetatable({}, W) })
        local got = box:get(5)
        got[1]:put(i)
        local inner = side:get(5)
        inner[1]:put(-i)
        got, inner = nil, nil
        collectgarbage() collectgarbage()
        assert(q:get(5) == i and held:get(5) == -i)
      end
      q:put("last")
      print(q:get(5))
      q:close() box:close() side:close() held:close()
      q, box, side, held = nil, nil, nil, nil
      collectgarbage() collectgarbage()
      print("used", pcrun.arena().used - base)
    ]])
    assert.are.equal(0, r.status, r.stderr)
    assert.are.equal("last\nused\t0\n", r.stdout)
  end)
end)
