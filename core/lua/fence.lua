-- fence: the sweeper's guard. Invariant: a registration is removed only
-- while no fill of its entry can start, and only if the entry does not
-- need it: the entry has no value (and no lease), or its value's stamp
-- carries a fingerprint of its dependencies (see fingerprint.rs) that rules
-- out the dependency the registration is under. Such an entry gets a lease
-- held by the sweeper, so a fill cannot register it anew between the check
-- and the removal and lose that registration; a drop leaves that lease in
-- place (drop.lua), and a store that overrides it makes the sweeper put the
-- registration back. A value without a fingerprint (stamped by an older
-- version, or by none) keeps all its registrations.
--
-- KEYS: groups of three (value, lease, stamps). ARGV: sweeper token, fence
-- ms, then per group the cache key and the probe of the dependency the
-- registration is under (16 hex digits, see fingerprint.rs; '' when the
-- caller only sweeps entries that are gone). Returns per entry 1 (gone,
-- fenced: stamp dropped), 2 (live, not depending on the dependency,
-- fenced) or 0 (left alone).

-- Whether the fingerprint in the stamp `s` (ms ':' hex digits, digit d
-- holding bits 4d..4d+3, lowest first) lacks one of the probe's bits: the
-- four 16-bit parts of the probe, each modulo the fingerprint's bits.
local function rules_out(s, probe)
  if type(s) ~= 'string' then return false end
  local fp = string.match(s, '^%d+:(%x+)$')
  if not fp then return false end
  local m = 4 * #fp
  for i = 0, 3 do
    local p = tonumber(string.sub(probe, 4 * i + 1, 4 * i + 4), 16) % m
    local d = tonumber(string.sub(fp, math.floor(p / 4) + 1, math.floor(p / 4) + 1), 16)
    if math.floor(d / 2 ^ (p % 4)) % 2 == 0 then return true end
  end
  return false
end

local out = {}
for i = 1, #KEYS, 3 do
  local a = 3 + 2 * (i - 1) / 3
  local key, probe = ARGV[a], ARGV[a + 1]
  local fenced = 0
  local gone = redis.call('EXISTS', KEYS[i]) == 0
  if gone or (#probe == 16 and rules_out(redis.pcall('HGET', KEYS[i + 2], key), probe)) then
    if redis.call('SET', KEYS[i + 1], ARGV[1], 'NX', 'PX', ARGV[2]) then
      if gone then
        unstamp(KEYS[i + 2], key)
        fenced = 1
      else
        fenced = 2
      end
    end
  end
  out[#out + 1] = fenced
end
return out
