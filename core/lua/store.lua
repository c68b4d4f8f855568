-- store: an unconditional write. Invariant: the fill lease is deleted with
-- the write, so a fill that started before it (and may carry older data) is
-- refused afterwards. The caller then registers the key under its
-- dependencies.
--
-- KEYS: value, lease, stamps. ARGV: value, TTL in ms (0 for none), cache
-- key, the fingerprint of the dependencies the caller registers it under
-- (stamped with the value, for the sweeper). Returns 1.
redis.call('DEL', KEYS[2])
put(KEYS[1], ARGV[1], tonumber(ARGV[2]))
stamp(KEYS[3], ARGV[3], ARGV[4])
return 1
