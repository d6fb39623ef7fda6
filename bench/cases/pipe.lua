-- Pipes: a child sends, the parent receives. Small messages measure the
-- per-message cost (with send/recv Python pickles each bytes object, pcrun
-- sends a string as is; with send_bytes neither side serializes), 64 MiB
-- strings the copy bandwidth. bench/py/pipe.py does the same with
-- multiprocessing.Pipe and a forked Process.
local pcrun = require "pcrun"
local H = require "harness"

local P = {
  rounds = 5,        -- Python runs once a round; see H.measure
  reps = 1,          -- repetitions of each measure per round
  msgs = 300000,     -- messages per repetition
  msg_size = 64,     -- bytes: a 64-byte string
  big_mib = 64,      -- one large message, MiB
  big_count = 8,     -- large messages per repetition
}

-- Child: say ready, wait for go, then send n times. Parent: time from go
-- to the last message received, so neither the fork nor the child's start
-- is counted, and a sender that ran ahead cannot shorten the clock.
-- Returns seconds for the whole transfer.
local function transfer(n, payload, send, recv)
  local a, b = pcrun.pipe()
  local child = pcrun.process(function()
    b:send("ready")
    b:recv()
    for _ = 1, n do b[send](b, payload) end
  end):start()
  assert(a:recv() == "ready")
  collectgarbage("collect")
  a:send("go")
  local t0, last = H.now(), nil
  for _ = 1, n do last = a[recv](a) end
  local dt = H.now() - t0
  assert(#last == #payload, "short message")
  child:join()
  assert(child.exitcode == 0, "sender failed")
  a:close()
  b:close()
  return dt
end

local M = {}

function M.run()
  local small = ("m"):rep(P.msg_size)
  local big = ("b"):rep(P.big_mib * 2 ^ 20)
  local function msg()
    return P.msgs / transfer(P.msgs, small, "send", "recv")
  end
  local function raw()  -- no pickle on Python's side either
    return P.msgs / transfer(P.msgs, small, "send_bytes", "recv_bytes")
  end
  local function bulk()
    local dt = transfer(P.big_count, big, "send_bytes", "recv_bytes")
    return P.big_count * #big / dt / 1e9
  end
  -- Untimed once: memory a process touches for the first time costs far
  -- more than memory reused (page faults; on this VM, the host backing
  -- it), and that is not the pipe's cost.
  msg()
  bulk()
  local m, py = H.measure{ py = "pipe.py", params = P,
                           lua = { msg = msg, raw = raw, big = bulk } }
  local reps = P.rounds * P.reps
  return {
    { measure = ("pipe, %d B string messages"):format(P.msg_size),
      unit = "msg/s", fmt = "rate", reps = reps, pcrun = m.msg,
      vs_name = "Python Pipe send/recv", vs = py.msg_rate, target = 10 },
    { measure = ("pipe, %d B, send_bytes/recv_bytes"):format(P.msg_size),
      unit = "msg/s", fmt = "rate", reps = reps, pcrun = m.raw,
      vs_name = "Python Pipe send_bytes", vs = py.raw_rate },
    { measure = ("pipe, %d MiB, send_bytes/recv_bytes"):format(P.big_mib),
      unit = "GB/s", fmt = "f2", reps = reps, pcrun = m.big,
      vs_name = "Python Pipe send_bytes", vs = py.big_gbps, target = 3 },
  }
end

return M
