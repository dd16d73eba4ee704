-- Argo CD health check for nhi.dev IdentityIssuer (a namespaced certificate issuer).
-- argocd-cm key: resource.customizations.health.nhi.dev_IdentityIssuer
-- (manifests/argocd/argocd-cm-patch.yaml inlines this file; hack/gen-argocd-cm.sh generates it).
--
-- The first rule that matches wins:
--   no status yet                          -> Progressing (the operator has not reconciled it)
--   status.observedGeneration < generation -> Progressing (the operator has not seen the change)
--   Stalled=True                           -> Degraded    (the operator will not retry until the
--                                                          spec or the cluster changes)
--   Reconciling=True                       -> Progressing
--   Ready=True                             -> Healthy
--   anything else                          -> Progressing (Ready False or Unknown: retrying)
-- The same rules as kstatus (Flux, Helm 4). IdentityIssuer has no phase, so never Suspended.
-- Plain Lua 5.1 (Argo CD runs gopher-lua); tested with lua5.4 by tests/argocd/run_health.lua.
local hs = {}

local function find_condition(status, kind)
  if status.conditions == nil then
    return nil
  end
  for _, c in ipairs(status.conditions) do
    if c.type == kind then
      return c
    end
  end
  return nil
end

local function describe(c, default)
  if c ~= nil and c.message ~= nil and c.message ~= "" then
    return c.message
  end
  if c ~= nil and c.reason ~= nil and c.reason ~= "" then
    return c.reason
  end
  return default
end

local status = obj.status
if status == nil or (status.observedGeneration == nil and status.conditions == nil) then
  hs.status = "Progressing"
  hs.message = "Waiting for the operator to report status"
  return hs
end

local generation = obj.metadata.generation
local observed = status.observedGeneration
if generation ~= nil and observed ~= nil and observed < generation then
  hs.status = "Progressing"
  hs.message = string.format(
    "Waiting for the operator to observe generation %d (status is for generation %d)",
    generation, observed)
  return hs
end

local stalled = find_condition(status, "Stalled")
if stalled ~= nil and stalled.status == "True" then
  hs.status = "Degraded"
  hs.message = describe(stalled, "Stalled")
  return hs
end

local reconciling = find_condition(status, "Reconciling")
if reconciling ~= nil and reconciling.status == "True" then
  hs.status = "Progressing"
  hs.message = describe(reconciling, "Reconciling")
  return hs
end

local ready = find_condition(status, "Ready")
if ready ~= nil and ready.status == "True" then
  hs.status = "Healthy"
  hs.message = describe(ready, "Ready")
  return hs
end

hs.status = "Progressing"
hs.message = describe(ready, "Waiting for the Ready condition")
return hs
