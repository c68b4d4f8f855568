-- drain: takes dependencies' registrants for invalidation. Invariant: no
-- registrant is forgotten before its entry is deleted: registrants move
-- from the row bucket field and the dependency set into the drain set, and
-- leave the drain set only after the caller dropped them. Registrations
-- made meanwhile land in the (new) bucket field or set and are kept;
-- members left in a drain set by a daemon that died midway come back with
-- the next invalidation of that dependency.
--
-- KEYS: triples (row bucket, dependency set, drain set); a table dependency
-- passes its set as the bucket. ARGV: per triple '' for a table dependency
-- or '#' followed by the row's field. Returns the drain set's members per
-- triple.
local out = {}
local j = 0
for i = 1, #KEYS, 3 do
  j = j + 1
  local bucket, set, drain, f = KEYS[i], KEYS[i + 1], KEYS[i + 2], ARGV[j]
  local kind = redis.call('TYPE', drain)['ok']
  if kind ~= 'set' and kind ~= 'none' then redis.call('DEL', drain) end
  if f ~= '' then
    local field = string.sub(f, 2)
    local cur = redis.pcall('HGET', bucket, field)
    if type(cur) == 'string' then
      redis.call('SADD', drain, cur)
      redis.call('HDEL', bucket, field)
    end
  end
  local t = redis.call('TYPE', set)['ok']
  if t == 'set' then redis.call('SUNIONSTORE', drain, drain, set) end
  if t ~= 'none' then redis.call('DEL', set) end
  out[#out + 1] = members(drain)
end
return out
