-- describe: reads entries for the admin view. Invariant: it writes nothing,
-- and a key that vanished or was written by another program is described
-- rather than failing the listing.
--
-- KEYS: pairs (value, stamps). ARGV: the cache key of each pair. Returns
-- per entry {size, age}: size is the value's length in bytes (STRLEN;
-- MEMORY USAGE for a non-string value) or -1 if the key is gone, age the ms
-- since the library stored it or -1 if unknown.
local out = {}
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
for i = 1, #KEYS, 2 do
  local kind = redis.call('TYPE', KEYS[i])['ok']
  local size = -1
  if kind == 'string' then
    size = redis.call('STRLEN', KEYS[i])
  elseif kind ~= 'none' then
    size = redis.call('MEMORY', 'USAGE', KEYS[i]) or 0
  end
  local age = -1
  local b = redis.pcall('HGET', KEYS[i + 1], ARGV[(i + 1) / 2])
  local born = type(b) == 'string' and tonumber(string.match(b, '^%d+') or '')
  if born then age = math.max(0, now - born) end
  out[#out + 1] = {size, age}
end
return out
