-- drop: deletes entries. Invariant: an entry's value goes together with its
-- lease, defeating a fill in flight, and with its bookkeeping.
--
-- KEYS: groups of four (value, lease, reverse index, birth stamp). Returns
-- the number of values deleted. The key stays in the dependency sets of its
-- other dependencies; the sweeper removes such members later, and meanwhile
-- they only cost a spurious delete of a key that is gone or was refilled.
local removed = 0
for i = 1, #KEYS, 4 do
  removed = removed + redis.call('UNLINK', KEYS[i])
  redis.call('UNLINK', KEYS[i + 1], KEYS[i + 2], KEYS[i + 3])
end
return removed
