//! Notices when part of Redis lost its data.
//!
//! A Redis Cluster primary that restarts empty, or a failover that loses
//! the last writes, can take dependency sets with it while the values they
//! point at survive on other nodes: later changes would then miss those
//! values. The namespace's marker keys, spread over every slot range, tell:
//! when some are gone but not all, every cached value is dropped (see
//! [`smartcache_core::invalidate::drop_all_values`]).

use crate::shutdown::Shutdown;
use crate::telemetry::Telemetry;
use smartcache_core::conn::Conn;
use smartcache_core::invalidate::drop_all_values;
use smartcache_core::keys::Namespace;
use smartcache_core::markers::{check_markers, set_markers, Markers};
use std::sync::Arc;
use std::time::Duration;
use tracing::{debug, error, info, warn};

/// How often the markers are checked: at most this long may a lost
/// dependency set leave a value in place.
pub(crate) const EVERY: Duration = Duration::from_secs(1);

/// Checks the markers every [`EVERY`] until `stop`.
pub(crate) async fn run(ns: Namespace, redis: Conn, telemetry: Arc<Telemetry>, mut stop: Shutdown) {
    loop {
        let mut con = redis.clone();
        if let Err(e) = check(&mut con, &ns, &telemetry).await {
            debug!(error = %e, "checking the marker keys failed; trying again");
        }
        tokio::select! {
            _ = stop.wait() => return,
            _ = tokio::time::sleep(EVERY) => {}
        }
    }
}

async fn check(con: &mut Conn, ns: &Namespace, telemetry: &Telemetry) -> redis::RedisResult<()> {
    match check_markers(con, ns).await? {
        Markers::Intact => {}
        Markers::Absent => {
            set_markers(con, ns).await?;
            info!("set the marker keys that watch Redis for data loss");
        }
        Markers::Lost { missing } => {
            error!(
                missing,
                "part of Redis lost its data (a primary restarted empty, or a failover lost \
                 writes): dependency sets may be gone, so every cached value of the namespace \
                 is dropped"
            );
            telemetry.data_loss.inc();
            let dropped = drop_all_values(con, ns).await?;
            warn!(dropped, "dropped every cached value after a data loss");
        }
    }
    Ok(())
}
