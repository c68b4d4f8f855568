-- fill: stores a computed value. Invariant: a value is stored only while the
-- lease still holds the filler's token; an invalidation (or a store, or a
-- sweeper's fence) since the lease was taken deleted or replaced it, so a
-- value computed from data read before that commit is never cached.
--
-- KEYS: value, lease, stamps. ARGV: lease token, value, TTL in ms (0 for
-- none), cache key, the fingerprint of the dependencies the key was
-- registered under (stamped with the value, for the sweeper). Returns 1 if
-- stored, 0 if the lease was gone or taken over.
if redis.call('GET', KEYS[2]) ~= ARGV[1] then return 0 end
redis.call('DEL', KEYS[2])
put(KEYS[1], ARGV[2], tonumber(ARGV[3]))
stamp(KEYS[3], ARGV[4], ARGV[5])
return 1
