//! The end-to-end canary. At an interval it caches a key, commits a
//! heartbeat change to `smartcache.canary` through the same trigger →
//! outbox → daemon → Redis path as a user's change, and times how long
//! until the key is gone.
//!
//! A LISTEN connection can look healthy and receive nothing; a daemon can
//! hang in a query on a dead socket. Neither shows up as an error, but both
//! stall the canary. A stall is reported to `/healthz` and makes the daemon
//! reconnect and replay the outbox.

use crate::config::Config;
use crate::pg;
use crate::shutdown::Shutdown;
use crate::telemetry::Telemetry;
use redis::AsyncCommands;
use smartcache_core::conn::Conn;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};
use tokio::sync::Notify;
use tracing::{debug, warn};

const BEAT_SQL: &str = "INSERT INTO smartcache.canary (id) VALUES ($1) \
     ON CONFLICT (id) DO UPDATE SET beat = smartcache.canary.beat + 1, beat_at = now()";

/// Why one heartbeat did not complete.
enum Miss {
    /// Committed, but the key was not deleted in time while nothing else
    /// was being applied either.
    Stalled,
    /// PostgreSQL or Redis is unreachable: reported by the main loop, not
    /// a silent failure.
    Unreachable(String),
}

/// Runs until `stop`; rings `stalled` on every stall.
pub(crate) async fn run(
    config: Arc<Config>,
    pg_config: tokio_postgres::Config,
    mut redis: Conn,
    telemetry: Arc<Telemetry>,
    stalled: Arc<Notify>,
    every: Duration,
    mut stop: Shutdown,
) {
    let id = instance_id();
    let key = config
        .namespace
        .value_key(&smartcache_core::keys::canary_key(&id));
    // Generous: an idle daemon may only look every poll interval.
    let patience = (config.poll_interval * 4).max(Duration::from_secs(5));
    // Its own name, so operators (and tests) can tell the two connections
    // apart in pg_stat_activity.
    let mut pg_config = pg_config;
    pg_config.application_name("smartcache-invalidator canary");
    let mut session: Option<pg::Session> = None;
    loop {
        tokio::select! {
            _ = stop.wait() => break,
            _ = tokio::time::sleep(every) => {}
        }
        if session.as_ref().is_some_and(|s| s.driver.is_finished()) {
            session = None;
        }
        if session.is_none() {
            match pg::connect(&pg_config).await {
                Ok(s) => {
                    let _ = s
                        .client
                        .execute(
                            "DELETE FROM smartcache.canary WHERE beat_at < now() - interval '1 day'",
                            &[],
                        )
                        .await;
                    session = Some(s);
                }
                Err(e) => {
                    debug!(error = %e, "canary: PostgreSQL unreachable, skipping this beat");
                    continue;
                }
            }
        }
        let client = &session.as_ref().expect("connected above").client;
        match beat(client, &mut redis, &telemetry, &id, &key, patience).await {
            Ok(lag) => {
                debug!(
                    lag_ms = lag.as_secs_f64() * 1e3,
                    "canary: heartbeat invalidated"
                );
                telemetry.canary(Some(lag));
            }
            Err(Miss::Stalled) => {
                warn!(
                    patience_ms = patience.as_millis() as u64,
                    "canary stalled: a committed heartbeat was not invalidated in time; reconnecting and replaying"
                );
                telemetry.canary(None);
                telemetry.error("canary", "heartbeat not invalidated in time");
                stalled.notify_one();
            }
            Err(Miss::Unreachable(e)) => {
                debug!(error = %e, "canary: skipping this beat");
                session = None;
            }
        }
    }
    if let Some(s) = session {
        let _ = s
            .client
            .execute("DELETE FROM smartcache.canary WHERE id = $1", &[&id])
            .await;
    }
}

async fn beat(
    client: &tokio_postgres::Client,
    redis: &mut Conn,
    telemetry: &Telemetry,
    id: &str,
    key: &str,
    patience: Duration,
) -> Result<Duration, Miss> {
    let unreachable = |e: &dyn std::fmt::Display| Miss::Unreachable(e.to_string());
    let redis_down = |e: redis::RedisError| {
        telemetry.set_redis_up(false);
        telemetry.error("redis", &e);
        Miss::Unreachable(e.to_string())
    };
    let _: () = redis.set(key, 1).await.map_err(redis_down)?;
    telemetry.set_redis_up(true);
    let applied_before = telemetry.events.get();
    let start = Instant::now();
    client
        .execute(BEAT_SQL, &[&id])
        .await
        .map_err(|e| unreachable(&e))?;
    let mut deadline = start + patience;
    loop {
        let exists: bool = redis.exists(key).await.map_err(redis_down)?;
        if !exists {
            return Ok(start.elapsed());
        }
        if Instant::now() > deadline {
            // Still applying a backlog ahead of the heartbeat: slow, not
            // stalled. Give it another round.
            if telemetry.events.get() > applied_before && start.elapsed() < patience * 20 {
                deadline += patience;
                continue;
            }
            return Err(Miss::Stalled);
        }
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
}

/// Identifies this daemon's canary row: process id and start time.
fn instance_id() -> String {
    let nanos = SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .map(|d| d.as_nanos())
        .unwrap_or(0);
    format!("{}-{nanos:x}", std::process::id())
}
