//! The tracking connections that keep the local tier coherent: one RESP3
//! connection per node (the server, or each cluster primary) with
//! `CLIENT TRACKING ON`. The local tier's `GET`s go through them, so Redis
//! remembers which keys each one read and pushes an invalidation on the
//! same connection when one changes; the push is applied inside the
//! connection's reader, before any later reply is delivered.
//!
//! A supervisor task opens them, sends a heartbeat through each every
//! `max_lag / 4` and vouches for the local tier when all answer. A
//! connection that drops (the reader sees it at once), a heartbeat later
//! than `max_lag`, a cluster node that is no longer a primary (its
//! heartbeat fails), or a cluster whose slot map changed flushes the tier
//! and pauses it until every connection is open again.

use std::collections::HashMap;
use std::convert::Infallible;
use std::sync::{Arc, RwLock};
use std::time::{Duration, Instant};

use futures_util::future::try_join_all;
use redis::aio::MultiplexedConnection;
use redis::{AsyncConnectionConfig, PushInfo, PushKind, RedisResult, Value};
use smartcache_core::conn::{node_client, Options};
use smartcache_core::keys::{slot, Slot};
use tokio::sync::Notify;
use tracing::{debug, info, warn};

use crate::error::error_chain;
use crate::local::Local;

/// `CLIENT SETNAME` of a tracking connection, followed by the namespace.
pub(crate) const CLIENT_NAME: &str = "smartcache-tracking.";

/// How often a cluster's slot map is compared with the one tracked.
const TOPOLOGY_EVERY: Duration = Duration::from_secs(1);

/// One slot range and the primary serving it, from `CLUSTER SLOTS`.
type Range = (u16, u16, String, u16);

struct Router {
    nodes: Vec<MultiplexedConnection>,
    /// Node index per slot; `None` on a single server.
    slots: Option<HashMap<Slot, usize>>,
    ranges: Vec<Range>,
}

struct Shared {
    local: Arc<Local>,
    prefix: String,
    router: RwLock<Option<Arc<Router>>>,
    /// Rings when tracking must be rebuilt at once (also from a closing
    /// connection's reader, which must not hold `Shared` itself).
    rebuild: Arc<Notify>,
}

/// The local tier with its tracking connections; the supervisor stops when
/// this is dropped.
pub(crate) struct Tracking {
    shared: Arc<Shared>,
    task: tokio::task::AbortHandle,
}

impl Drop for Tracking {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl Tracking {
    /// Starts the supervisor on the current tokio runtime.
    pub(crate) fn start(
        local: Local,
        prefix: &str,
        url: &str,
        options: &Options,
        max_lag: Duration,
    ) -> Self {
        let shared = Arc::new(Shared {
            local: Arc::new(local),
            prefix: prefix.to_owned(),
            router: RwLock::new(None),
            rebuild: Arc::new(Notify::new()),
        });
        let task = tokio::spawn(supervise(
            Arc::clone(&shared),
            url.to_owned(),
            options.clone(),
            max_lag,
        ))
        .abort_handle();
        Self { shared, task }
    }

    pub(crate) fn local(&self) -> &Local {
        &self.shared.local
    }

    /// The tracking connection of the node serving `vkey`, while tracking
    /// is established.
    pub(crate) fn route(&self, vkey: &str) -> Option<MultiplexedConnection> {
        let router = self.shared.router.read().expect("not poisoned").clone()?;
        let i = match &router.slots {
            None => 0,
            Some(slots) => *slots.get(&slot(vkey))?,
        };
        router.nodes.get(i).cloned()
    }

