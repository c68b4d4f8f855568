-- list: reads registrations for the admin view and for TRUNCATE.
-- Invariant: it writes nothing, and a key of another type (written by
-- another program) reads as empty rather than failing the caller.
--
-- KEYS: dependency sets and row buckets of one slot. ARGV: per key 's' (a
-- set: its members) or 'b' (a row bucket: field, value, field, value...).
-- Returns one list per key.
local out = {}
for i = 1, #KEYS do
  local r
  if ARGV[i] == 'b' then r = redis.pcall('HGETALL', KEYS[i]) else r = redis.pcall('SMEMBERS', KEYS[i]) end
  if r.err then r = {} end
  out[i] = r
end
return out
