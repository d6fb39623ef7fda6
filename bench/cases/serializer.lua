-- Serializer: encode + decode of 10,000 records, against LuaJIT's
-- string.buffer (same process, interleaved) and Python's pickle.
-- The GC runs as in real use; each repetition starts after a full collect.
local pcrun = require "pcrun"
local buffer = require "string.buffer"
local H = require "harness"

local P = {
  records = 10000,
  passes = 10,   -- passes over the records per repetition (~0.1 s each)
  rounds = 7,    -- Python runs once a round; see H.measure
  reps = 1,      -- repetitions of each measure per round
}

-- {id=int, x=float, name=20 chars, list={10 ints}, nested={a={1,2}, b="xy"}};
-- bench/py/serializer.py builds the same values.
local function records(n)
  local t = {}
  for i = 1, n do
    local list = {}
    for k = 1, 10 do list[k] = i * 10 + k end
    t[i] = { id = i, x = i * 0.37 + 0.5, name = ("rec-%016d"):format(i),
             list = list, nested = { a = { 1, 2 }, b = "xy" } }
  end
  return t
end

-- Each record encoded and decoded on its own: the shape of a task's
-- arguments or a queue message. Returns records/s. Summing the ids keeps
-- the decoded values alive and checks them.
local function per_record(encode, decode, recs)
  collectgarbage("collect")
  local sum, t0 = 0, H.now()
  for _ = 1, P.passes do
    for i = 1, #recs do sum = sum + decode(encode(recs[i])).id end
  end
  local dt = H.now() - t0
  assert(sum == P.passes * #recs * (#recs + 1) / 2, "wrong ids decoded")
  return P.passes * #recs / dt
end

-- The whole list as one value: the shape of a big map argument.
local function whole(encode, decode, recs)
  collectgarbage("collect")
  local t0 = H.now()
  for _ = 1, P.passes do
    assert(#decode(encode(recs)) == #recs)
  end
  return P.passes * #recs / (H.now() - t0)
end

-- Mean encoded bytes per record, and a round-trip check.
local function bytes_per_record(encode, decode, recs)
  local total = 0
  for i = 1, #recs do
    local s = encode(recs[i])
    total = total + #s
    if i == 1 then assert(H.same(decode(s), recs[1]), "round trip differs") end
  end
  return total / #recs
end

local function mbps(rate, bytes)
  if type(rate) ~= "number" or type(bytes) ~= "number" then return rate end
  return rate * bytes / 1e6
end

local M = {}

function M.run()
  local recs = records(P.records)
  local pe, pd = pcrun.encode, pcrun.decode
  local be, bd = buffer.encode, buffer.decode
  local size = H.measure{ params = { reps = 1 }, lua = {
    size_pcrun = function() return bytes_per_record(pe, pd, recs) end,
    size_buffer = function() return bytes_per_record(be, bd, recs) end,
  } }
  local m, py = H.measure{ py = "serializer.py", params = P, lua = {
    rec_pcrun = function() return per_record(pe, pd, recs) end,
    rec_buffer = function() return per_record(be, bd, recs) end,
    list_pcrun = function() return whole(pe, pd, recs) end,
    list_buffer = function() return whole(be, bd, recs) end,
  } }
  local function row(measure, unit, fmt, pc, vs_name, vs, extra)
    local r = { measure = measure, unit = unit, fmt = fmt,
                reps = P.rounds * P.reps,
                pcrun = pc, vs_name = vs_name, vs = vs }
    for k, v in pairs(extra or {}) do r[k] = v end
    return r
  end
  local SB, PK = "LuaJIT string.buffer", "Python pickle"
  local per = "serializer enc+dec, per record"
  return {
    row(per .. " (headline)", "records/s", "rate", m.rec_pcrun, SB,
        m.rec_buffer, { target = 0.7 }),
    row(per, "MB/s", "f1", mbps(m.rec_pcrun, size.size_pcrun), SB,
        mbps(m.rec_buffer, size.size_buffer), { noratio = true }),
    row(per, "records/s", "rate", m.rec_pcrun, PK, py.rec_rate),
    row(per, "MB/s", "f1", mbps(m.rec_pcrun, size.size_pcrun), PK,
        mbps(py.rec_rate, py.bytes_per_record), { noratio = true }),
    row("serializer enc+dec, whole list", "records/s", "rate", m.list_pcrun,
        SB, m.list_buffer),
    row("serializer enc+dec, whole list", "records/s", "rate", m.list_pcrun,
        PK, py.list_rate),
    row("encoded size of one record", "bytes", "f1", size.size_pcrun, SB,
        size.size_buffer, { reps = 1, noratio = true }),
    row("encoded size of one record", "bytes", "f1", size.size_pcrun, PK,
        py.bytes_per_record, { reps = 1, noratio = true }),
  }
end

return M
