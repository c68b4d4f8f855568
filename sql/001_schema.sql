-- smartcache schema, version 1.
--
-- Applied by `smartcache-invalidator install` inside one transaction; every
-- statement is idempotent. The per-table functions and triggers are not
-- here: install generates them from the config (see below, and
-- `smartcache-invalidator install --dry-run` for the exact statements).
--
-- Design: the outbox is the truth, NOTIFY is only a doorbell.
--   * A row trigger writes what changed (table, operation, primary key and
--     the columns the key templates use, for OLD and NEW) into
--     smartcache.outbox in the writer's own transaction, so only committed
--     changes ever reach the daemon and nothing is lost while no daemon runs.
--   * A NOTIFY in every writing transaction would serialise commits (the
--     notify queue lock is held across the commit's WAL flush). So the
--     trigger rings only while smartcache.wakeup.idle is true, which the
--     daemon sets when it has drained the outbox and clears when it starts
--     draining. Under sustained writes the daemon is busy and nobody rings;
--     a bounded poll in the daemon catches the rare race.
--   * Row data never travels in a NOTIFY payload (8000-byte limit): the
--     payload is empty.

CREATE SCHEMA IF NOT EXISTS smartcache;

COMMENT ON SCHEMA smartcache IS
    'Objects of the smartcache invalidator; managed by smartcache-invalidator install/uninstall.';

-- One row: the installed schema version.
CREATE TABLE IF NOT EXISTS smartcache.version (
    singleton      boolean PRIMARY KEY DEFAULT true CHECK (singleton),
    schema_version integer NOT NULL
);

-- One row: the doorbell state, read by every capturing trigger.
CREATE TABLE IF NOT EXISTS smartcache.wakeup (
    singleton boolean PRIMARY KEY DEFAULT true CHECK (singleton),
    channel   text    NOT NULL,
    idle      boolean NOT NULL DEFAULT true
);

-- Committed changes not yet applied to Redis. The daemon claims rows with
-- FOR UPDATE SKIP LOCKED, deletes the affected keys, then deletes the rows
-- in the same transaction.
CREATE TABLE IF NOT EXISTS smartcache.outbox (
    id           bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    table_schema text        NOT NULL,
    table_name   text        NOT NULL,
    op           "char"      NOT NULL,  -- I, U, D or T (truncate)
    old_key      text[],                -- primary key of OLD, as text
    new_key      text[],                -- primary key of NEW, as text
    old_row      jsonb,                 -- template columns of OLD: {"col": "text" | null}
    new_row      jsonb,                 -- template columns of NEW
    created_at   timestamptz NOT NULL DEFAULT clock_timestamp()  -- for the lag metric
);

-- Outbox rows the daemon could not interpret (hand-inserted or garbled).
-- They are moved here so they never block the queue; inspect, then delete.
CREATE TABLE IF NOT EXISTS smartcache.dead_letter (
    id       bigint PRIMARY KEY,
    event    jsonb       NOT NULL,
    error    text        NOT NULL,
    moved_at timestamptz NOT NULL DEFAULT now()
);

-- Row triggers: `install` generates one function per watched table,
-- smartcache."capture:schema.table"(), that reads the primary key and the
-- template columns straight from OLD and NEW (no whole-row conversion, no
-- subqueries: the trigger runs in every writing transaction). Values are
-- rendered as text the way jsonb renders them (42, 1.50, a uuid,
-- 2024-05-01T10:00:00). For `products` with keys ["product:{id}",
-- "category:{category_id}"] the UPDATE branch reads:
--
--   INSERT INTO smartcache.outbox (table_schema, table_name, op, old_key, new_key, old_row, new_row)
--   VALUES (TG_TABLE_SCHEMA, TG_TABLE_NAME, 'U',
--           ARRAY[to_jsonb(OLD."id") #>> '{}'],
--           ARRAY[to_jsonb(NEW."id") #>> '{}'],
--           jsonb_build_object('id', to_jsonb(OLD."id") #>> '{}', 'category_id', to_jsonb(OLD."category_id") #>> '{}'),
--           jsonb_build_object('id', to_jsonb(NEW."id") #>> '{}', 'category_id', to_jsonb(NEW."category_id") #>> '{}'));
--   PERFORM pg_notify(channel, '') FROM smartcache.wakeup WHERE idle;
--
-- `smartcache-invalidator install --dry-run` prints every generated
-- function and trigger.

-- The daemons' canary: each running daemon upserts its own row at an
-- interval. The change travels the same trigger -> outbox -> daemon ->
-- Redis path as a user's change and must delete the Redis key
-- {namespace}:@sc:canary:{id}; if it does not in time, something failed
-- silently (a LISTEN connection that receives nothing, a stuck daemon) and
-- the daemon reconnects and replays.
CREATE TABLE IF NOT EXISTS smartcache.canary (
    id      text        PRIMARY KEY,
    beat    bigint      NOT NULL DEFAULT 0,
    beat_at timestamptz NOT NULL DEFAULT now()
);

CREATE OR REPLACE FUNCTION smartcache.capture_canary() RETURNS trigger
LANGUAGE plpgsql AS $fn$
BEGIN
    INSERT INTO smartcache.outbox (table_schema, table_name, op, new_key, new_row, created_at)
    VALUES (TG_TABLE_SCHEMA, TG_TABLE_NAME, 'I', ARRAY[NEW.id], '{}', clock_timestamp());
    PERFORM pg_notify(channel, '') FROM smartcache.wakeup WHERE idle;
    RETURN NULL;
END
$fn$;

DROP TRIGGER IF EXISTS smartcache_canary ON smartcache.canary;
CREATE TRIGGER smartcache_canary AFTER INSERT OR UPDATE ON smartcache.canary
    FOR EACH ROW EXECUTE FUNCTION smartcache.capture_canary();

-- Statement trigger for TRUNCATE: every key the table's templates can
-- produce is invalidated.
CREATE OR REPLACE FUNCTION smartcache.capture_truncate() RETURNS trigger
LANGUAGE plpgsql AS $fn$
BEGIN
    INSERT INTO smartcache.outbox (table_schema, table_name, op, created_at)
    VALUES (TG_TABLE_SCHEMA, TG_TABLE_NAME, 'T', clock_timestamp());
    PERFORM pg_notify(channel, '') FROM smartcache.wakeup WHERE idle;
    RETURN NULL;
END
$fn$;
