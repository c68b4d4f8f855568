-- smartcache schema, version 3: noticing Redis going back in time.
--
-- Applied by `smartcache-invalidator install` after 002.
--
-- After each batch the daemon increments a generation key on every Redis
-- primary, after that batch's deletions on the same connection, and records
-- the values here in the batch's transaction. Redis persistence and
-- replication keep a prefix of each server's writes, so a server that
-- restarted from an older snapshot, or a replica promoted without the last
-- writes, shows a generation below the one recorded here: deletions were
-- lost and cached values may be stale again, so the daemon drops every value
-- of the namespace.

CREATE TABLE IF NOT EXISTS smartcache.redis_gen (
    namespace text   NOT NULL,
    key       text   NOT NULL,  -- the generation key on one Redis primary
    gen       bigint NOT NULL,  -- the highest value a committed batch saw
    PRIMARY KEY (namespace, key)
);
