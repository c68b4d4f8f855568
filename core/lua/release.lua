-- release: gives a fill lease (or a sweeper's fence) back without storing.
-- Invariant: only the holder of the token releases it, and an entry without
-- a value keeps no stamp behind.
--
-- KEYS: lease, value, stamps. ARGV: token, cache key. Returns 1 if the
-- lease still held the token, 0 if it was gone or taken over.
if redis.call('GET', KEYS[1]) ~= ARGV[1] then return 0 end
redis.call('DEL', KEYS[1])
if redis.call('EXISTS', KEYS[2]) == 0 then unstamp(KEYS[3], ARGV[2]) end
return 1
