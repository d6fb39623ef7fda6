-- pcrun.native: the host's C functions registered with pcr_register,
-- called through libffi. pcrun.native.name(...) checks its arguments
-- against the registered signature. Under plain luajit (no host) the
-- table is empty. Workers see what was registered before they forked.
local ok, reg = pcall(require, "pcrun.nativereg")
if not ok then reg = {} end

local M = {}

--- Whether a native function of that name is registered.
function M.has(name)
  return type(name) == "string" and reg[name] ~= nil
end

--- The names registered so far, sorted.
function M.names()
  local t = {}
  for k in pairs(reg) do t[#t + 1] = k end
  table.sort(t)
  return t
end

return setmetatable(M, {
  __index = function(_, name)
    local f = reg[name]
    if f == nil then
      error(("pcrun.native: no native function '%s' (the host registers "
             .. "them with pcr_register, before forking workers)")
            :format(tostring(name)), 2)
    end
    return f
  end,
  __newindex = function()
    error("pcrun.native: read-only (the host registers with pcr_register)",
          2)
  end,
})
