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

-- The processes this one started and has not yet seen end (Python's
-- active_children); a child starts with none. Process objects, as the
-- current process ("current") and its parent ("parent") in a child.
local children = {}
local nstarted = 0
local current, parent

--- pcrun.process(fn, ...): an unstarted process that will call fn(...).
function M.new(fn, ...)
  if type(fn) ~= "function"
      and not (type(fn) == "string" and fn:find(".", 1, true)) then
    error("pcrun.process: fn must be a function or a 'module.function' "
          .. "string, got " .. type(fn), 2)
  end
  nstarted = nstarted + 1
  return setmetatable({ fn = fn, args = { n = select("#", ...), ... },
                        daemon = false, _state = "new",
                        name = "Process-" .. nstarted }, Process)
end

-- In a new child (a process or a pool worker): self is now the current
-- process, and what was current the parent (made before the fork).
function M._forked(self)
  setmetatable(self, Process)
  self.args = self.args or { n = 0 }
  parent = current
  parent._state = "parent"
  self.pid, self._state = core.getpid(), "current"
  current, children, nstarted = self, {}, 0
end

--- pcrun.current_process(): this process as a pcrun.Process: name
-- ("MainProcess", "Process-N", "PoolWorker-N"), pid, and worker (the
-- index of a pool worker).
function M.current_process()
  if not current or current.pid ~= core.getpid() then  -- forked by core
    current = setmetatable({ name = "MainProcess", pid = core.getpid(),
                             _state = "current", args = { n = 0 } },
                           Process)
  end
  return current
end

--- pcrun.parent_process(): the process that started this one, or nil in
-- the main process (as Python's).
function M.parent_process()
  return parent
end

--- pcrun.active_children(): the processes this one started that still
-- run; those that ended are reaped.
function M.active_children()
  local t = {}
  for p in pairs(children) do
    if p:is_alive() then t[#t + 1] = p end
  end
  table.sort(t, function(a, b) return a.pid < b.pid end)
  return t
end

local function say_failed(err)
  io.stderr:write(("pcrun: process %d failed: %s\n")
                  :format(core.getpid(), tostring(err)))
end

-- Out of memory, even the report can raise: nothing may unwind into the
-- parent's stack that the fork copied.
local function childmain(self)
  M._forked(self)
  local ok, err = xpcall(function()
    return M.resolve(self.fn)(unpack(self.args, 1, self.args.n))
  end, debug.traceback)
  if not ok then
    if not pcall(say_failed, err) then
      pcall(io.stderr.write, io.stderr,
            "pcrun: a process failed: not enough memory\n")
    end
    core.child_exit(1)
  end
  core.child_exit(0)
end

--- Fork the child and run fn there. Returns self.
function Process:start()
  if getmetatable(self) ~= Process then
    error("pcrun.Process:start: call it as p:start()", 2)
  end
  if self._closed then
    error("pcrun.Process:start: the process is closed", 2)
  end
  if self._state ~= "new" then
    error("pcrun.Process:start: a process can only be started once", 2)
  end
  M.current_process()  -- the child's parent_process()
  local pid = core.fork()
  if pid == 0 then
    pcall(childmain, self)  -- returns only if an error escaped it
    core.child_exit(1)
  end
  self.pid, self._state = pid, "started"
  children[self] = true
  if self.daemon then core.set_daemon(pid, true) end
  return self
end

local function started(self, who)
  if getmetatable(self) ~= Process then
    error("pcrun.Process:" .. who .. ": call it as p:" .. who .. "()", 3)
  end
  if self._closed then
    error("pcrun.Process:" .. who .. ": the process is closed", 3)
  end
  if self._state == "new" then
    error("pcrun.Process:" .. who .. ": process not started", 3)
  end
  if self._state == "current" or self._state == "parent" then
    error("pcrun.Process:" .. who .. ": not a child of this process", 3)
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
    children[self] = nil
  end
  return done
end

--- Whether the process runs: false before start(), as in Python.
function Process:is_alive()
  if getmetatable(self) ~= Process then
    error("pcrun.Process:is_alive: call it as p:is_alive()", 2)
  end
  if self._closed then
    error("pcrun.Process:is_alive: the process is closed", 2)
  end
  -- this process, or its parent: children die with their parent
  if self._state == "current" or self._state == "parent" then return true end
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

--- Release the process object (Python's close): raises while it runs;
-- afterwards its methods raise "the process is closed".
function Process:close()
  if getmetatable(self) ~= Process then
    error("pcrun.Process:close: call it as p:close()", 2)
  end
  if self._state == "current" or self._state == "parent" then
    error("pcrun.Process:close: not a child of this process", 2)
  end
  if self._state == "started" and not self:join(0) then
    error("pcrun.Process:close: the process is still running", 2)
  end
  children[self] = nil
  self._closed = true
end

function Process:__tostring()
  local state = self._state == "done" and ("exitcode=" .. self.exitcode)
                or self._state
  return ("pcrun.Process(pid=%s, %s)"):format(tostring(self.pid), state)
end

-- Crossing a process boundary: the receiver gets a handle that can join
-- (through a pidfd), test and signal the process, but not read its
-- exit code unless it is the parent.
function Process:__serialize()
  local state = self._state
  if state == "current" or state == "parent" then state = "started" end
  return { pid = self.pid, state = state, exitcode = self.exitcode,
           daemon = self.daemon, name = self.name, worker = self.worker }
end

function Process.__deserialize(t)
  return setmetatable({ pid = t.pid, _state = t.state,
                        exitcode = t.exitcode, daemon = t.daemon,
                        name = t.name, worker = t.worker,
                        args = { n = 0 } }, Process)
end

return M
