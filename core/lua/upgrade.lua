-- upgrade: folds an entry's bookkeeping of the per-entry layout into the
-- compact one. Invariant: nothing an invalidation needs is removed (the
-- old reverse index and birth stamp served the admin view only, and the
-- dependency sets kept their names and are drained as before), and a live
-- value keeps its birth time.
--
-- KEYS: value, old birth stamp, old reverse index, stamps. ARGV: cache key.
-- Returns 1 if a birth time was carried over.
local moved = 0
local born = redis.pcall('GET', KEYS[2])
if type(born) == 'string' and tonumber(born) and redis.call('EXISTS', KEYS[1]) == 1 then
  moved = redis.call('HSETNX', KEYS[4], ARGV[1], born)
end
redis.call('UNLINK', KEYS[2], KEYS[3])
return moved
