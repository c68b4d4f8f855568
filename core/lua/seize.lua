-- seize: the first step of an unconditional write. Invariant: the lease
-- passes to the writer whatever held it, so a fill (or a sweeper's fence)
-- that started before is refused afterwards; the value is stored only
-- after the key was registered under its dependencies, by fill.lua under
-- this token, so a value is never there without its registrations.
--
-- KEYS: lease. ARGV: token, lease ms. Returns 1.
redis.call('SET', KEYS[1], ARGV[1], 'PX', ARGV[2])
return 1
