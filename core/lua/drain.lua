-- drain: takes dependencies' registrants for invalidation. Invariant: no
-- registrant is forgotten before its entry is deleted. Each call moves the
-- row bucket field, the dependency set and the legacy drain set into an
-- entry of its own in the dependency's drains hash (field = the caller's
-- token, value = those members), which never changes afterwards, and
-- returns with them every entry already there: those of calls in progress
-- and of calls that died before their drop. An entry is deleted only by a
-- caller that got it here and dropped its members afterwards, so whatever
-- the calls around it do, what a dead call took comes back with the next
-- invalidation of that dependency. Registrations made meanwhile land in
-- the (new) bucket field or set and are kept.
--
-- KEYS: quadruples (row bucket, dependency set, legacy drain set, drains
-- hash); a table dependency passes its set as the bucket. ARGV: the
-- caller's token, then per quadruple '' for a table dependency or '#'
-- followed by the row's field. Returns per quadruple {members, tokens}: the
-- members to drop (repeats possible) and the entries to delete once they
-- are dropped (the caller's own last, if it took anything).
local function take(key, into)
  for _, m in ipairs(members(key)) do into[#into + 1] = m end
  if redis.call('EXISTS', key) == 1 then redis.call('DEL', key) end
end
-- Each redis.call costs about a microsecond on its own, which dominated
-- bulk statements: one EXISTS over every set of the call tells whether any
-- dependency needs more than its row field (most have nothing).
local probe = {}
for i = 1, #KEYS, 4 do
  probe[#probe + 1] = KEYS[i + 1]
  probe[#probe + 1] = KEYS[i + 2]
  probe[#probe + 1] = KEYS[i + 3]
end
local any = #probe > 0 and redis.call('EXISTS', unpack(probe)) > 0
local out = {}
local j = 1
for i = 1, #KEYS, 4 do
  j = j + 1
  local bucket, set, legacy, drains, f = KEYS[i], KEYS[i + 1], KEYS[i + 2], KEYS[i + 3], ARGV[j]
  local mine = {}
  if f ~= '' then
    local field = string.sub(f, 2)
    local cur = redis.pcall('HGET', bucket, field)
    if type(cur) == 'string' then
      mine[#mine + 1] = cur
      redis.call('HDEL', bucket, field)
    end
  end
  local all, tokens = {}, {}
  if any and redis.call('EXISTS', set, legacy, drains) > 0 then
    take(set, mine)
    take(legacy, mine)
    local kind = redis.call('TYPE', drains)['ok']
    if kind ~= 'hash' and kind ~= 'none' then redis.call('DEL', drains) end
    local found = redis.call('HGETALL', drains)
    for n = 1, #found, 2 do
      tokens[#tokens + 1] = found[n]
      -- An entry that does not decode (written by another program) is empty.
      local ok, list = pcall(cmsgpack.unpack, found[n + 1])
      if ok and type(list) == 'table' then
        for _, m in ipairs(list) do
          if type(m) == 'string' then all[#all + 1] = m end
        end
      end
    end
  end
  if #mine > 0 then
    redis.call('HSET', drains, ARGV[1], cmsgpack.pack(mine))
    -- A dependency named again later in this call finds this entry.
    any = true
    tokens[#tokens + 1] = ARGV[1]
    for _, m in ipairs(mine) do all[#all + 1] = m end
  end
  out[#out + 1] = {all, tokens}
end
return out
