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
-- The reverse index lives as long as the value.
local function keep(key, ttl)
  if ttl > 0 then redis.call('PEXPIRE', key, ttl) else redis.call('PERSIST', key) end
end
-- Creation time of a value, on the Redis clock (ms), with the value's TTL.
local function stamp(key, ttl)
  local t = redis.call('TIME')
  put(key, t[1] .. string.format('%03d', math.floor(tonumber(t[2]) / 1000)), ttl)
end
-- Replaces the reverse index with ARGV[first..].
local function index(key, first)
  redis.call('DEL', key)
  for i = first, #ARGV do redis.call('SADD', key, ARGV[i]) end
end
