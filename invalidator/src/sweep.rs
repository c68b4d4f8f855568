//! Keeps bookkeeping proportional to the live entries.
//!
//! Invalidation removes an entry from the dependency set it came through,
//! but the entry stays a member of its other dependencies' sets, and a
//! value that expires (TTL) or is evicted leaves its key behind in all of
//! them until that table or row changes, which may be never. The sweeper
//! walks the dependency sets at an interval and removes such members (see
//! [`smartcache_core::sweep::sweep`]); a member whose fill is in flight
//! (lease held) stays. Each round, and once when the daemon starts, it
//! also folds bookkeeping of the per-entry layout (written by an older
//! library) into the compact one ([`smartcache_core::upgrade`]).

use crate::shutdown::Shutdown;
use crate::telemetry::Telemetry;
use smartcache_core::conn::Conn;
use smartcache_core::keys::Namespace;
use std::sync::Arc;
use std::time::Duration;
use tracing::{debug, info, warn};

/// Sweeps every `every` until `stop`.
pub(crate) async fn run(
    ns: Namespace,
    redis: Conn,
    telemetry: Arc<Telemetry>,
    every: Duration,
    mut stop: Shutdown,
) {
    loop {
        tokio::select! {
            _ = stop.wait() => return,
            _ = tokio::time::sleep(every) => {}
        }
        let mut con = redis.clone();
        match smartcache_core::sweep::sweep(&mut con, &ns).await {
            Ok(removed) => {
                telemetry.swept.inc_by(removed);
                debug!(removed, "swept dependency sets");
            }
            Err(e) => warn!(error = %e, "sweeping dependency sets failed; trying again next round"),
        }
        upgrade(ns.clone(), redis.clone()).await;
    }
}

/// Folds bookkeeping of the per-entry layout into the compact one; a
/// failure is logged and retried with the next sweep.
pub(crate) async fn upgrade(ns: Namespace, redis: Conn) {
    let mut con = redis;
    match smartcache_core::upgrade::upgrade(&mut con, &ns).await {
        Ok(0) => {}
        Ok(entries) => info!(
            entries,
            "folded bookkeeping of the per-entry layout into the compact one"
        ),
        Err(e) => {
            warn!(error = %e, "upgrading bookkeeping of the per-entry layout failed; trying again with the next sweep")
        }
    }
}
