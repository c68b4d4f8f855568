//! Keeps bookkeeping proportional to the live entries.
//!
//! Invalidation and `clear` remove an entry's registrations with it, but a
//! value that expires (TTL) or is evicted leaves its key behind in the
//! dependency sets until that table or row changes, which may be never.
//! The sweeper walks the dependency sets at an interval and removes such
//! members; a member whose fill is in flight (lease held) stays.

use crate::config::Config;
use crate::shutdown::Shutdown;
use crate::telemetry::Telemetry;
use redis::aio::ConnectionLike;
use redis::{RedisResult, Script};
use smartcache::keys::{Namespace, SWEEP_LUA};
use std::sync::{Arc, LazyLock};
use std::time::Duration;
use tracing::{debug, warn};

static SWEEP: LazyLock<Script> = LazyLock::new(|| Script::new(SWEEP_LUA));

/// Members checked per script call: short enough never to block Redis.
const CHUNK: usize = 200;

/// Sweeps every `every` until `stop`.
pub(crate) async fn run<C: ConnectionLike + Send + Clone>(
    config: Arc<Config>,
    redis: C,
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
        match sweep(&mut con, &config.namespace).await {
            Ok(removed) => {
                telemetry.swept.inc_by(removed);
                debug!(removed, "swept dependency sets");
            }
            Err(e) => warn!(error = %e, "sweeping dependency sets failed; trying again next round"),
        }
    }
}

/// One pass over every dependency set of the namespace; returns how many
/// registrations of gone entries it removed.
///
/// ```no_run
/// # async fn demo() -> redis::RedisResult<()> {
/// let client = redis::Client::open("redis://127.0.0.1:6379/0")?;
/// let mut con = client.get_multiplexed_async_connection().await?;
/// let ns = smartcache::keys::Namespace::default();
/// let removed = smartcache_invalidator::sweep::sweep(&mut con, &ns).await?;
/// # Ok(()) }
/// ```
pub async fn sweep<C: ConnectionLike + Send>(con: &mut C, ns: &Namespace) -> RedisResult<u64> {
    let mut removed = 0;
    let mut cursor: u64 = 0;
    loop {
        let (next, sets): (u64, Vec<String>) = redis::cmd("SCAN")
            .arg(cursor)
            .arg("MATCH")
            .arg(ns.match_dep_sets())
            .arg("COUNT")
            .arg(200)
            .query_async(con)
            .await?;
        for set in &sets {
            let Some(dep) = ns.dep_id_of(set) else {
                continue;
            };
            removed += sweep_set(con, ns, set, dep.as_str()).await?;
        }
        if next == 0 {
            return Ok(removed);
        }
        cursor = next;
    }
}

async fn sweep_set<C: ConnectionLike + Send>(
    con: &mut C,
    ns: &Namespace,
    set: &str,
    dep: &str,
) -> RedisResult<u64> {
    let mut removed = 0;
    let mut cursor: u64 = 0;
    loop {
        let reply: RedisResult<(u64, Vec<String>)> = redis::cmd("SSCAN")
            .arg(set)
            .arg(cursor)
            .arg("COUNT")
            .arg(CHUNK)
            .query_async(con)
            .await;
        // Not a set (another program wrote it): invalidation deals with it.
        let Ok((next, members)) = reply else {
            return Ok(removed);
        };
        if !members.is_empty() {
            let mut inv = SWEEP.prepare_invoke();
            inv.arg(ns.prefix()).arg(dep).arg(&members);
            removed += inv.invoke_async::<u64>(con).await?;
        }
        if next == 0 {
            return Ok(removed);
        }
        cursor = next;
    }
}
