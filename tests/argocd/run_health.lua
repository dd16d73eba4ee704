-- Runs an Argo CD health script the way Argo CD does: the object as the global `obj`, a script
-- that returns `hs`. Only the libraries Argo CD opens are visible (no io, os, require), so a
-- script that would fail in Argo CD fails here too.
--
--   lua5.4 tests/argocd/run_health.lua manifests/argocd/health/<group>_<kind>/health.lua < obj.json
--
-- Prints hs.status on the first line and hs.message on the rest. Runs under Lua 5.1 too (the
-- language level of Argo CD's gopher-lua): `lua5.1 tests/argocd/run_health.lua ...`.
local here = string.match(arg[0], "^(.*)[/\\]") or "."
local json = dofile(here .. "/json.lua")

local script = arg[1]
if script == nil then
  io.stderr:write("usage: run_health.lua HEALTH_SCRIPT < OBJECT_JSON\n")
  os.exit(2)
end

local obj = json.decode(io.read("*a"))

local env = {
  obj = obj,
  assert = assert, error = error, ipairs = ipairs, next = next, pairs = pairs, pcall = pcall,
  select = select, tonumber = tonumber, tostring = tostring, type = type, unpack = table.unpack or unpack,
  string = string, table = table, math = math,
}

local chunk, err
if setfenv ~= nil then -- Lua 5.1
  chunk, err = loadfile(script)
  if chunk ~= nil then
    setfenv(chunk, env)
  end
else
  chunk, err = loadfile(script, "t", env)
end
if chunk == nil then
  io.stderr:write(err .. "\n")
  os.exit(1)
end
local ok, hs = pcall(chunk)
if not ok then
  io.stderr:write("health script error: " .. tostring(hs) .. "\n")
  os.exit(1)
end
if type(hs) ~= "table" or type(hs.status) ~= "string" then
  io.stderr:write("health script returned no hs.status\n")
  os.exit(1)
end
io.write(hs.status, "\n", hs.message or "", "\n")
