//! Noticing Redis or PostgreSQL going back in time, and dropping what may
//! then be stale.
//!
//! **Redis.** After each batch the daemon increments a generation key on
//! every primary (after the batch's deletions there) and records the values
//! in `smartcache.redis_gen`, in the batch's transaction. A server restarted
//! from an older snapshot or append-only file, or a replica promoted without
//! the last writes, keeps a prefix of its writes: its generation is then
//! below the recorded one, some deletions were lost, and values they removed
//! may be back. The next batch (its increment is not above the record) or
//! the monitor's check every second (the key reads below the record) sees
//! it, and every value of the namespace is dropped.
//!
//! **PostgreSQL.** The monitor records the server's system identifier,
//! timeline and WAL position in Redis every second. A different system, a
//! new timeline (a promoted standby, a point-in-time recovery) or a WAL
//! position behind the record (a restored backup) means commits the cache
//! was filled from may be gone: every value is dropped.

use crate::telemetry::Telemetry;
use redis::AsyncCommands;
use smartcache_core::conn::Conn;
use smartcache_core::keys::Namespace;
use smartcache_core::markers;
use std::time::{Duration, Instant};
use tokio_postgres::Client;
use tracing::{error, warn};

/// How often a cluster's primaries are listed again.
const TOPOLOGY_EVERY: Duration = Duration::from_secs(30);

/// Records a batch's generations and returns the keys whose increment did
/// not exceed the record, with the recorded value: writes were lost there.
pub(crate) const RECORD_SQL: &str = "WITH v(key, gen) AS (SELECT * FROM unnest($2::text[], $3::int8[])), \
     before AS (SELECT v.key, g.gen FROM v JOIN smartcache.redis_gen g \
         ON g.namespace = $1 AND g.key = v.key WHERE g.gen >= v.gen), \
     up AS (INSERT INTO smartcache.redis_gen (namespace, key, gen) SELECT $1, key, gen FROM v \
         ON CONFLICT (namespace, key) DO UPDATE SET gen = greatest(smartcache.redis_gen.gen, excluded.gen)) \
     SELECT key, gen FROM before";

/// The generation keys of the current primaries.
pub(crate) struct Generations {
    keys: Vec<String>,
    listed: Option<Instant>,
}

impl Generations {
    pub(crate) fn new() -> Self {
        Self {
            keys: Vec::new(),
            listed: None,
        }
    }

    /// The keys, listing the primaries again when it is time.
    pub(crate) async fn keys(
        &mut self,
        con: &Conn,
        ns: &Namespace,
    ) -> redis::RedisResult<&[String]> {
        let due = self
            .listed
            .is_none_or(|at| con.is_cluster() && at.elapsed() >= TOPOLOGY_EVERY);
        if due {
            self.keys = markers::generation_keys(con, ns).await?;
            self.listed = Some(Instant::now());
        }
        Ok(&self.keys)
    }
}

/// A regression found on one generation key: what was recorded.
pub(crate) type Regressed = Vec<(String, i64)>;

/// Compares Redis' generation keys with the record: the keys that lost
/// writes. PostgreSQL is read first: a batch increments Redis before it
/// records, so a batch in flight can't look like a regression.
pub(crate) async fn check_redis(
    client: &Client,
    redis: &mut Conn,
    ns: &Namespace,
    keys: &[String],
) -> anyhow::Result<Regressed> {
    let rows = client
        .query(
            "SELECT key, gen FROM smartcache.redis_gen WHERE namespace = $1 AND key = ANY($2)",
            &[&ns.name(), &keys],
        )
        .await?;
    let now = markers::read_generations(redis, keys).await?;
    let mut out = Vec::new();
    for r in rows {
        let (key, recorded): (String, i64) = (r.get(0), r.get(1));
        let i = keys.iter().position(|k| *k == key).expect("asked for");
        if now[i].is_none_or(|v| v < recorded) {
            out.push((key, recorded));
        }
    }
    Ok(out)
}

/// Where PostgreSQL is: `system/timeline/lsn` (the system identifier is
/// `-` where `pg_control_system()` is not allowed).
async fn postgres_position(
    client: &Client,
) -> Result<(String, String, u64), tokio_postgres::Error> {
    let system = client
        .query_one(
            "SELECT system_identifier::text FROM pg_control_system()",
            &[],
        )
        .await
        .map(|r| r.get::<_, String>(0))
        .unwrap_or_else(|_| "-".to_owned());
    let row = client
        .query_one(
            "SELECT substr(pg_walfile_name(pg_current_wal_lsn()), 1, 8), \
                    (pg_current_wal_lsn() - '0/0'::pg_lsn)::text",
            &[],
        )
        .await?;
    let timeline: String = row.get(0);
    let lsn: String = row.get(1);
    Ok((system, timeline, lsn.parse().unwrap_or(0)))
}

/// Compares PostgreSQL with what was recorded in Redis and records where
/// it is now; `Some(cause)` when it went back in time.
pub(crate) async fn check_postgres(
    client: &Client,
    redis: &mut Conn,
    ns: &Namespace,
) -> anyhow::Result<Option<String>> {
    let (system, timeline, lsn) = postgres_position(client).await?;
    let key = ns.postgres_position_key();
    let recorded: Option<String> = redis.get(&key).await?;
    let cause = recorded.and_then(|r| {
        let mut parts = r.split('/');
        let (s, t, l) = (parts.next()?, parts.next()?, parts.next()?.parse::<u64>().ok()?);
        if s != "-" && system != "-" && s != system {
            Some(format!("the server's system identifier changed from {s} to {system} (a different or restored cluster)"))
        } else if t != timeline {
            Some(format!("the timeline changed from {t} to {timeline} (a promoted standby or a point-in-time recovery)"))
        } else if lsn < l {
            Some(format!("the WAL position went back from {l} to {lsn} (a restored backup)"))
        } else {
            None
        }
    });
    let _: () = redis
        .set(&key, format!("{system}/{timeline}/{lsn}"))
        .await?;
    Ok(cause)
}

/// Drops every value of the namespace after `store` went back in time and
/// raises the generation keys that regressed above their record.
pub(crate) async fn recover(
    redis: &mut Conn,
    ns: &Namespace,
    telemetry: &Telemetry,
    store: &'static str,
    cause: &str,
    regressed: &Regressed,
) -> redis::RedisResult<()> {
    error!(
        store,
        cause,
        "went back in time: changes the cache had seen may be undone, so every cached value of the \
         namespace is dropped"
    );
    telemetry.time_travel(store);
    let dropped = smartcache_core::invalidate::drop_all_values(redis, ns).await?;
    for (key, recorded) in regressed {
        markers::raise_generation(redis, key, recorded + 1).await?;
    }
    warn!(
        store,
        dropped, "dropped every cached value; caching resumes"
    );
    Ok(())
}
