//! Recent invalidations: the daemon appends one summary per applied batch
//! to a bounded Redis list (`{ns}:@sc:recent`, newest first, at most
//! [`RECENT_LEN`]) that the admin page reads.

use redis::aio::ConnectionLike;
use serde::{Deserialize, Serialize};
use smartcache_core::keys::{Namespace, RECENT_LEN};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

/// What one batch did.
///
/// ```
/// use smartcache_invalidator::recent::Batch;
/// let b = Batch::new(3, 2, 0.0004, 0.0012);
/// assert_eq!((b.events, b.deleted), (3, 2));
/// ```
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Batch {
    /// When it was applied, milliseconds since the Unix epoch (daemon clock).
    pub at_ms: u64,
    /// Outbox rows applied.
    pub events: u64,
    /// Redis values deleted.
    pub deleted: u64,
    /// Shortest commit → delete lag in the batch, milliseconds.
    pub lag_min_ms: f64,
    /// Longest commit → delete lag in the batch, milliseconds.
    pub lag_max_ms: f64,
}

impl Batch {
    /// A summary stamped now; lags in seconds.
    pub fn new(events: u64, deleted: u64, lag_min_s: f64, lag_max_s: f64) -> Self {
        let at_ms = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap_or(Duration::ZERO)
            .as_millis() as u64;
        Self {
            at_ms,
            events,
            deleted,
            lag_min_ms: lag_min_s * 1e3,
            lag_max_ms: lag_max_s * 1e3,
        }
    }
}

/// Appends `batch` and trims the list, in the background: the summary is
/// for people, so it never delays or fails the batch.
pub fn record<C>(con: &C, ns: &Namespace, batch: Batch)
where
    C: ConnectionLike + Clone + Send + 'static,
{
    let mut con = con.clone();
    let key = ns.recent_key();
    tokio::spawn(async move {
        let line = serde_json::to_string(&batch).expect("plain struct serializes");
        let result: redis::RedisResult<()> = redis::pipe()
            .atomic()
            .lpush(&key, line)
            .ignore()
            .ltrim(&key, 0, RECENT_LEN as isize - 1)
            .ignore()
            .query_async(&mut con)
            .await;
        if let Err(e) = result {
            tracing::debug!(error = %e, "could not record the batch summary for the admin page");
        }
    });
}

/// The recent batches, newest first; lines that do not parse are skipped.
pub async fn read<C: ConnectionLike + Send>(
    con: &mut C,
    ns: &Namespace,
) -> redis::RedisResult<Vec<Batch>> {
    let lines: Vec<String> = redis::cmd("LRANGE")
        .arg(ns.recent_key())
        .arg(0)
        .arg(RECENT_LEN - 1)
        .query_async(con)
        .await?;
    Ok(lines
        .iter()
        .filter_map(|l| serde_json::from_str(l).ok())
        .collect())
}
