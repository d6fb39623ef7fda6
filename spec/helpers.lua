-- Shared test code for the pcrun specs: the children of the test process
-- (read from /proc), stragglers killed and reaped after each test, bodies
-- run in a forked child under a deadline, and the pcrun CLI run as a
-- subprocess with its stdout, stderr and exit status captured.
--
-- Loading this module makes the test process a child subreaper
-- (PR_SET_CHILD_SUBREAPER): a grandchild orphaned by a pcrun process
-- that exits or dies is re-parented to the test, not to init, so a
-- runtime that leaves an orphan or a zombie behind shows up as a child of
-- the test, and assert_no_children() catches it.
local ffi = require "ffi"
local lfs = require "lfs"
local core = require "pcrun.core"

local C = ffi.C

-- Another spec in the same busted process may declare the same functions.
for _, decl in ipairs {
  "int fork(void);",
  "int execv(const char *path, char *const argv[]);",
  "int open(const char *path, int flags, int mode);",
  "int dup2(int oldfd, int newfd);",
  "int close(int fd);",
  "void _exit(int status);",
  "int kill(int pid, int sig);",
  "int waitpid(int pid, int *status, int options);",
  "int prctl(int option, unsigned long a2, unsigned long a3, "
    .. "unsigned long a4, unsigned long a5);",
  "int setpgid(int pid, int pgid);",
  "int setenv(const char *name, const char *value, int overwrite);",
  "int unsetenv(const char *name);",
  "int poll(void *fds, unsigned long nfds, int timeout);",
} do
  pcall(ffi.cdef, decl)
end

local M = {}

local O_RDONLY, O_WRONLY, O_CREAT, O_TRUNC = 0, 1, 64, 512
local WNOHANG = 1
local PR_SET_CHILD_SUBREAPER = 36
M.SIGINT, M.SIGKILL, M.SIGTERM = 2, 9, 15

--- The built pcrun CLI and the repository root (set by ctest).
M.bin = os.getenv("PCRUN_BIN") or "build/pcrun"
M.src = os.getenv("PCRUN_SRC") or "."

C.prctl(PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0)

function M.getpid() return core.getpid() end

--- Sleep for s seconds (no child process, no busy loop).
function M.sleep(s) C.poll(nil, 0, math.floor(s * 1000 + 0.5)) end

--- Monotonic clock in seconds.
M.now = core.now

-- -- /proc ----------------------------------------------------------------

--- State letter and ppid of pid from /proc/<pid>/stat, or nil if there is
-- no such process (reaped, or never existed).
function M.proc_stat(pid)
  local f = io.open("/proc/" .. tostring(pid) .. "/stat", "r")
  if not f then return nil end
  local s = f:read("*a")  -- nil: it ended between open and read
  f:close()
  if not s then return nil end
  -- comm is in parentheses and may hold spaces or ')': split at the last.
  local comm, rest = s:match("^%d+ %((.*)%) (.*)$")
  if not rest then return nil end
  local state, ppid = rest:match("^(%S+) (%-?%d+)")
  return state, tonumber(ppid), comm
end

