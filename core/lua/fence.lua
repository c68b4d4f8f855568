-- fence: the sweeper's guard. Invariant: an entry's registration is removed
-- only while no fill of it can start: an entry with neither a value nor a
-- lease gets a lease held by the sweeper, so a fill cannot register it anew
-- between the check and the removal and lose that registration.
--
-- KEYS: groups of three (value, lease, stamps). ARGV: sweeper token, fence
-- ms, then the cache key of each group. Returns per entry 1 (fenced: stamp
-- dropped) or 0 (alive or filling).
local out = {}
for i = 1, #KEYS, 3 do
  local fenced = 0
  if redis.call('EXISTS', KEYS[i]) == 0
    and redis.call('SET', KEYS[i + 1], ARGV[1], 'NX', 'PX', ARGV[2]) then
    unstamp(KEYS[i + 2], ARGV[(i + 2) / 3 + 2])
    fenced = 1
  end
  out[#out + 1] = fenced
end
return out
