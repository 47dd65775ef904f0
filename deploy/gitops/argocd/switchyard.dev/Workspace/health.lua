-- Argo CD health check for switchyard.dev Workspaces.
--
-- It reads the status the way kstatus (Flux's health checks) does, so Argo CD and Flux give
-- one answer for one object (docs/gitops.md):
--   deletion in progress               -> Progressing ("Pending deletion", as Argo CD itself says)
--   no status written yet              -> Progressing
--   status.observedGeneration behind   -> Progressing (the controller has not seen the spec yet)
--   Stalled=True                       -> Degraded (reason and message of the condition)
--   Reconciling=True / operation set   -> Progressing (a provision, switch, stop or delete in flight)
--   Ready=True                         -> Healthy
--   anything else                      -> Progressing
--
-- Argo CD runs custom health checks in gopher-lua (Lua 5.1) with only the base and table
-- libraries, so this script uses nothing else: no string library, no goto, no integer division.

local hs = {}

local function condition(status, type)
  if status == nil or status.conditions == nil then
    return nil
  end
  for _, c in ipairs(status.conditions) do
    if c.type == type then
      return c
    end
  end
  return nil
end

local function is_true(status, type)
  local c = condition(status, type)
  return c ~= nil and c.status == "True"
end

-- "Reason: message", or whichever of the two is set.
local function describe(c)
  local reason = c.reason or ""
  local message = c.message or ""
  if reason ~= "" and message ~= "" then
    return reason .. ": " .. message
  end
  if message ~= "" then
    return message
  end
  if reason ~= "" then
    return reason
  end
  return c.type .. " is " .. tostring(c.status)
end

local metadata = obj.metadata or {}
local status = obj.status

if metadata.deletionTimestamp ~= nil then
  hs.status = "Progressing"
  hs.message = "Pending deletion"
  local ready = condition(status, "Ready")
  if ready ~= nil and ready.status ~= "True" then
    hs.message = hs.message .. ": " .. describe(ready)
  end
  return hs
end

if status == nil or (status.conditions == nil and status.phase == nil) then
  hs.status = "Progressing"
  hs.message = "Waiting for the controller to report status"
  return hs
end

if metadata.generation ~= nil and status.observedGeneration ~= nil
    and status.observedGeneration ~= metadata.generation then
  hs.status = "Progressing"
  hs.message = "Waiting for the controller to observe generation " .. tostring(metadata.generation)
    .. " (status describes generation " .. tostring(status.observedGeneration) .. ")"
  return hs
end

if is_true(status, "Stalled") then
  hs.status = "Degraded"
  hs.message = describe(condition(status, "Stalled"))
  return hs
end

if is_true(status, "Reconciling") then
  hs.status = "Progressing"
  hs.message = describe(condition(status, "Reconciling"))
  return hs
end

if status.operation ~= nil then
  hs.status = "Progressing"
  hs.message = "Operation " .. tostring(status.operation.kind) .. " in flight (step "
    .. tostring(status.operation.step) .. ")"
  return hs
end

local ready = condition(status, "Ready")
if ready == nil then
  hs.status = "Progressing"
  hs.message = "Waiting for the Ready condition"
  return hs
end
if ready.status == "True" then
  hs.status = "Healthy"
  if ready.message ~= nil and ready.message ~= "" then
    hs.message = ready.message
  else
    hs.message = describe(ready)
  end
  return hs
end
hs.status = "Progressing"
hs.message = describe(ready)
return hs
