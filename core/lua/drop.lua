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
local removed = 0
for i = 1, #KEYS, 3 do
  removed = removed + redis.call('UNLINK', KEYS[i])
  local lease = redis.pcall('GET', KEYS[i + 1])
  if lease and not (type(lease) == 'string' and string.sub(lease, 1, 6) == 'sweep:') then
    redis.call('UNLINK', KEYS[i + 1])
  end
  unstamp(KEYS[i + 2], ARGV[(i + 2) / 3])
end
return removed
