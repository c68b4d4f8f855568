-- drop: deletes entries. Invariant: an entry's value goes together with its
-- lease, defeating a fill in flight, and with its stamp. A lease held by
-- the sweeper (token 'sweep:...', taken only while no fill held one) stays:
-- no fill is in flight then, and none may start, register and lose that
-- registration to the sweeper's removal before the sweeper lifts it.
--
-- KEYS: groups of three (value, lease, stamps). ARGV: the cache key of each
-- group. Returns the number of values deleted. The key stays registered
-- under its other dependencies; the sweeper removes such registrations
-- later, and meanwhile they only cost a spurious delete of a key that is
-- gone or was refilled.
--
-- Variadic commands for the whole call (one UNLINK of the values, one MGET
-- and one UNLINK of the leases): each redis.call costs about a microsecond
-- on its own, which dominated bulk statements.
local values, leases = {}, {}
for i = 1, #KEYS, 3 do
  values[#values + 1] = KEYS[i]
  leases[#leases + 1] = KEYS[i + 1]
end
if #values == 0 then return 0 end
local removed = redis.call('UNLINK', unpack(values))
-- MGET answers nil for a lease of another type (written by another
-- program); it goes like a missing one.
local held = redis.call('MGET', unpack(leases))
local drop = {}
for n = 1, #leases do
  local lease = held[n]
  if not (type(lease) == 'string' and string.sub(lease, 1, 6) == 'sweep:') then
    drop[#drop + 1] = leases[n]
  end
end
if #drop > 0 then redis.call('UNLINK', unpack(drop)) end
for i = 3, #KEYS, 3 do
  unstamp(KEYS[i], ARGV[i / 3])
end
return removed
