-- release: gives a fill lease (or a sweeper's fence) back without storing.
-- Invariant: only the holder of the token releases it, and an entry without
-- a value keeps no reverse index behind.
--
-- KEYS: lease, value, reverse index. ARGV: token. Returns 1 if the lease
-- still held the token, 0 if it was gone or taken over.
if redis.call('GET', KEYS[1]) ~= ARGV[1] then return 0 end
redis.call('DEL', KEYS[1])
if redis.call('EXISTS', KEYS[2]) == 0 then redis.call('DEL', KEYS[3]) end
return 1
