-- register: records that a cache key depends on some dependencies of one
-- slot. Invariant: afterwards every one of them lists the key, in its row
-- bucket field or in its dependency set, so a drain that runs later finds
-- it; a row's first registrant takes the bucket field, and a second one
-- moves both into the set in the same step, so no registrant is ever in
-- neither place.
--
-- KEYS: pairs (row bucket, dependency set), one per dependency (a table
-- dependency passes its set twice). ARGV: the cache key, then per
-- dependency '' for a table dependency or '#' followed by the row's field.
-- Returns 1. A key of another type fails the call (and the fill with it).
local k = ARGV[1]
local j = 1
for i = 1, #KEYS, 2 do
  j = j + 1
  local bucket, set, f = KEYS[i], KEYS[i + 1], ARGV[j]
  if f == '' or redis.call('EXISTS', set) == 1 then
    redis.call('SADD', set, k)
  else
    local field = string.sub(f, 2)
    local cur = redis.call('HGET', bucket, field)
    if not cur or cur == k then
      redis.call('HSET', bucket, field, k)
    else
      redis.call('SADD', set, cur, k)
      redis.call('HDEL', bucket, field)
    end
  end
end
return 1
