-- Helpers prepended to every script. Invariant: a script touches only the
-- keys it is given in KEYS, so on a Redis Cluster it runs on the one slot
-- those keys share.

-- A bookkeeping key holding something other than a set (written by another
-- program) counts as empty, rather than failing the script: a failing
-- invalidation would block the daemon's queue.
local function members(key)
  local m = redis.pcall('SMEMBERS', key)
  if m.err then return {} end
  return m
end
-- Stores a value, with a TTL in ms when ttl > 0.
local function put(key, value, ttl)
  if ttl > 0 then
    redis.call('SET', key, value, 'PX', ttl)
  else
    redis.call('SET', key, value)
  end
end
-- Records when `field` was stored, on the Redis clock (ms), in the stamps
-- hash of its slot, followed by ':' and `deps`, the fingerprint of its
-- dependencies (fingerprint.rs), when given. A stamps key of another type
-- (written by another program) is left alone: the age is then unknown,
-- nothing fails.
local function stamp(stamps, field, deps)
  local t = redis.call('TIME')
  local s = t[1] .. string.format('%03d', math.floor(tonumber(t[2]) / 1000))
  if deps and deps ~= '' then s = s .. ':' .. deps end
  redis.pcall('HSET', stamps, field, s)
end
-- Forgets the stamp of `field`.
local function unstamp(stamps, field)
  redis.pcall('HDEL', stamps, field)
end
