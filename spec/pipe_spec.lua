-- pcrun.pipe: two connected endpoints, like Python's multiprocessing.Pipe.
local helpers = require "helpers"
local pcrun = require "pcrun"

local has = helpers.assert_has
local error_has = helpers.assert_error_has
local with_timeout = helpers.with_timeout

local function sleep_forever()
  while true do helpers.sleep(0.05) end
end

-- Every byte value, twice, NULs included.
local ALL_BYTES = (function()
  local t = {}
  for i = 0, 255 do t[#t + 1] = string.char(i) end
  return table.concat(t) .. table.concat(t)
end)()

describe("pcrun.pipe", function()
  after_each(function()
    helpers.assert_no_children()
  end)

  it("returns two connections", function()
    local a, b = pcrun.pipe()
    assert.are.equal(pcrun.Connection, getmetatable(a))
    assert.are.equal(pcrun.Connection, getmetatable(b))
    assert.is_false(a:closed())
    assert.is_false(b:closed())
    has(tostring(a), "pcrun.Connection")
    a:close()
    b:close()
  end)

  it("carries messages both ways on a duplex pipe", function()
    local a, b = pcrun.pipe()
    assert.is_true(a:send("to b"))
    assert.is_true(b:send("to a"))
    assert.are.equal("to b", b:recv(5))
    assert.are.equal("to a", a:recv(5))
    a:close()
    b:close()
  end)

  it("plays ping-pong between two processes", function()
    with_timeout(30, function()
      local a, b = pcrun.pipe()
      local p = pcrun.process(function(conn)
        while true do
          local v = conn:recv()
          if v == "stop" then return end
          conn:send(v + 1)
        end
      end, b):start()
      b:close()
      local v = 0
      for _ = 1, 2000 do
        a:send(v)
        v = a:recv(5)
      end
      assert.are.equal(2000, v)
      a:send("stop")
      assert.is_true(p:join(5))
      assert.are.equal(0, p.exitcode)
      a:close()
    end)
  end)

  it("keeps the order of messages from one sender", function()
    with_timeout(30, function()
      local a, b = pcrun.pipe()
      local p = pcrun.process(function()
        for i = 1, 5000 do
          b:send(i)
          b:send("s" .. i)
        end
      end):start()
      b:close()
      for i = 1, 5000 do
        assert.are.equal(i, a:recv(5))
        assert.are.equal("s" .. i, a:recv(5))
      end
      assert.is_true(p:join(5))
      a:close()
    end)
  end)

  it("delivers 100,000 small messages exactly once and in order", function()
    with_timeout(60, function()
      local a, b = pcrun.pipe()
      local N = 100000
      local p = pcrun.process(function()
        for i = 1, N do b:send_bytes(tostring(i)) end
      end):start()
      b:close()
      local bad
      for i = 1, N do
        local s = a:recv_bytes(5)
        if s ~= tostring(i) then bad = ("message %d was %q"):format(i, s) end
        if bad then break end
      end
      assert.is_nil(bad)
      -- and nothing more than those: end of file comes next
      error_has("end of file", function() a:recv_bytes(5) end)
      assert.is_true(p:join(5))
      a:close()
    end)
  end)

  it("keeps each sender's frames whole when processes share an end",
     function()
    with_timeout(60, function()
      local a, b = pcrun.pipe()
      local ps = {}
      for k = 1, 4 do
        ps[k] = pcrun.process(function()
          for i = 1, 2000 do
            b:send_bytes(k .. ":" .. i .. ":" .. ("x"):rep(i % 300))
          end
        end):start()
      end
      b:close()
      local last = { 0, 0, 0, 0 }
      for _ = 1, 8000 do
        local s = a:recv_bytes(10)
        local k, i, pad = s:match("^(%d):(%d+):(x*)$")
        k, i = tonumber(k), tonumber(i)
        assert.is_number(k)
        assert.are.equal(i % 300, #pad)
        assert.are.equal(last[k] + 1, i)  -- in order per sender
        last[k] = i
      end
      for k = 1, 4 do assert.is_true(ps[k]:join(5)) end
      a:close()
    end)
  end)

  it("lets the first end only receive and the second only send when "
     .. "duplex is false", function()
    local r, w = pcrun.pipe(false)
    assert.is_true(w:send("one way"))
    assert.are.equal("one way", r:recv(5))
    error_has("send: connection is not writable", function() r:send("x") end)
    error_has("send_bytes: connection is not writable",
              function() r:send_bytes("x") end)
    error_has("recv: connection is not readable", function() w:recv(0) end)
    error_has("recv_bytes: connection is not readable",
              function() w:recv_bytes(0) end)
    error_has("poll: connection is not readable", function() w:poll() end)
    r:close()
    w:close()
  end)

  it("carries raw bytes with send_bytes and recv_bytes", function()
    local a, b = pcrun.pipe()
    assert.is_true(a:send_bytes(ALL_BYTES))
    assert.is_true(a:send_bytes(""))
    local s = b:recv_bytes(5)
    assert.are.equal(#ALL_BYTES, #s)
    assert.is_true(s == ALL_BYTES)
    assert.are.equal("", b:recv_bytes(5))
    a:close()
    b:close()
  end)

  it("sends part of a string or an ffi buffer with send_bytes(buf, "
     .. "offset, size)", function()
    local ffi = require "ffi"
    local a, b = pcrun.pipe()
    assert.is_true(b:send_bytes("hello world", 6, 5))
    assert.are.equal("world", a:recv_bytes(5))
    assert.is_true(b:send_bytes("abc", 3, 0))
    assert.are.equal("", a:recv_bytes(5))
    local arr = ffi.new("uint8_t[8]", { 65, 66, 67, 68, 69, 70, 71, 72 })
    b:send_bytes(arr, 2, 3)
    assert.are.equal("CDE", a:recv_bytes(5))
    b:send_bytes(ffi.cast("const char *", arr) + 6, 0, 2, 5)  -- + timeout
    assert.are.equal("GH", a:recv_bytes(5))
    error_has("pcrun.Connection:send_bytes: offset + size (4) is past the "
              .. "end of buf (3 bytes)", b.send_bytes, b, "abc", 1, 3)
    error_has("past the end of buf (8 bytes)", b.send_bytes, b, arr, 8, 1)
    error_has("pcrun.Connection:send_bytes: offset must be a non-negative "
              .. "integer", b.send_bytes, b, "abc", -1, 1)
    error_has("pcrun.Connection:send_bytes: size must be a non-negative "
              .. "integer", b.send_bytes, b, "abc", 0, 1.5)
    error_has("pcrun.Connection:send_bytes: buf must be a string or an ffi "
              .. "pointer or array, got table", b.send_bytes, b, {}, 0, 1)
    error_has("buf must be a string or an ffi pointer or array, got cdata",
              b.send_bytes, b, 1LL, 0, 1)  -- luacheck: ignore
    error_has("buf must be a string or an ffi pointer or array, got cdata",
              b.send_bytes, b, ffi.cast("char *", nil), 0, 1)
    assert.is_false(a:poll())  -- nothing went out for the bad calls
    a:close() b:close()
  end)

  it("receives into an ffi buffer with recv_bytes_into", function()
    local ffi = require "ffi"
    local a, b = pcrun.pipe()
    local buf = ffi.new("uint8_t[16]")
    b:send_bytes("abcdef")
    assert.are.equal(6, a:recv_bytes_into(buf, 16))
    assert.are.equal("abcdef", ffi.string(buf, 6))
    b:send("xy")  -- any message, as its bytes
    assert.are.equal(2, a:recv_bytes_into(buf + 10, 6))  -- at an offset
    assert.are.equal("xy", ffi.string(buf + 10, 2))
    -- too long: nothing is lost, the message comes back whole
    b:send_bytes(("z"):rep(20))
    local n, why, msg = a:recv_bytes_into(buf, 16)
    assert.is_nil(n)
    assert.are.equal("buffer too short", why)
    assert.are.equal(("z"):rep(20), msg)
    assert.are.same({ nil, "timeout" }, { a:recv_bytes_into(buf, 16, 0.05) })
    error_has("pcrun.Connection:recv_bytes_into: size (17) is larger than "
              .. "buf (16 bytes)", a.recv_bytes_into, a, buf, 17)
    error_has("pcrun.Connection:recv_bytes_into: buf must be an ffi pointer "
              .. "or array, got string", a.recv_bytes_into, a, "s", 1)
    error_has("pcrun.Connection:recv_bytes_into: size must be a "
              .. "non-negative integer", a.recv_bytes_into, a, buf)
    a:close() b:close()
  end)

  it("returns a message sent with send_bytes from recv as a string",
     function()
    local a, b = pcrun.pipe()
    a:send_bytes("raw")
    assert.are.equal("raw", b:recv(5))
    a:close()
    b:close()
  end)

  it("carries strings with NUL bytes exactly", function()
    local a, b = pcrun.pipe()
    local cases = { "\0", "a\0b", "\0\0\0end", ("\0"):rep(100000),
                    ALL_BYTES }
    for _, s in ipairs(cases) do a:send(s) end
    for _, s in ipairs(cases) do
      local got = b:recv(5)
      assert.are.equal(#s, #got)
      assert.is_true(got == s)
    end
    a:close()
    b:close()
  end)

  it("carries NUL bytes from a child process", function()
    with_timeout(30, function()
      local a, b = pcrun.pipe()
      local p = pcrun.process(function(conn)
        conn:send("x\0y")
        conn:send_bytes(ALL_BYTES)
      end, b):start()
      b:close()
      assert.is_true(a:recv(5) == "x\0y")
      assert.is_true(a:recv_bytes(5) == ALL_BYTES)
      assert.is_true(p:join(5))
      a:close()
    end)
  end)

  it("carries an empty string", function()
    local a, b = pcrun.pipe()
    a:send("")
    assert.are.equal("", b:recv(5))
    a:close()
    b:close()
  end)

  it("carries numbers exactly", function()
    local a, b = pcrun.pipe()
    local nums = { 0, 1, -1, 0.1, 2^53, -2^-1074, math.huge, -math.huge,
                   1e308 }
    for _, x in ipairs(nums) do a:send(x) end
    for _, x in ipairs(nums) do assert.are.equal(x, b:recv(5)) end
    a:send(0 / 0)
    local nan = b:recv(5)
    assert.is_true(nan ~= nan)
    a:send(-0.0)
    assert.are.equal(-math.huge, 1 / b:recv(5))
    a:close()
    b:close()
  end)

  it("carries booleans and tables", function()
    if not helpers.has_serializer() then
      pending("the serializer cannot encode tables yet")
      return
    end
    local a, b = pcrun.pipe()
    local t = { 1, "two", { three = 3, [4] = { true, false } }, x = "y" }
    a:send(t)
    a:send(true)
    a:send(false)
    assert.are.same(t, b:recv(5))
    assert.are.equal(true, b:recv(5))
    assert.are.equal(false, b:recv(5))
    a:close()
    b:close()
  end)

  it("carries tables to and from a child process", function()
    if not helpers.has_serializer() then
      pending("the serializer cannot encode tables yet")
      return
    end
    with_timeout(30, function()
      local a, b = pcrun.pipe()
      local p = pcrun.process(function(conn)
        local t = conn:recv()
        t.seen = true
        conn:send(t)
      end, b):start()
      b:close()
      a:send({ list = { 1, 2, 3 }, name = "n\0ul" })
      assert.are.same({ list = { 1, 2, 3 }, name = "n\0ul", seen = true },
                      a:recv(5))
      assert.is_true(p:join(5))
      a:close()
    end)
  end)

  it("returns nil, 'timeout' from recv(timeout) when nothing arrives",
     function()
    local a, b = pcrun.pipe()
    local t0 = helpers.now()
    local v, err = a:recv(0.2)
    assert.is_nil(v)
    assert.are.equal("timeout", err)
    assert.is_true(helpers.now() - t0 >= 0.19)
    v, err = a:recv_bytes(0)
    assert.is_nil(v)
    assert.are.equal("timeout", err)
    -- a message after a timeout is still delivered
    b:send("late")
    assert.are.equal("late", a:recv(5))
    a:close()
    b:close()
  end)

  it("returns false from poll(timeout) until a message is ready, then true",
     function()
    local a, b = pcrun.pipe()
    assert.is_false(a:poll())
    assert.is_false(a:poll(0.1))
    b:send("ready")
    assert.is_true(a:poll(5))
    assert.is_true(a:poll())       -- poll does not consume the message
    assert.are.equal("ready", a:recv(0))
    assert.is_false(a:poll())
    a:close()
    b:close()
  end)

  it("wakes a poll(timeout) waiting in another process", function()
    with_timeout(30, function()
      local a, b = pcrun.pipe()
      local p = pcrun.process(function()
        local before = a:poll(0.05)
        a:send("go")
        local ok = a:poll(10)
        os.exit((not before and ok) and 0 or 1)
      end):start()
      assert.are.equal("go", b:recv(5))
      helpers.sleep(0.1)  -- most likely asleep in poll by now
      b:send("here")
      assert.is_true(p:join(15))
      assert.are.equal(0, p.exitcode)
      a:close()
      b:close()
    end)
  end)

  it("returns true from poll once the peer has closed", function()
    local a, b = pcrun.pipe()
    b:close()
    assert.is_true(a:poll(5))
    a:close()
  end)

  it("raises 'end of file' from recv once the peer is closed", function()
    local a, b = pcrun.pipe()
    b:close()
    error_has("recv: end of file", function() a:recv() end)
    error_has("recv_bytes: end of file", function() a:recv_bytes() end)
    a:close()
  end)

  it("delivers what was sent before the close, then end of file",
     function()
    local a, b = pcrun.pipe()
    b:send("one")
    b:send_bytes("two")
    b:send(3)
    b:close()
    assert.are.equal("one", a:recv(5))
    assert.are.equal("two", a:recv(5))
    assert.are.equal(3, a:recv(5))
    error_has("end of file", function() a:recv(5) end)
    a:close()
  end)

  it("raises 'end of file' once a peer process has exited", function()
    with_timeout(30, function()
      local a, b = pcrun.pipe()
      local p = pcrun.process(function()
        for i = 1, 3 do b:send(i) end
      end):start()
      b:close()  -- the child's copy is now the last one
      for i = 1, 3 do assert.are.equal(i, a:recv(5)) end
      error_has("recv: end of file", function() a:recv() end)
      assert.is_true(p:join(5))
      a:close()
    end)
  end)

  it("raises 'end of file' once a peer process was killed with SIGKILL",
     function()
    with_timeout(30, function()
      local a, b = pcrun.pipe()
      local p = pcrun.process(function()
        b:send("up")
        sleep_forever()
      end):start()
      b:close()
      assert.are.equal("up", a:recv(5))
      p:kill()
      error_has("recv: end of file", function() a:recv() end)
      assert.is_true(p:join(5))
      assert.are.equal(-9, p.exitcode)
      a:close()
    end)
  end)

  it("does not report end of file while this process holds the peer end",
     function()
    local a, b = pcrun.pipe()
    local p = pcrun.process(function() end):start()
    assert.is_true(p:join(5))  -- the child's copy of b is gone, ours is not
    local v, err = a:recv(0.2)
    assert.is_nil(v)
    assert.are.equal("timeout", err)
    a:close()
    b:close()
  end)

  it("raises 'peer closed the connection' from send once the peer is "
     .. "closed", function()
    local a, b = pcrun.pipe()
    a:close()
    error_has("send: peer closed the connection",
              function() b:send("lost") end)
    error_has("send_bytes: peer closed the connection",
              function() b:send_bytes("lost") end)
    b:close()
  end)

  it("raises 'attempt to use a closed connection' after close", function()
    local a, b = pcrun.pipe()
    a:close()
    assert.is_true(a:closed())
    assert.is_false(b:closed())
    for _, call in ipairs {
      function() a:send("x") end,
      function() a:send_bytes("x") end,
      function() a:recv(0) end,
      function() a:recv_bytes(0) end,
      function() a:poll() end,
      function() a:fileno() end,
    } do
      error_has("attempt to use a closed connection", call)
    end
    a:close()  -- closing again is harmless
    assert.is_true(a:closed())
    has(tostring(a), "closed")
    b:close()
  end)

  it("round-trips a 100 MB string exactly", function()
    with_timeout(120, function()
      local big = ("0123456789abcdef"):rep(100 * 2^20 / 16 - 1) .. "\0end"
                  .. ("z"):rep(12)
      assert.are.equal(100 * 2^20, #big)
      local a, b = pcrun.pipe()
      local p = pcrun.process(function(conn)
        conn:send(conn:recv())
      end, b):start()
      b:close()
      a:send(big)
      local back = a:recv(60)
      assert.are.equal(#big, #back)
      assert.is_true(back == big)
      assert.is_true(p:join(10))
      assert.are.equal(0, p.exitcode)
      a:close()
    end)
  end)

  it("passes messages larger than the buffer", function()
    with_timeout(60, function()
      local a, b = pcrun.pipe(true, { buffer = 4096 })
      local sizes = { 4095, 4096, 5000, 100000, 300000 }
      local p = pcrun.process(function(conn)
        for _, n in ipairs(sizes) do
          conn:send_bytes(("%07d"):format(n) .. ("m"):rep(n - 7))
        end
      end, b):start()
      b:close()
      for _, n in ipairs(sizes) do
        local s = a:recv_bytes(10)
        assert.are.equal(n, #s)
        assert.are.equal(("%07d"):format(n), s:sub(1, 7))
      end
      assert.is_true(p:join(5))
      a:close()
    end)
  end)

  it("returns nil, 'timeout' from send(v, timeout) when the buffer stays full",
     function()
    with_timeout(5, function()
      local a, b = pcrun.pipe(true, { buffer = 4096 })
      local msg = ("y"):rep(100)
      local ok, err
      for _ = 1, 1000 do
        ok, err = a:send(msg, 0.05)
        if not ok then break end
      end
      assert.is_nil(ok)
      assert.are.equal("timeout", err)
      -- everything that was accepted is received whole
      local n = 0
      while b:poll() do
        assert.are.equal(msg, b:recv(1))
        n = n + 1
      end
      assert.is_true(n > 0)
      a:close()
      b:close()
    end)
  end)

  it("works in a child that got a connection as a process argument",
     function()
    with_timeout(30, function()
      local a, b = pcrun.pipe()
      local p = pcrun.process(function(conn, greeting)
        conn:send(greeting .. ", " .. conn:recv())
      end, b, "hello"):start()
      b:close()
      a:send("child")
      assert.are.equal("hello, child", a:recv(5))
      assert.is_true(p:join(5))
      assert.are.equal(0, p.exitcode)
      a:close()
    end)
  end)

  it("delivers a connection its sender closed right after sending it",
     function()
    with_timeout(30, function()
      local a, b = pcrun.pipe()
      -- the child is forked before r, w exist: it can only copy w's
      -- socket from this process, which has closed its own w by then
      local p = pcrun.process(function()
        local w = a:recv()
        w:send("through w")
        w:close()
        a:send("done")
      end):start()
      local r, w = pcrun.pipe()
      b:send(w)
      w:close()
      assert.are.equal("through w", r:recv(10))
      assert.are.equal("done", b:recv(10))
      -- every copy of w is closed: end of file, not a hang
      error_has("recv: end of file: peer closed", r.recv, r, 10)
      assert.is_true(p:join(5))
      assert.are.equal(0, p.exitcode)
      a:close() b:close() r:close()
    end)
  end)

  it("says why a connection cannot be received, not blaming inheritance",
     function()
    with_timeout(30, function()
      local a, b = pcrun.pipe()
      local p = pcrun.process(function()
        local s = a:recv()
        local ok, err = pcall(pcrun.decode, s, { trusted = true })
        a:send(ok and "decoded" or err)
      end):start()
      local r, w = pcrun.pipe()
      local s = pcrun.encode(w)  -- no message: nothing keeps w's socket
      w:close()
      b:send(s)
      local err = b:recv(10)
      has(err, "pcrun.Connection: cannot receive it from process "
          .. pcrun.getpid(), "no longer holds its socket")
      assert.is_nil(err:find("inherit", 1, true), err)
      assert.is_true(p:join(5))
      a:close() b:close() r:close()
    end)
  end)

  it("raises errors naming pcrun.pipe for bad arguments", function()
    local err = error_has("pcrun.pipe: duplex must be a boolean, got number",
                          function() pcrun.pipe(1) end)
    has(err, "pipe_spec.lua:")  -- blamed on the caller
    error_has("pcrun.pipe: duplex must be a boolean, got string",
              function() pcrun.pipe("false") end)
    error_has("pcrun.pipe: opts must be a table",
              function() pcrun.pipe(true, 4096) end)
    for _, size in ipairs { 10, 4095, 4096.5, 2^30 + 1 } do
      error_has("pcrun.pipe: buffer must be an integer from 4096 to 2^30",
                function() pcrun.pipe(true, { buffer = size }) end)
    end
    for _, size in ipairs { "4096", 0 / 0 } do
      error_has("pcrun.pipe: buffer must be a number, got ",
                function() pcrun.pipe(true, { buffer = size }) end)
    end
  end)

  it("raises errors naming the method for bad arguments", function()
    local a, b = pcrun.pipe()
    error_has("bad argument #1 to 'send' (value expected)",
              function() a:send() end)
    error_has("bad argument #1 to 'send_bytes' (string expected, got table)",
              function() a:send_bytes({}) end)
    error_has("bad argument #1 to 'recv' (number expected, got string)",
              function() a:recv("soon") end)
    error_has("bad argument #1 to 'recv_bytes' (number expected, got string)",
              function() a:recv_bytes("soon") end)
    error_has("bad argument #1 to 'poll' (number expected, got string)",
              function() a:poll("soon") end)
    error_has("bad argument #2 to 'send' (number expected, got string)",
              function() a:send("x", "soon") end)
    error_has("pcrun.Connection expected, got string",
              function() a.send("x", "y") end)
    a:close()
    b:close()
  end)

  it("raises an error naming the message for a value that cannot cross",
     function()
    if not helpers.has_serializer() then
      pending("the serializer cannot encode tables yet")
      return
    end
    local a, b = pcrun.pipe()
    error_has("cannot send a coroutine",
              function() a:send({ co = coroutine.create(print) }) end)
    -- nothing was sent
    assert.is_false(b:poll())
    a:close()
    b:close()
  end)
end)