    /// A tracked `GET` failed (redirected: the slot map changed; or the
    /// connection closed): rebuild tracking now.
    pub(crate) fn redirected(&self) {
        self.shared.rebuild.notify_one();
    }
}

/// `GET` and `PTTL` of `vkey` in one round trip on a tracking connection.
pub(crate) async fn tracked_get(
    mut con: MultiplexedConnection,
    vkey: &str,
) -> RedisResult<(Option<Vec<u8>>, i64)> {
    redis::pipe()
        .get(vkey)
        .cmd("PTTL")
        .arg(vkey)
        .query_async(&mut con)
        .await
}

async fn supervise(shared: Arc<Shared>, url: String, options: Options, max_lag: Duration) {
    let mut pause = Duration::from_millis(50);
    let mut failing = false;
    loop {
        match connect(&shared, &url, &options).await {
            Ok(router) => {
                let router = Arc::new(router);
                shared.local.flush("tracking established");
                *shared.router.write().expect("not poisoned") = Some(Arc::clone(&router));
                let log = if failing { info_log } else { debug_log };
                log(&shared.prefix, router.nodes.len());
                failing = false;
                pause = Duration::from_millis(50);
                let why = watch(&shared, &router, max_lag).await;
                *shared.router.write().expect("not poisoned") = None;
                shared.local.flush(why);
                warn!(
                    namespace = shared.prefix.trim_end_matches(':'),
                    why, "local tier flushed and paused until tracking is re-established"
                );
            }
            Err(e) => {
                if !failing {
                    warn!(
                        namespace = shared.prefix.trim_end_matches(':'),
                        error = %error_chain(&e),
                        "local tier: cannot open the tracking connection; reads go to Redis"
                    );
                }
                failing = true;
            }
        }
        tokio::time::sleep(pause).await;
        pause = (pause * 2).min(Duration::from_secs(2));
    }
}

fn info_log(prefix: &str, nodes: usize) {
    info!(
        namespace = prefix.trim_end_matches(':'),
        nodes, "local tier: tracking re-established; serving again"
    );
}

fn debug_log(prefix: &str, nodes: usize) {
    debug!(
        namespace = prefix.trim_end_matches(':'),
        nodes, "local tier: tracking established"
    );
}

/// Heartbeats until something is wrong; returns what.
async fn watch(shared: &Shared, router: &Router, max_lag: Duration) -> &'static str {
    let mut beat = tokio::time::interval(max_lag / 4);
    beat.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut next_topology = Instant::now() + TOPOLOGY_EVERY;
    // On a cluster `WAIT 0 0` (answered at once) instead of `PING`: a
    // primary that a graceful failover made a replica keeps answering
    // `PING` on the same connection, but changes now go to the new primary
    // and reach this connection only through replication (if it stalls,
    // not before the next slot map check); `WAIT` fails on a replica.
    let heartbeat = if router.slots.is_some() {
        redis::cmd("WAIT").arg(0).arg(0).to_owned()
    } else {
        redis::cmd("PING")
    };
    loop {
        // A ring (a connection closed, a read was redirected) checks at
        // once; it may also be left over from connections already gone.
        let rung = tokio::select! {
            _ = beat.tick() => false,
            _ = shared.rebuild.notified() => true,
        };
        let epoch = shared.local.epoch();
        let sent = shared.local.now_ms();
        let pings = try_join_all(router.nodes.iter().map(|con| {
            let (mut con, heartbeat) = (con.clone(), &heartbeat);
            async move { heartbeat.query_async::<Value>(&mut con).await }
        }));
        match tokio::time::timeout(max_lag, pings).await {
            Ok(Ok(_)) => shared.local.vouch(epoch, sent, max_lag),
            Ok(Err(e)) if e.code().is_some() => return "a tracked node refused the heartbeat (a replica now, or WAIT not permitted)",
            Ok(Err(_)) => return "a tracking connection failed",
            Err(_) => return "a tracking connection lags",
        }
        if router.slots.is_some() && (rung || Instant::now() >= next_topology) {
            next_topology = Instant::now() + TOPOLOGY_EVERY;
            let mut con = router.nodes[0].clone();
            match tokio::time::timeout(max_lag, cluster_slots(&mut con)).await {
                Ok(Ok(ranges)) if ranges == router.ranges => {}
                Ok(Ok(_)) => return "the cluster's slot map changed",
                _ => return "the cluster's slot map could not be read",
            }
        }
    }
}

async fn connect(shared: &Arc<Shared>, url: &str, options: &Options) -> RedisResult<Router> {
    if !options.cluster {
        return Ok(Router {
            nodes: vec![open(shared, url, options, None).await?],
            slots: None,
            ranges: Vec::new(),
        });
    }
    let ranges = slot_ranges(url, options).await?;
    let mut addrs: Vec<(&str, u16)> = Vec::new();
    let mut slots = HashMap::new();
    for (start, end, host, port) in &ranges {
        let i = match addrs.iter().position(|a| *a == (host.as_str(), *port)) {
            Some(i) => i,
            None => {
                addrs.push((host, *port));
                addrs.len() - 1
            }
        };
        slots.extend((*start..=*end).filter_map(Slot::new).map(|s| (s, i)));
    }
    let nodes = try_join_all(
        addrs
            .iter()
            .map(|addr| open(shared, url, options, Some(*addr))),
    )
    .await?;
    Ok(Router {
        nodes,
        slots: Some(slots),
        ranges,
    })
}

