-- acquire: the first step of a miss. Invariant: at most one filler holds an
-- entry's lease, and the lease is taken before the caller registers the key
-- under its dependencies and reads the database, so any invalidation that
-- drains one of those dependencies afterwards finds the key and deletes the
-- lease.
--
-- KEYS: value, lease. ARGV: lease token, lease ms. Returns {1, value} (a
-- value is cached), {2} (lease taken) or {0} (another filler holds the
-- lease).
local v = redis.call('GET', KEYS[1])
if v then return {1, v} end
if redis.call('SET', KEYS[2], ARGV[1], 'NX', 'PX', ARGV[2]) then return {2} end
return {0}
