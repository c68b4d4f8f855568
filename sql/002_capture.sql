-- smartcache schema, version 2: capture that never harms the writers.
--
-- Applied by `smartcache-invalidator install` after 001, inside the same
-- transaction. What changes and why:
--
--   * Capture runs with the installer's rights (SECURITY DEFINER, pinned
--     search_path), so any role that may write a watched table keeps
--     writing; nobody else gets any right on the smartcache schema.
--   * One outbox row per statement (transition tables) instead of one per
--     changed row: cols names the captured columns, npk how many of them
--     form the primary key, old_rows/new_rows hold one JSON array of
--     values per row, in the order of cols. When a captured column was
--     renamed, dropped or retyped since install, the rows go whole (JSON
--     objects) and broken names those columns: the daemon then invalidates
--     everything a template using them can produce.
--   * The doorbell is a lease, not a flag: an idle daemon keeps
--     smartcache.doorbell at "ring until" a few seconds ahead (epoch
--     milliseconds; 0 means "don't ring"). A busy daemon sets 0, and a dead
--     one stops renewing it, so writers ring only while a daemon waits for
--     them. A sequence is updated in place: no dead row versions for the
--     writers to walk while a long transaction holds the vacuum horizon.

REVOKE ALL ON SCHEMA smartcache FROM PUBLIC;

ALTER TABLE smartcache.outbox
    ADD COLUMN IF NOT EXISTS cols     text[],
    ADD COLUMN IF NOT EXISTS npk      smallint,
    ADD COLUMN IF NOT EXISTS broken   text[],
    ADD COLUMN IF NOT EXISTS old_rows jsonb,
    ADD COLUMN IF NOT EXISTS new_rows jsonb;

CREATE SEQUENCE IF NOT EXISTS smartcache.doorbell MINVALUE 0 START 0 NO CYCLE;

ALTER TABLE smartcache.wakeup DROP COLUMN IF EXISTS idle;

-- TRUNCATE is captured by each table's generated function now (it names
-- the configured table, so a renamed table keeps its templates).
DROP FUNCTION IF EXISTS smartcache.capture_truncate() CASCADE;

CREATE OR REPLACE FUNCTION smartcache.capture_canary() RETURNS trigger
LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS $fn$
BEGIN
    INSERT INTO smartcache.outbox (table_schema, table_name, op, new_key, new_row, created_at)
    VALUES ('smartcache', 'canary', 'I', ARRAY[NEW.id], '{}', clock_timestamp());
    IF (SELECT last_value FROM smartcache.doorbell)
       > (extract(epoch FROM statement_timestamp()) * 1000)::bigint THEN
        PERFORM pg_notify(channel, '') FROM smartcache.wakeup;
    END IF;
    RETURN NULL;
END
$fn$;

REVOKE ALL ON FUNCTION smartcache.capture_canary() FROM PUBLIC;
