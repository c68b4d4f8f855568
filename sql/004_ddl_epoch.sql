-- smartcache schema, version 4: the capture's column check once per
-- session instead of once per statement.
--
-- Applied by `smartcache-invalidator install` after 003, inside the same
-- transaction. Why: the per-statement catalog lookup that makes a renamed,
-- dropped or retyped column harmless cost single-row writers ~9 % of
-- their throughput at 8 clients (BENCHMARKS.md). Columns only change by
-- DDL, so:
--
--   * smartcache.ddl_epoch counts schema changes. Event triggers (created
--     by install when its role may: PostgreSQL lets only superusers create
--     them) bump it at the end of every ALTER TABLE / TYPE / DOMAIN and on
--     every drop, inside the changing transaction, while it still holds
--     its lock on the table.
--   * A capture function that found its columns intact remembers, in a
--     session setting, the epoch it read before looking; it looks again
--     only when the epoch moved. A sequence is read without a query plan
--     and is not transactional, so an uncommitted change already counts.
--   * Without the event triggers, install writes capture functions that
--     check on every statement, as before.
--   * A session that sets smartcache.checked_* by hand skips its own
--     check: a deliberate act of a role that may write the table, not
--     defended against.

CREATE SEQUENCE IF NOT EXISTS smartcache.ddl_epoch MINVALUE 1 START 1 NO CYCLE;
-- last_value is NULL until first called; a NULL epoch must never match.
SELECT pg_catalog.setval('smartcache.ddl_epoch', 1, true);

CREATE OR REPLACE FUNCTION smartcache.note_ddl() RETURNS event_trigger
LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog AS $fn$
BEGIN
    PERFORM pg_catalog.nextval('smartcache.ddl_epoch'::pg_catalog.regclass);
EXCEPTION WHEN OTHERS THEN
    -- A migration must never fail because of smartcache.
    RAISE WARNING 'smartcache could not count this schema change (%); run smartcache-invalidator install', SQLERRM;
END
$fn$;
REVOKE ALL ON FUNCTION smartcache.note_ddl() FROM PUBLIC;
