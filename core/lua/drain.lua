-- drain: takes dependency sets for invalidation. Invariant: no member is
-- forgotten before its entry is deleted: members move from the dependency
-- set into its drain set, and leave the drain set only after the caller
-- dropped them. Registrations made meanwhile land in the (new) dependency
-- set and are kept; members left in a drain set by a daemon that died
-- midway come back with the next invalidation of that dependency.
--
-- KEYS: pairs (dependency set, its drain set). Returns the drain set's
-- members per pair.
local out = {}
for i = 1, #KEYS, 2 do
  local set, drain = KEYS[i], KEYS[i + 1]
  local t = redis.call('TYPE', set)['ok']
  if t == 'set' then
    if redis.call('TYPE', drain)['ok'] ~= 'set' then redis.call('DEL', drain) end
    redis.call('SUNIONSTORE', drain, drain, set)
  end
  if t ~= 'none' then redis.call('DEL', set) end
  out[#out + 1] = members(drain)
end
return out
