-- seize: the first step of an unconditional write. Invariant: the lease
-- passes to the writer whatever held it, so a fill (or a sweeper's fence)
-- that started before is refused afterwards; the value is stored only
-- after the key was registered under its dependencies, by fill.lua under
-- this token, so a value is never there without its registrations. A
-- sweeper's fence (token 'sweep:...') is left alone unless ARGV[3] is '1':
-- the sweeper is removing a registration, and one the writer made before
-- that removal would be lost until the sweeper puts it back, so the writer
-- waits for the fence to go first (and takes it after a bound, should the
-- sweeper have died).
--
-- KEYS: lease. ARGV: token, lease ms, force ('1' or ''). Returns 1 when
-- the lease is the writer's, 0 when a sweeper's fence holds it.
if ARGV[3] ~= '1' then
  local cur = redis.pcall('GET', KEYS[1])
  if type(cur) == 'string' and string.sub(cur, 1, 6) == 'sweep:' then return 0 end
end
redis.call('SET', KEYS[1], ARGV[1], 'PX', ARGV[2])
return 1
