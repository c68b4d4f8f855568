//! The end-to-end canary. At an interval it caches a key, commits a
//! heartbeat change to `smartcache.canary` through the same trigger →
//! outbox → daemon → Redis path as a user's change, and times how long
//! until the key is gone.
//!
//! A LISTEN connection can look healthy and receive nothing; a daemon can
//! hang on a dead socket. Neither shows up as an error, but both stall the
//! canary. A drain that makes progress is slow, not stalled; what the
//! monitor does about a stall is in [`crate::monitor`].

use crate::config::Config;
use crate::telemetry::Telemetry;
use redis::AsyncCommands;
use smartcache_core::conn::Conn;
use std::time::{Duration, Instant, SystemTime};
use tokio_postgres::types::Type;
use tokio_postgres::Client;

const BEAT_SQL: &str = "INSERT INTO smartcache.canary (id) VALUES ($1) \
     ON CONFLICT (id) DO UPDATE SET beat = smartcache.canary.beat + 1, beat_at = now()";

/// How one heartbeat went.
pub(crate) enum Beat {
    /// Invalidated this long after its commit.
    Done(Duration),
    /// Committed, but the key was not deleted in time while nothing else
    /// progressed either.
    Stalled,
    /// PostgreSQL or Redis is unreachable: reported by the main loop, not
    /// a silent failure.
    Skipped(String),
}

/// This daemon's heartbeat row and key.
pub(crate) struct Canary {
    id: String,
}

impl Canary {
    pub(crate) fn new() -> Self {
        let nanos = SystemTime::now()
            .duration_since(SystemTime::UNIX_EPOCH)
            .map(|d| d.as_nanos())
            .unwrap_or(0);
        Self {
            id: format!("{}-{nanos:x}", std::process::id()),
        }
    }

    /// On a new session: forget the rows of daemons long gone.
    pub(crate) async fn connected(&self, client: &Client) {
        let _ = client
            .batch_execute("DELETE FROM smartcache.canary WHERE beat_at < now() - interval '1 day'")
            .await;
    }

    /// On a clean stop.
    pub(crate) async fn remove(&self, client: &Client) {
        let _ = client
            .query_typed(
                "DELETE FROM smartcache.canary WHERE id = $1",
                &[(&self.id, Type::TEXT)],
            )
            .await;
    }

    /// One heartbeat, waiting up to the patience for its key to go.
    pub(crate) async fn beat(
        &self,
        client: &Client,
        redis: &mut Conn,
        telemetry: &Telemetry,
        config: &Config,
    ) -> Beat {
        let key = config
            .namespace
            .value_key(&smartcache_core::keys::canary_key(&self.id));
        // Generous: an idle daemon may only look every poll interval.
        let patience = (config.poll_interval * 4).max(Duration::from_secs(5));
        if let Err(e) = redis.set::<_, _, ()>(&key, 1).await {
            telemetry.set_redis_up(false);
            telemetry.error("redis", &e);
            return Beat::Skipped(e.to_string());
        }
        telemetry.set_redis_up(true);
        let progress_before = telemetry.progress();
        let start = Instant::now();
        // Unnamed, one round trip: it also works through transaction pooling.
        if let Err(e) = client
            .query_typed(BEAT_SQL, &[(&self.id, Type::TEXT)])
            .await
        {
            return Beat::Skipped(crate::pg::chain(&e));
        }
        let mut deadline = start + patience;
        let mut progress_seen = progress_before;
        loop {
            match redis.exists::<_, bool>(&key).await {
                Ok(false) => return Beat::Done(start.elapsed()),
                Ok(true) => {}
                Err(e) => {
                    telemetry.set_redis_up(false);
                    return Beat::Skipped(e.to_string());
                }
            }
            if Instant::now() > deadline {
                // Applying work ahead of the heartbeat (a backlog, a long
                // expansion): slow, not stalled. Another round, for as
                // long as something moves.
                let now = telemetry.progress();
                if now > progress_seen {
                    progress_seen = now;
                    deadline += patience;
                    continue;
                }
                return Beat::Stalled;
            }
            tokio::time::sleep(Duration::from_millis(2)).await;
        }
    }
}
