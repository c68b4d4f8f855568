-- raise: lifts a generation key to at least a value, never lowers it.
-- Invariant: a generation key only grows while Redis keeps its writes, so a
-- value below the one recorded in PostgreSQL means writes were lost; after
-- the values were dropped for that, raising (not setting) keeps a
-- concurrent daemon's newer increment.
--
-- KEYS: generation key. ARGV: value. Returns the key's value afterwards.
local now = tonumber(redis.call('GET', KEYS[1]) or '0') or 0
local wanted = tonumber(ARGV[1])
if now < wanted then
  redis.call('SET', KEYS[1], ARGV[1])
  return wanted
end
return now