--- Every process whose parent is pid (default: this process), zombies
-- included, as a list of { pid =, state =, comm = }.
function M.children(pid)
  pid = pid or core.getpid()
  local out = {}
  for name in lfs.dir("/proc") do
    if name:match("^%d+$") then
      local state, ppid, comm = M.proc_stat(name)
      if ppid == pid then
        out[#out + 1] = { pid = tonumber(name), state = state, comm = comm }
      end
    end
  end
  table.sort(out, function(a, b) return a.pid < b.pid end)
  return out
end

local function describe_kids(kids)
  local t = {}
  for i, k in ipairs(kids) do
    t[i] = ("%d (%s, state %s)"):format(k.pid, k.comm or "?", k.state or "?")
  end
  return table.concat(t, ", ")
end

--- Reap pid if it is a child of this process. A child pcrun registered
-- is reaped through pcrun (so its registry stays right); any other (a
-- CLI we forked, an orphan we adopted) through waitpid. Returns its exit
-- code (negative: killed by that signal) or nil if it was not ours.
function M.reap(pid, timeout)
  local _, ppid = M.proc_stat(pid)
  if ppid ~= core.getpid() then return nil end
  if core.is_child(pid) then
    local done, code = core.wait(pid, timeout or 10)
    return done and code or nil
  end
  local st = ffi.new("int[1]")
  local deadline = M.now() + (timeout or 10)
  repeat
    local r = C.waitpid(pid, st, WNOHANG)
    if r == pid then
      local s = st[0]
      if s % 128 == 0 then return math.floor(s / 256) % 256 end
      return -(s % 128)
    end
    if r < 0 then return nil end
    M.sleep(0.005)
  until M.now() > deadline
  return nil
end

--- Kill (SIGKILL) and reap every child of this process. Returns the list
-- of those found, as children() describes them.
function M.kill_stragglers()
  local kids = M.children()
  for _, k in ipairs(kids) do C.kill(k.pid, M.SIGKILL) end
  for _, k in ipairs(kids) do M.reap(k.pid, 5) end
  return kids
end

--- Raise unless this process has no child left, live or zombie. Children
-- found are killed and reaped first, so one failing test does not spill
-- into the next. Meant for after_each.
function M.assert_no_children()
  -- A child that was just signalled may still be on its way out: give
  -- it a moment, then treat what remains as left behind.
  local deadline = M.now() + 0.5
  while #M.children() > 0 and M.now() < deadline do M.sleep(0.01) end
  local kids = M.kill_stragglers()
  if #kids > 0 then
    error("children left behind: " .. describe_kids(kids), 2)
  end
end

--- True when pid no longer runs: gone from /proc, or a zombie.
function M.is_dead(pid)
  local state = M.proc_stat(pid)
  return state == nil or state == "Z" or state == "X"
end

--- Wait up to timeout seconds for pid to stop running; reap it if it is
-- an adopted child of ours (not one pcrun registered). True if it died.
function M.wait_dead(pid, timeout)
  local deadline = M.now() + timeout
  while not M.is_dead(pid) do
    if M.now() > deadline then return false end
    M.sleep(0.01)
  end
  local _, ppid = M.proc_stat(pid)
  if ppid == core.getpid() and not core.is_child(pid) then M.reap(pid, 1) end
  return true
end

--- Wait up to timeout seconds until pid sleeps in the kernel (state S),
-- as a process blocked in a wait does; running, runnable or in a page
-- fault it is R or D. True if it did.
function M.wait_asleep(pid, timeout)
  local deadline = M.now() + timeout
  while M.proc_stat(pid) ~= "S" do
    if M.now() > deadline then return false end
    M.sleep(0.01)
  end
  return true
end

--- Wait up to timeout seconds until /proc has no entry for pid at all:
-- neither running nor a zombie (so someone reaped it).
function M.wait_gone(pid, timeout)
  local deadline = M.now() + timeout
  while M.proc_stat(pid) do
    if M.now() > deadline then return false end
    M.sleep(0.01)
  end
  return true
end

-- -- Files ------------------------------------------------------------------

function M.read_file(path)
  local f = io.open(path, "rb")
  if not f then return nil end
  local s = f:read("*a")
  f:close()
  return s
end

function M.write_file(path, s)
  local f = assert(io.open(path, "wb"))
  f:write(s)
  f:close()
  return path
end

--- Write src to a fresh temporary file and return its name.
function M.script(src)
  return M.write_file(os.tmpname(), src)
end

-- -- Forked bodies under a deadline ---------------------------------------

local function child_run(fn, errfile)
  local ok, err = xpcall(fn, function(e)
    -- the traceback down to fn; what busted does above it is noise
    local tb = debug.traceback(tostring(e), 2)
    return (tb:gsub("\n%s*%[C%]: in function 'xpcall'.*$", ""))
  end)
  if ok then
    local kids = M.children()
    if #kids > 0 then
      ok, err = false, "children left behind: " .. describe_kids(kids)
    end
  end
  if not ok then
    local f = io.open(errfile, "wb")
    if f then f:write(tostring(err)); f:close() end
  end
  core.reap_all(0)
  C._exit(ok and 0 or 1)
end

--- Run fn() in a forked copy of this process and wait for it at most
-- secs seconds. Raises fn's error (with its traceback), an error if fn
-- left children behind, or "timed out after N s" (the copy is then
-- killed; its pcrun children die with it). Use it for bodies that would
-- hang or crash the test process on a bug. The copy leaves with _exit:
-- nothing it did to this process's Lua values is undone, so fn must
-- create the pcrun objects it uses. With PCRUN_SPEC_ONHANG set, the
-- command it names runs with the copy's pid before the kill, to take
-- stacks of a hang that is rare (`gdb -p`).
function M.with_timeout(secs, fn)
  collectgarbage()
  collectgarbage()  -- nothing left for the copy to collect twice
  io.stdout:flush()
  io.stderr:flush()
  local errfile = os.tmpname()
  local pid = C.fork()
  if pid < 0 then error("fork failed", 2) end
  if pid == 0 then child_run(fn, errfile) end
  local code = M.reap(pid, secs)
  local err = M.read_file(errfile)
  os.remove(errfile)
  if code == nil then
    local onhang = os.getenv("PCRUN_SPEC_ONHANG")
    if onhang then os.execute(onhang .. " " .. pid) end
    C.kill(pid, M.SIGKILL)
    M.reap(pid, 5)
    error(("timed out after %g s"):format(secs), 2)
  end
  if code ~= 0 then
    error(err ~= "" and err or ("forked body ended with " .. code), 2)
  end
end

--- A test body run by with_timeout: it("...", helpers.forked(20, fn)).
function M.forked(secs, fn)
  return function() M.with_timeout(secs, fn) end
end

-- -- The CLI ----------------------------------------------------------------

--- Start the pcrun CLI with args (a list of strings). opts: stdin (text
-- fed on standard input), env (name -> value, or false to unset),
-- pgroup (true: a process group of its own). Returns a handle for
-- wait_cli / output: { pid =, out = path, err = path }.
function M.spawn_cli(args, opts)
  opts = opts or {}
  local h = { out = os.tmpname(), err = os.tmpname() }
  h.inp = M.write_file(os.tmpname(), opts.stdin or "")
  local strs = { M.bin }
  for i, a in ipairs(args) do strs[i + 1] = tostring(a) end
  local argv = ffi.new("char *[?]", #strs + 1)
  local keep = {}
  for i, s in ipairs(strs) do
    keep[i] = ffi.new("char[?]", #s + 1, s)
    argv[i - 1] = keep[i]
  end
  argv[#strs] = nil
  -- Garbage pcrun objects must not be finalized in the copy before exec:
  -- their __gc would drop references this process still counts on.
  collectgarbage()
  collectgarbage()
  io.stdout:flush()
  io.stderr:flush()
  local pid = C.fork()
  if pid < 0 then error("fork failed", 2) end
  if pid == 0 then
    collectgarbage("stop")
    pcall(function()
      if opts.pgroup then C.setpgid(0, 0) end
      C.dup2(C.open(h.inp, O_RDONLY, 0), 0)
      C.dup2(C.open(h.out, O_WRONLY + O_CREAT + O_TRUNC, 420), 1)
      C.dup2(C.open(h.err, O_WRONLY + O_CREAT + O_TRUNC, 420), 2)
      for k, v in pairs(opts.env or {}) do
        if v then C.setenv(k, tostring(v), 1) else C.unsetenv(k) end
      end
      C.execv(strs[1], argv)
    end)
    C._exit(127)
  end
  h.pid = pid
  h.keep = keep
  return h
end

--- Standard output the CLI wrote so far.
function M.output(h) return M.read_file(h.out) or "" end

--- Wait up to timeout seconds until the CLI's stdout matches pattern;
-- returns the captures (or the whole match), nil on timeout.
function M.wait_output(h, pattern, timeout)
  local deadline = M.now() + (timeout or 10)
  repeat
    local caps = { M.output(h):match(pattern) }
    if caps[1] then return unpack(caps) end
    M.sleep(0.01)
  until M.now() > deadline
  return nil
end

--- Wait up to timeout seconds for the CLI to end. Returns a result
-- { status =, stdout =, stderr = }, status being the exit code or minus
-- the signal that killed it. On timeout the CLI is killed and status is
-- "timeout".
function M.wait_cli(h, timeout)
  local status = M.reap(h.pid, timeout or 20)
  if status == nil then
    C.kill(h.pid, M.SIGKILL)
    M.reap(h.pid, 5)
    status = "timeout"
  end
  local res = { status = status, stdout = M.output(h),
                stderr = M.read_file(h.err) or "" }
  os.remove(h.out)
  os.remove(h.err)
  os.remove(h.inp)
  return res
end

--- Run the CLI to its end: run_cli({ "-e", "print(1)" }, stdin, opts).
-- Returns { status =, stdout =, stderr = } as wait_cli does.
function M.run_cli(args, stdin, opts)
  opts = opts or {}
  opts.stdin = stdin
  return M.wait_cli(M.spawn_cli(args, opts), opts.timeout or 20)
end

--- Send signal sig to pid (a negative pid: a process group).
function M.kill(pid, sig) return C.kill(pid, sig or M.SIGKILL) end

-- -- Assertions -------------------------------------------------------------

--- Call fn(...) expecting an error; return its message.
function M.error_of(fn, ...)
  local ok, err = pcall(fn, ...)
  assert(not ok, "expected an error, got none")
  return tostring(err)
end

--- Raise unless s contains every given substring (plain search).
function M.assert_has(s, ...)
  for i = 1, select("#", ...) do
    local want = select(i, ...)
    if not string.find(s, want, 1, true) then
      error(("expected to find %q in:\n%s"):format(want, s), 2)
    end
  end
end

--- Raise unless fn(...) raises an error containing every substring.
function M.assert_error_has(subs, fn, ...)
  local ok, err = pcall(fn, ...)
  if ok then error("expected an error, got none", 2) end
  err = tostring(err)
  if type(subs) == "string" then subs = { subs } end
  for _, want in ipairs(subs) do
    if not string.find(err, want, 1, true) then
      error(("expected the error to contain %q, got:\n%s"):format(want, err),
            2)
    end
  end
  return err
end

--- For process_spec: "helpers.send_back" names a function that a child
-- can run by name. Sends v on conn, then a's and b's sum.
function M.send_back(conn, v, a, b)
  conn:send(v)
  if a then conn:send(a + b) end
end

--- Whether pcrun can serialize tables yet (a stub serializer cannot).
function M.has_serializer()
  return type(core.encode) == "function" and (pcall(core.encode, {}))
end

-- Pools made by a test body, joined (terminated if the body failed) when
-- it ends, and the forked runner that does so: pool and future specs.
-- Returns mkpool(...), finish_all(graceful), forked(secs, fn).
function M.pool_tracker(pcrun)
  local pools = {}
  local function mkpool(...)
    local p = pcrun.pool(...)
    pools[#pools + 1] = p
    return p
  end
  local function finish_all(graceful)
    for _, p in ipairs(pools) do
      if graceful then pcall(function() p:close() p:join() end) end
      pcall(p.terminate, p)
    end
    pools = {}
  end
  -- A body run in a forked child under a deadline of secs seconds; one
  -- that leaves slow tasks running terminates its pools itself.
  local function forked(secs, fn)
    return function()
      M.with_timeout(secs, function()
        local ok, err = xpcall(fn, debug.traceback)
        finish_all(ok)
        if not ok then error(err, 0) end
      end)
    end
  end
  return mkpool, finish_all, forked
end

return M
