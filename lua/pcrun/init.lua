-- pcrun: parallel compute for LuaJIT. `require "pcrun"` returns this
-- table; the work happens in the C core (pcrun.core), this layer checks
-- arguments and shapes results.
local core = require "pcrun.core"
local process = require "pcrun.process"
local options = require "pcrun.opts"

local M = {
  _VERSION = "pcrun " .. core.version,
  version = core.version,
}

--- Number of CPUs this process may run on (honours the affinity mask).
function M.cpu_count()
  return core.cpu_count()
end

--- Serialize any value that can cross a process boundary to a string.
M.encode = core.encode

--- Rebuild a value from pcrun.encode's output. Functions (bytecode) are
-- refused unless opts.trusted is true: LuaJIT does not verify bytecode.
local DECODEOPTS = options.spec { trusted = "boolean", bytecode = "boolean",
                                 max_bytes = "positive integer" }
local decode = core.decode
function M.decode(s, opts)
  if type(opts) == "table" then
    options.check("pcrun.decode", opts, DECODEOPTS, 2)
  end
  return decode(s, opts)
end

--- Let values with metatable mt cross by mt.__serialize (any value out)
-- and mt.__deserialize (that value in), under the name given.
M.register_type = core.register_type

--- Rebuild the index of package.loaded used to send modules by name.
M.refresh_names = core.refresh_names
M.format_version = core.format_version

--- Two connected endpoints. duplex (default true): both ends send and
-- receive; false: the first end only receives, the second only sends.
local PIPEOPTS = options.spec { buffer = "number" }
function M.pipe(duplex, opts)
  if duplex ~= nil and type(duplex) ~= "boolean" then
    error("pcrun.pipe: duplex must be a boolean, got " .. type(duplex), 2)
  end
  local size
  if opts ~= nil then
    size = options.check("pcrun.pipe", opts, PIPEOPTS, 2).buffer
    if size ~= nil and (size < 4096 or size > 2^30 or size % 1 ~= 0) then
      error("pcrun.pipe: buffer must be an integer from 4096 to 2^30", 2)
    end
  end
  return core.pipe(duplex ~= false, size)
end

local pool = require "pcrun.pool"
local future = require "pcrun.future"
local queue = require "pcrun.queue"
local sync = require "pcrun.sync"
local array = require "pcrun.array"
local select_ = require "pcrun.select"

-- All of these act on the system (signal a pid, map arena memory, hold a
-- socket): a decode without {trusted = true} refuses them.
local CAP = { capability = true }
core.register_type("pcrun.Process", process.Process, CAP)
core.register_type("pcrun.Connection", core.Connection, CAP)
for _, name in ipairs { "Queue", "JoinableQueue", "Lock", "RLock",
                        "Semaphore", "BoundedSemaphore", "Event",
                        "Condition", "Barrier", "ObjRef" } do
  core.register_type("pcrun." .. name, core[name], CAP)
  M[name] = core[name]
end
core.register_type("pcrun.Array", array.Array, CAP)
core.register_type("pcrun.Pool", pool.Pool, CAP)
core.register_type("pcrun.TaskError", pool.TaskError)
core.register_type("pcrun.Value", array.Value, CAP)
M.queue, M.joinable_queue = queue.queue, queue.joinable_queue
M.lock, M.rlock, M.event = sync.lock, sync.rlock, sync.event
M.semaphore, M.bounded_semaphore = sync.semaphore, sync.bounded_semaphore
M.condition, M.barrier = sync.condition, sync.barrier
M.array, M.value = array.array, array.value
M.Array, M.Value = array.Array, array.Value
M.select = select_.select
M.dict, M.Dict = require("pcrun.dict").dict, core.Dict
M.native = require "pcrun.native"

M.process = process.new
M.active_children = process.active_children
M.current_process = process.current_process
M.parent_process = process.parent_process
M.pool = pool.new
local cluster = require "pcrun.cluster"
M.cluster = cluster.cluster
--- This process's MPI rank and the job's size (0 and 1 without MPI; in
-- a worker, the rank that forked it).
M.rank, M.size = cluster.rank, cluster.size
M.with_pool = pool.with_pool
M.worker = pool.worker
M.Pool = pool.Pool
M.TaskError = pool.TaskError
M.AsyncResult = pool.AsyncResult
M.Future = future.Future
M.as_completed = future.as_completed
M.wait = future.wait
M.future = future.standalone
M.Process = process.Process
M.Connection = core.Connection

--- Whether Ctrl-C is pending: under the pcrun CLI it stays so, and pool
-- calls, futures and blocking waits raise "interrupted", until the script
-- returns or calls pcrun.clear_interrupt().
function M.interrupted()
  return (core.interrupt())
end

function M.clear_interrupt()
  core.interrupt(true)
end

--- Seconds from a monotonic clock (fractions: ns resolution).
M.now = core.now

local SLICE = 0.25  -- a pending Ctrl-C is seen at least this often
local ffi = require "ffi"
pcall(ffi.cdef, "int poll(void *fds, unsigned long nfds, int timeout);")
local function pause(s) ffi.C.poll(nil, 0, math.ceil(s * 1000)) end

--- Sleep s seconds; Ctrl-C interrupts it (the error "interrupted").
function M.sleep(s)
  if type(s) ~= "number" or not (s >= 0) then
    error("pcrun.sleep: seconds must be a non-negative number", 2)
  end
  local deadline = core.now() + s
  while true do
    if core.interrupt() then error("interrupted", 0) end
    local left = deadline - core.now()
    if left <= 0 then return end
    pause(math.min(left, SLICE))
  end
end

--- The pid of the calling process.
function M.getpid()
  return core.getpid()
end

--- Arena statistics: { size = bytes mapped, used = bytes allocated }.
function M.arena()
  return core.arena()
end

--- What a bug report needs: { version, luajit, gc64, ser_fast, arena, cpus }.
-- ser_fast: the serializer reads tables in place (its start-up self-test
-- passed on this LuaJIT); without it encoding is about 2x slower.
function M.info()
  local ffi = require "ffi"
  return { version = core.version, luajit = jit.version,
           gc64 = ffi.abi("gc64"), ser_fast = core.ser_fast(),
           arena = core.arena().size, cpus = core.cpu_count() }
end

return M
