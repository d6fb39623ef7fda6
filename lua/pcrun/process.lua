-- pcrun.process: one Lua function run in a forked child, with the
-- methods of Python's multiprocessing.Process.
local core = require "pcrun.core"

local M = {}
local Process = {}
Process.__index = Process
Process.__name = "pcrun.Process"
M.Process = Process

local unpack = unpack  -- LuaJIT
local SIGTERM, SIGKILL = 15, 9

-- "mod.fn" names a function of a module the child requires;
-- "native.fn" (or "pcrun.native.fn") a function the host registered.
function M.resolve(fn)
  if type(fn) == "function" then return fn end
  local mod, name = fn:match("^(.-)%.([%w_]+)$")
  if mod == "native" then mod = "pcrun.native" end
  local f = mod and require(mod)[name]
  if type(f) ~= "function" then
    error(("'%s' is not a function"):format(fn), 0)
  end
  return f
end

local function checktimeout(who, t)
  if t ~= nil and (type(t) ~= "number" or t ~= t) then
    error(who .. ": timeout must be a number", 3)
  end
end

--- pcrun.process(fn, ...): an unstarted process that will call fn(...).
function M.new(fn, ...)
  if type(fn) ~= "function"
      and not (type(fn) == "string" and fn:find(".", 1, true)) then
    error("pcrun.process: fn must be a function or a 'module.function' "
          .. "string, got " .. type(fn), 2)
  end
  return setmetatable({ fn = fn, args = { n = select("#", ...), ... },
                        daemon = false, _state = "new" }, Process)
end

local function childmain(self)
  local ok, err = xpcall(function()
    return M.resolve(self.fn)(unpack(self.args, 1, self.args.n))
  end, debug.traceback)
  if not ok then
    io.stderr:write(("pcrun: process %d failed: %s\n")
                    :format(core.getpid(), tostring(err)))
    core.child_exit(1)
  end
  core.child_exit(0)
end

--- Fork the child and run fn there. Returns self.
function Process:start()
  if getmetatable(self) ~= Process then
    error("pcrun.Process:start: call it as p:start()", 2)
  end
  if self._state ~= "new" then
    error("pcrun.Process:start: a process can only be started once", 2)
  end
  local pid = core.fork()
  if pid == 0 then childmain(self) end
  self.pid, self._state = pid, "started"
  if self.daemon then core.set_daemon(pid, true) end
  return self
end

local function started(self, who)
  if getmetatable(self) ~= Process then
    error("pcrun.Process:" .. who .. ": call it as p:" .. who .. "()", 3)
  end
  if self._state == "new" then
    error("pcrun.Process:" .. who .. ": process not started", 3)
  end
end

--- Wait until the process ends, or timeout seconds. Returns true once it
-- has ended (exitcode is then set), false on timeout.
function Process:join(timeout)
  started(self, "join")
  checktimeout("pcrun.Process:join", timeout)
  if self._state == "done" then return true end
  local done, code = core.wait(self.pid, timeout)
  if done then
    self._state, self.exitcode = "done", code
  end
  return done
end

--- Whether the process runs: false before start(), as in Python.
function Process:is_alive()
  if getmetatable(self) ~= Process then
    error("pcrun.Process:is_alive: call it as p:is_alive()", 2)
  end
  if self._state ~= "started" then return false end
  return not self:join(0)
end

local function signal(self, who, sig)
  started(self, who)
  if self._state ~= "done" then core.signal(self.pid, sig) end
end

--- Ask the process to stop (SIGTERM); exitcode becomes -15.
function Process:terminate() signal(self, "terminate", SIGTERM) end
--- Kill the process (SIGKILL); exitcode becomes -9.
function Process:kill() signal(self, "kill", SIGKILL) end

function Process:__tostring()
  local state = self._state == "done" and ("exitcode=" .. self.exitcode)
                or self._state
  return ("pcrun.Process(pid=%s, %s)"):format(tostring(self.pid), state)
end

-- Crossing a process boundary: the receiver gets a handle that can join
-- (through a pidfd), test and signal the process, but not read its
-- exit code unless it is the parent.
function Process:__serialize()
  return { pid = self.pid, state = self._state, exitcode = self.exitcode,
           daemon = self.daemon }
end

function Process.__deserialize(t)
  return setmetatable({ pid = t.pid, _state = t.state,
                        exitcode = t.exitcode, daemon = t.daemon,
                        args = { n = 0 } }, Process)
end

return M
