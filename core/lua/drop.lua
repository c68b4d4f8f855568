-- drop: deletes entries. Invariant: an entry's value goes together with its
-- lease, defeating a fill in flight, and with its stamp.
--
-- KEYS: groups of three (value, lease, stamps). ARGV: the cache key of each
-- group. Returns the number of values deleted. The key stays registered
-- under its other dependencies; the sweeper removes such registrations
-- later, and meanwhile they only cost a spurious delete of a key that is
-- gone or was refilled.
local removed = 0
for i = 1, #KEYS, 3 do
  removed = removed + redis.call('UNLINK', KEYS[i])
  redis.call('UNLINK', KEYS[i + 1])
  unstamp(KEYS[i + 2], ARGV[(i + 2) / 3])
end
return removed
