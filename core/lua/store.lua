-- store: an unconditional write. Invariant: the fill lease is deleted with
-- the write, so a fill that started before it (and may carry older data) is
-- refused afterwards. The caller then adds the key to the dependency sets.
--
-- KEYS: value, lease, reverse index, birth stamp. ARGV: value, TTL in ms (0
-- for none), then dependency ids. Returns 1.
local ttl = tonumber(ARGV[2])
redis.call('DEL', KEYS[2])
put(KEYS[1], ARGV[1], ttl)
stamp(KEYS[4], ttl)
index(KEYS[3], 3)
keep(KEYS[3], ttl)
return 1
