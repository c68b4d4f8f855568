-- unregister: the sweeper's removal from a row bucket. Invariant: a field
-- is removed only while it still names the fenced entry; a fill that
-- registered another key under the row since the bucket was read keeps its
-- registration.
--
-- KEYS: a row bucket. ARGV: pairs (field, cache key). Returns how many
-- fields were removed.
local removed = 0
for i = 1, #ARGV, 2 do
  if redis.call('HGET', KEYS[1], ARGV[i]) == ARGV[i + 1] then
    removed = removed + redis.call('HDEL', KEYS[1], ARGV[i])
  end
end
return removed
