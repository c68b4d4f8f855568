-- acquire: the first step of a miss. Invariant: at most one filler holds an
-- entry's lease, and the lease is taken before the caller registers the key
-- in its dependency sets and reads the database, so any invalidation that
-- drains one of those sets afterwards finds the key and deletes the lease.
--
-- KEYS: value, lease, reverse index. ARGV: lease token, lease ms, then
-- dependency ids. Returns {1, value} (a value is cached), {2} (lease taken,
-- reverse index written) or {0} (another filler holds the lease).
local v = redis.call('GET', KEYS[1])
if v then return {1, v} end
if redis.call('SET', KEYS[2], ARGV[1], 'NX', 'PX', ARGV[2]) then
  index(KEYS[3], 3)
  redis.call('PEXPIRE', KEYS[3], ARGV[2])
  return {2}
end
return {0}