/// A tracking connection to one node.
async fn open(
    shared: &Arc<Shared>,
    url: &str,
    options: &Options,
    addr: Option<(&str, u16)>,
) -> RedisResult<MultiplexedConnection> {
    let client = node_client(url, options, addr)?;
    let local = Arc::clone(&shared.local);
    let prefix = shared.prefix.clone();
    let rebuild = Arc::clone(&shared.rebuild);
    let sink = move |push: PushInfo| -> Result<(), Infallible> {
        if on_push(&local, &prefix, push) {
            rebuild.notify_one();
        }
        Ok(())
    };
    let config = AsyncConnectionConfig::new()
        .set_connection_timeout(Some(options.connect_timeout))
        .set_response_timeout(Some(options.response_timeout))
        .set_push_sender(sink);
    let mut con = client
        .get_multiplexed_async_connection_with_config(&config)
        .await?;
    redis::cmd("CLIENT")
        .arg("SETNAME")
        .arg(format!(
            "{CLIENT_NAME}{}",
            shared.prefix.trim_end_matches(':')
        ))
        .exec_async(&mut con)
        .await?;
    redis::cmd("CLIENT")
        .arg("TRACKING")
        .arg("ON")
        .exec_async(&mut con)
        .await?;
    Ok(con)
}

/// Applied by the connection's reader as each push arrives; true if the
/// connection closed.
fn on_push(local: &Local, prefix: &str, push: PushInfo) -> bool {
    match push.kind {
        PushKind::Invalidate => match push.data.first() {
            Some(Value::Array(keys)) => {
                for key in keys {
                    if let Value::BulkString(raw) = key {
                        if let Some(key) = std::str::from_utf8(raw)
                            .ok()
                            .and_then(|k| k.strip_prefix(prefix))
                        {
                            local.invalidate(key);
                        }
                    }
                }
            }
            // A null key list: the database was flushed.
            _ => local.flush("Redis flushed the database"),
        },
        PushKind::Disconnection => {
            local.flush("a tracking connection closed");
            return true;
        }
        _ => {}
    }
    false
}

/// The cluster's slot ranges with their primaries, sorted, from the first
/// seed that answers.
async fn slot_ranges(url: &str, options: &Options) -> RedisResult<Vec<Range>> {
    let mut single = options.clone();
    single.cluster = false;
    let mut last = None;
    for seed in url.split(',').map(str::trim) {
        let attempt = async {
            let mut con = node_client(seed, &single, None)?
                .get_multiplexed_async_connection()
                .await?;
            cluster_slots(&mut con).await
        };
        match tokio::time::timeout(options.connect_timeout * 2, attempt).await {
            Ok(Ok(ranges)) => return Ok(ranges),
            Ok(Err(e)) => last = Some(e),
            Err(_) => {
                last = Some(redis::RedisError::from((
                    redis::ErrorKind::Io,
                    "CLUSTER SLOTS timed out",
                )))
            }
        }
    }
    Err(last.unwrap_or_else(|| {
        redis::RedisError::from((redis::ErrorKind::InvalidClientConfig, "no seed URL"))
    }))
}

/// `CLUSTER SLOTS`, sorted.
async fn cluster_slots(con: &mut MultiplexedConnection) -> RedisResult<Vec<Range>> {
    let reply: Vec<Vec<Value>> = redis::cmd("CLUSTER").arg("SLOTS").query_async(con).await?;
    let mut out = Vec::new();
    for range in reply {
        let mut fields = range.into_iter();
        let (Some(start), Some(end), Some(primary)) = (fields.next(), fields.next(), fields.next())
        else {
            continue;
        };
        let node: Vec<Value> = redis::from_redis_value(primary)?;
        let (Some(host), Some(port)) = (node.first(), node.get(1)) else {
            continue;
        };
        out.push((
            redis::from_redis_value(start)?,
            redis::from_redis_value(end)?,
            redis::from_redis_value(host.clone())?,
            redis::from_redis_value(port.clone())?,
        ));
    }
    out.sort();
    Ok(out)
}
