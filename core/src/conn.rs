//! One connection handle for a single Redis server, a Redis Cluster, or the
//! primary of a service that Redis Sentinel watches.
//!
//! Every kind reconnects by itself and can be created while Redis is
//! down; `rediss://` URLs speak TLS (see [`crate::tls`]). On a cluster, commands and scripts are routed by their first key;
//! smartcache's scripts only ever touch keys of one slot (see
//! [`crate::keys`]), and whatever spans the keyspace (`SCAN`) visits every
//! primary.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use futures_util::stream::{self, StreamExt, TryStreamExt};
use redis::aio::{ConnectionLike, ConnectionManager, ConnectionManagerConfig};
use redis::cluster::{ClusterClient, ClusterClientBuilder};
use redis::cluster_async::ClusterConnection;
use redis::cluster_routing::{RoutingInfo, SingleNodeRoutingInfo};
use redis::{Cmd, RedisFuture, RedisResult, Script, ScriptInvocation, Value};
use tokio::sync::OnceCell;

use crate::keys::{EntryKeys, Slot};
use crate::sentinel::{is_sentinel_url, Sentinel};
use crate::tls::{install_crypto_provider, Tls};

/// How to reach Redis; see [`Conn::open`].
///
/// ```
/// let mut options = smartcache_core::conn::Options::default();
/// options.cluster = true;
/// options.response_timeout = std::time::Duration::from_secs(5);
/// ```
#[derive(Clone, Debug)]
#[non_exhaustive]
pub struct Options {
    /// Speak the Redis Cluster protocol; the URL may then list several seed
    /// nodes separated by commas.
    pub cluster: bool,
    /// Time allowed to open a connection.
    pub connect_timeout: Duration,
    /// Time allowed for a reply.
    pub response_timeout: Duration,
    /// Reconnection attempts per request before it fails (at least 5 on a
    /// cluster, where following a redirection counts as one).
    pub retries: usize,
    /// Longest pause between reconnection attempts.
    pub max_delay: Duration,
    /// CA and client certificate for `rediss://` URLs; empty: the system's
    /// roots and no client certificate.
    pub tls: Tls,
}

impl Default for Options {
    fn default() -> Self {
        Self {
            cluster: false,
            connect_timeout: Duration::from_secs(2),
            response_timeout: Duration::from_secs(30),
            retries: 1,
            max_delay: Duration::from_millis(500),
            tls: Tls::default(),
        }
    }
}

/// A Redis connection: a single server or a cluster. Cheap to clone; clones
/// share the underlying multiplexed connections.
///
/// ```no_run
/// # async fn demo() -> redis::RedisResult<()> {
/// use smartcache_core::conn::{Conn, Options};
/// let mut con = Conn::open("redis://127.0.0.1:6379/0", &Options::default())?;
/// let keys = con.scan_all("cache:product:*").await?;
/// # Ok(()) }
/// ```
#[derive(Clone)]
pub struct Conn(Kind);

#[derive(Clone)]
enum Kind {
    Single(ConnectionManager),
    Cluster(Cluster),
    Sentinel(Arc<Sentinel>),
}

/// A cluster connection made on first use, so the handle can be created
/// while the cluster is down (the cluster client itself needs a reachable
/// seed to start).
#[derive(Clone)]
struct Cluster {
    client: Arc<ClusterClient>,
    con: Arc<OnceCell<ClusterConnection>>,
}

impl Cluster {
    async fn get(&self) -> RedisResult<ClusterConnection> {
        self.con
            .get_or_try_init(|| self.client.get_async_connection())
            .await
            .cloned()
    }
}

impl std::fmt::Debug for Conn {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self.0 {
            Kind::Single(_) => "Conn(single)",
            Kind::Cluster(_) => "Conn(cluster)",
            Kind::Sentinel(_) => "Conn(sentinel)",
        })
    }
}

/// Least retries per request on a cluster.
const CLUSTER_RETRIES: usize = 5;

/// Commands of one [`Conn::run_all`] in flight at once on a cluster: a
/// `clear_all` of 100,000 keys is 16,000 commands, and sent all at once the
/// last of them wait in the nodes' queues past the response timeout.
const IN_FLIGHT: usize = 256;

/// Keys per `SCAN` step.
const SCAN_COUNT: usize = 1000;

/// Entries or sets per script call or command: big enough to amortise the
/// round trip, small enough that one call never blocks Redis for long.
pub(crate) const CHUNK: usize = 512;

impl Conn {
    /// A handle on the Redis at `url` (`redis://[user:password@]host[:port][/db]`,
    /// `rediss://` for TLS), or, with [`Options::cluster`], on the cluster
    /// reachable through the comma-separated seed URLs, or on the primary
    /// of a service watched by Redis Sentinel
    /// (`redis+sentinel://[user:password@]host[:port][,host[:port]...]/service[/db]`,
    /// `rediss+sentinel://` for TLS to the sentinels and the servers; the
    /// password is the servers', sentinels are asked without one). Does no
    /// I/O: only a URL that does not parse, or TLS certificates given for a
    /// URL without TLS, is an error.
    ///
    /// ```
    /// use smartcache_core::conn::{Conn, Options};
    /// let mut options = Options::default();
    /// options.cluster = true;
    /// let con = Conn::open("redis://127.0.0.1:7000,redis://127.0.0.1:7001", &options).unwrap();
    /// assert!(con.is_cluster());
    /// let con = Conn::open("redis+sentinel://127.0.0.1:26379/mymaster", &Options::default()).unwrap();
    /// assert!(!con.is_cluster());
    /// ```
    pub fn open(url: &str, options: &Options) -> RedisResult<Self> {
        let urls: Vec<&str> = url.split(',').map(str::trim).collect();
        let tls = urls.iter().filter(|u| u.starts_with("rediss")).count();
        if tls > 0 {
            install_crypto_provider();
        }
        if is_sentinel_url(url) {
            if options.cluster {
                return Err(config_error(
                    "a Sentinel URL with cluster mode on",
                    "Sentinel serves one primary; turn cluster mode off (redis_cluster = false)",
                ));
            }
            if !url.starts_with("rediss") && !options.tls.is_empty() {
                return Err(tls_without_tls());
            }
            return Ok(Self(Kind::Sentinel(Arc::new(Sentinel::open(
                url,
                &options.tls,
                options.connect_timeout,
                options.response_timeout,
            )?))));
        }
        if tls == 0 && !options.tls.is_empty() {
            return Err(tls_without_tls());
        }
        if options.cluster {
            if tls != 0 && tls != urls.len() {
                return Err(config_error(
                    "seed URLs mixing redis:// and rediss://",
                    "a cluster speaks TLS on every node or on none; write every seed as rediss:// or every one as redis://",
                ));
            }
            let mut builder = ClusterClientBuilder::new(urls)
                .connection_timeout(options.connect_timeout)
                .response_timeout(options.response_timeout)
                // A redirection (MOVED, ASK) after a failover or a
                // restart counts as a retry.
                .retries(options.retries.max(CLUSTER_RETRIES) as u32)
                .max_retry_wait(options.max_delay.as_millis() as u64);
            if !options.tls.is_empty() {
                builder = builder.certs(options.tls.certificates());
            }
            return Ok(Self(Kind::Cluster(Cluster {
                client: Arc::new(builder.build()?),
                con: Arc::new(OnceCell::new()),
            })));
        }
        if urls.len() > 1 {
            return Err(config_error(
                "several URLs given for a single Redis server",
                "for a Redis Cluster turn cluster mode on (redis_cluster = true, \
                 --redis-cluster, or CacheBuilder::cluster(true))",
            ));
        }
        let client = if options.tls.is_empty() {
            redis::Client::open(url)?
        } else {
            redis::Client::build_with_tls(url, options.tls.certificates())?
        };
        let config = ConnectionManagerConfig::new()
            .set_connection_timeout(Some(options.connect_timeout))
            .set_response_timeout(Some(options.response_timeout))
            .set_number_of_retries(options.retries)
            .set_min_delay(Duration::from_millis(50).min(options.max_delay))
            .set_max_delay(options.max_delay);
        Ok(Self(Kind::Single(ConnectionManager::new_lazy_with_config(
            client, config,
        )?)))
    }

    /// A number that changes when requests may have started to reach
    /// another server: each new connection to a Sentinel service's primary
    /// (a failover moves it). Constant for a single server, whose
    /// reconnections reach the same address, and for a cluster. Work that
    /// must land on one server (deletions and the generation increment
    /// that vouches for them) compares it before and after.
    ///
    /// ```
    /// use smartcache_core::conn::{Conn, Options};
    /// # tokio::runtime::Runtime::new().unwrap().block_on(async {
    /// let con = Conn::open("redis://127.0.0.1:6379/0", &Options::default()).unwrap();
    /// assert_eq!(con.epoch(), 0);
    /// # });
    /// ```
    pub fn epoch(&self) -> u64 {
        match &self.0 {
            Kind::Sentinel(s) => s.epoch(),
            _ => 0,
        }
    }

    /// Whether this is a cluster connection.
    ///
    /// ```
    /// use smartcache_core::conn::{Conn, Options};
    /// # tokio::runtime::Runtime::new().unwrap().block_on(async {
    /// let con = Conn::open("redis://127.0.0.1:6379/0", &Options::default()).unwrap();
    /// assert!(!con.is_cluster());
    /// # });
    /// ```
    pub fn is_cluster(&self) -> bool {
        matches!(self.0, Kind::Cluster(_))
    }

    /// Every key matching the glob `pattern`, sorted, found with `SCAN` on
    /// every primary (never `KEYS`, so Redis is not blocked on a large
    /// database).
    ///
    /// ```no_run
    /// # async fn demo(mut con: smartcache_core::conn::Conn) -> redis::RedisResult<()> {
    /// let found = con.scan_all("cache:product:*").await?;
    /// # Ok(()) }
    /// ```
    pub async fn scan_all(&mut self, pattern: &str) -> RedisResult<Vec<String>> {
        let mut out = Vec::new();
        self.scan(pattern, |batch| {
            out.extend(batch);
            true
        })
        .await?;
        out.sort_unstable();
        out.dedup();
        Ok(out)
    }

    /// Hands each `SCAN` batch of keys matching `pattern` to `visit` until
    /// it returns `false` or every primary has been scanned. A key may come
    /// twice (Redis' `SCAN` guarantee).
    ///
    /// ```no_run
    /// # async fn demo(mut con: smartcache_core::conn::Conn) -> redis::RedisResult<()> {
    /// let mut n = 0;
    /// con.scan("cache:*", |batch| { n += batch.len(); n < 100 }).await?;
    /// # Ok(()) }
    /// ```
    pub async fn scan(
        &mut self,
        pattern: &str,
        mut visit: impl FnMut(Vec<String>) -> bool,
    ) -> RedisResult<()> {
        for node in self.nodes().await? {
            let mut cursor: u64 = 0;
            loop {
                let mut cmd = redis::cmd("SCAN");
                cmd.arg(cursor)
                    .arg("MATCH")
                    .arg(pattern)
                    .arg("COUNT")
                    .arg(SCAN_COUNT);
                let (next, batch): (u64, Vec<String>) =
                    redis::from_redis_value(self.query_node(&node, cmd).await?)?;
                if !visit(batch) {
                    return Ok(());
                }
                if next == 0 {
                    break;
                }
                cursor = next;
            }
        }
        Ok(())
    }

    /// Runs `cmd` on every primary (the one server, or each primary of the
    /// cluster) and returns the replies, e.g. to read a setting that each
    /// node has.
    ///
    /// ```no_run
    /// # async fn demo(mut con: smartcache_core::conn::Conn) -> redis::RedisResult<()> {
    /// let mut cmd = redis::cmd("CONFIG");
    /// cmd.arg("GET").arg("maxmemory-policy");
    /// let replies: Vec<(String, String)> = con.each_primary(&cmd).await?;
    /// # Ok(()) }
    /// ```
    pub async fn each_primary<T: redis::FromRedisValue>(
        &mut self,
        cmd: &Cmd,
    ) -> RedisResult<Vec<T>> {
        let mut out = Vec::new();
        for node in self.nodes().await? {
            out.push(redis::from_redis_value(
                self.query_node(&node, cmd.clone()).await?,
            )?);
        }
        Ok(out)
    }

    /// One slot per primary, the lowest it serves (`None` for the one
    /// server): a key hash-tagged to it lives on that primary.
    ///
    /// ```no_run
    /// # async fn demo(con: smartcache_core::conn::Conn) -> redis::RedisResult<()> {
    /// let slots = con.primary_slots().await?;
    /// assert!(!slots.is_empty());
    /// # Ok(()) }
    /// ```
    pub async fn primary_slots(&self) -> RedisResult<Vec<Option<u16>>> {
        let Kind::Cluster(c) = &self.0 else {
            return Ok(vec![None]);
        };
        let reply = c
            .get()
            .await?
            .route_command(
                redis::cmd("CLUSTER").arg("SLOTS").clone(),
                RoutingInfo::SingleNode(SingleNodeRoutingInfo::Random),
            )
            .await?;
        let ranges: Vec<Vec<Value>> = redis::from_redis_value(reply)?;
        let mut lowest: Vec<((String, u16), u16)> = Vec::new();
        for range in ranges {
            let mut fields = range.into_iter();
            let (Some(start), _, Some(primary)) = (fields.next(), fields.next(), fields.next())
            else {
                continue;
            };
            let start: u16 = redis::from_redis_value(start)?;
            let node: Vec<Value> = redis::from_redis_value(primary)?;
            let (Some(host), Some(port)) = (node.first(), node.get(1)) else {
                continue;
            };
            let id = (
                redis::from_redis_value::<String>(host.clone())?,
                redis::from_redis_value::<u16>(port.clone())?,
            );
            match lowest.iter_mut().find(|(n, _)| *n == id) {
                Some((_, s)) => *s = (*s).min(start),
                None => lowest.push((id, start)),
            }
        }
        let mut slots: Vec<Option<u16>> = lowest.into_iter().map(|(_, s)| Some(s)).collect();
        slots.sort();
        Ok(slots)
    }

    /// The primaries: `None` for the one server, else their addresses.
    async fn nodes(&self) -> RedisResult<Vec<Option<(String, u16)>>> {
        Ok(match &self.0 {
            Kind::Single(_) | Kind::Sentinel(_) => vec![None],
            Kind::Cluster(c) => primaries(&mut c.get().await?)
                .await?
                .into_iter()
                .map(Some)
                .collect(),
        })
    }

    async fn query_node(&mut self, node: &Option<(String, u16)>, cmd: Cmd) -> RedisResult<Value> {
        match (node, &self.0) {
            (Some((host, port)), Kind::Cluster(c)) => {
                let route = RoutingInfo::SingleNode(SingleNodeRoutingInfo::ByAddress {
                    host: host.clone(),
                    port: *port,
                });
                c.get().await?.route_command(cmd, route).await
            }
            _ => cmd.query_async(self).await,
        }
    }

    /// Whether one script call can reach all of `entry`'s keys: always on a
    /// single server; on a cluster unless the key has braces
    /// ([`EntryKeys::one_slot`]).
    pub(crate) fn reaches(&self, entry: &EntryKeys) -> bool {
        !self.is_cluster() || entry.one_slot()
    }

    /// Splits `items` into groups that one command or script call may
    /// take: on a single server, chunks of `chunk`; on a cluster, items of
    /// one slot (by `slot_of`) only. Groups come in the order their first
    /// item came.
    pub(crate) fn group<T>(
        &self,
        items: impl IntoIterator<Item = T>,
        slot_of: impl Fn(&T) -> Slot,
        chunk: usize,
    ) -> Vec<Vec<T>> {
        let cluster = self.is_cluster();
        let mut index: HashMap<Option<Slot>, usize> = HashMap::new();
        let mut by_slot: Vec<Vec<T>> = Vec::new();
        for item in items {
            let slot = cluster.then(|| slot_of(&item));
            let i = *index.entry(slot).or_insert_with(|| {
                by_slot.push(Vec::new());
                by_slot.len() - 1
            });
            by_slot[i].push(item);
        }
        // Fresh vectors per chunk: `split_off` would leave each chunk
        // holding the whole remainder's capacity (quadratic memory).
        let mut out = Vec::new();
        for items in by_slot {
            let mut items = items.into_iter().peekable();
            while items.peek().is_some() {
                out.push(items.by_ref().take(chunk).collect());
            }
        }
        out
    }

    /// Runs independent commands: one pipeline on a single server; sent
    /// concurrently on a cluster (each to its slot's node), at most
    /// [`IN_FLIGHT`] at a time. Replies come in order; the first error fails
    /// the whole call.
    pub(crate) async fn run_all(&mut self, cmds: Vec<Cmd>) -> RedisResult<Vec<Value>> {
        match &self.0 {
            _ if cmds.is_empty() => Ok(Vec::new()),
            Kind::Single(_) | Kind::Sentinel(_) => {
                let mut pipe = redis::pipe();
                for cmd in cmds {
                    pipe.add_command(cmd);
                }
                pipe.query_async(self).await
            }
            Kind::Cluster(c) => {
                let con = c.get().await?;
                // Futures made up front: a closure inside the stream would
                // make the caller's future not `Send`.
                let calls: Vec<_> = cmds
                    .into_iter()
                    .map(|cmd| {
                        let mut con = con.clone();
                        async move { cmd.query_async::<Value>(&mut con).await }
                    })
                    .collect();
                stream::iter(calls).buffered(IN_FLIGHT).try_collect().await
            }
        }
    }

    /// Runs calls of one script like [`Conn::run_all`], loading the script
    /// first where the server does not know it.
    pub(crate) async fn run_script(
        &mut self,
        script: &Script,
        calls: &[ScriptInvocation<'_>],
    ) -> RedisResult<Vec<Value>> {
        match &self.0 {
            _ if calls.is_empty() => Ok(Vec::new()),
            Kind::Single(_) | Kind::Sentinel(_) => {
                let mut pipe = redis::pipe();
                for inv in calls {
                    pipe.invoke_script(inv);
                }
                match pipe.query_async(self).await {
                    Err(e)
                        if e.kind()
                            == redis::ErrorKind::Server(redis::ServerErrorKind::NoScript) =>
                    {
                        script.prepare_invoke().load_async(self).await?;
                        pipe.query_async(self).await
                    }
                    other => other,
                }
            }
            Kind::Cluster(c) => {
                let con = c.get().await?;
                let calls: Vec<_> = calls
                    .iter()
                    .map(|inv| {
                        let mut con = con.clone();
                        async move { inv.invoke_async::<Value>(&mut con).await }
                    })
                    .collect();
                stream::iter(calls).buffered(IN_FLIGHT).try_collect().await
            }
        }
    }
}

/// A client for one node, speaking RESP3: the server of `url`, or with
/// [`Options::cluster`] the node at `addr`, reached with the credentials,
/// database and TLS mode of the first seed URL. Every connection
/// smartcache opens to one chosen node is built here (the library's
/// tracking connections), so settings that apply to [`Conn::open`] apply
/// here too.
///
/// ```
/// use smartcache_core::conn::{node_client, Options};
/// let client = node_client("redis://:pw@127.0.0.1:6379/2", &Options::default(), None).unwrap();
/// assert_eq!(client.get_connection_info().redis_settings().db(), 2);
/// ```
pub fn node_client(
    url: &str,
    options: &Options,
    addr: Option<(&str, u16)>,
) -> RedisResult<redis::Client> {
    if is_sentinel_url(url) {
        return Err(config_error(
            "a connection to one chosen node of a Sentinel service",
            "the local tier follows a single server or a cluster; turn it off with Sentinel",
        ));
    }
    let seed = if options.cluster {
        url.split(',').map(str::trim).next().unwrap_or(url)
    } else {
        url
    };
    let mut info = redis::IntoConnectionInfo::into_connection_info(seed)?;
    if let Some((host, port)) = addr {
        let at = match info.addr().clone() {
            redis::ConnectionAddr::TcpTls {
                insecure,
                tls_params,
                ..
            } => redis::ConnectionAddr::TcpTls {
                host: host.to_owned(),
                port,
                insecure,
                tls_params,
            },
            _ => redis::ConnectionAddr::Tcp(host.to_owned(), port),
        };
        info = info.set_addr(at);
    }
    let settings = info
        .redis_settings()
        .clone()
        .set_protocol(redis::ProtocolVersion::RESP3);
    let info = info.set_redis_settings(settings);
    if options.tls.is_empty() {
        redis::Client::open(info)
    } else {
        install_crypto_provider();
        redis::Client::build_with_tls(info, options.tls.certificates())
    }
}

fn config_error(what: &'static str, fix: &str) -> redis::RedisError {
    redis::RedisError::from((redis::ErrorKind::InvalidClientConfig, what, fix.to_owned()))
}

fn tls_without_tls() -> redis::RedisError {
    config_error(
        "TLS certificates given for a URL without TLS",
        "write the URL as rediss:// (or rediss+sentinel://) to connect with TLS, or drop the CA and client certificate settings",
    )
}

/// The sum of integer replies (e.g. of `UNLINK` or `EXISTS`).
pub(crate) fn sum_ints(replies: Vec<Value>) -> RedisResult<u64> {
    replies
        .into_iter()
        .map(|v| redis::from_redis_value::<u64>(v).map_err(redis::RedisError::from))
        .sum()
}

/// `host:port` of every primary that serves slots, from `CLUSTER SLOTS`.
async fn primaries(con: &mut ClusterConnection) -> RedisResult<Vec<(String, u16)>> {
    let reply = con
        .route_command(
            redis::cmd("CLUSTER").arg("SLOTS").clone(),
            RoutingInfo::SingleNode(SingleNodeRoutingInfo::Random),
        )
        .await?;
    let ranges: Vec<Vec<Value>> = redis::from_redis_value(reply)?;
    let mut out: Vec<(String, u16)> = Vec::new();
    for range in ranges {
        let Some(primary) = range.into_iter().nth(2) else {
            continue;
        };
        let node: Vec<Value> = redis::from_redis_value(primary)?;
        let (Some(host), Some(port)) = (node.first(), node.get(1)) else {
            continue;
        };
        let host: String = redis::from_redis_value(host.clone())?;
        let port: u16 = redis::from_redis_value(port.clone())?;
        if !out.contains(&(host.clone(), port)) {
            out.push((host, port));
        }
    }
    Ok(out)
}

impl ConnectionLike for Conn {
    fn req_packed_command<'a>(&'a mut self, cmd: &'a Cmd) -> RedisFuture<'a, Value> {
        match &mut self.0 {
            Kind::Single(con) => con.req_packed_command(cmd),
            Kind::Cluster(c) => Box::pin(async move {
                let mut con = c.get().await?;
                con.req_packed_command(cmd).await
            }),
            Kind::Sentinel(s) => Box::pin(async move {
                let (generation, mut con) = s.get().await?;
                let reply = con.req_packed_command(cmd).await;
                if let Err(e) = &reply {
                    s.failed(generation, e);
                }
                reply
            }),
        }
    }

    fn req_packed_commands<'a>(
        &'a mut self,
        pipeline: &'a redis::Pipeline,
        offset: usize,
        count: usize,
    ) -> RedisFuture<'a, Vec<Value>> {
        match &mut self.0 {
            Kind::Single(con) => con.req_packed_commands(pipeline, offset, count),
            Kind::Cluster(c) => Box::pin(async move {
                let mut con = c.get().await?;
                con.req_packed_commands(pipeline, offset, count).await
            }),
            Kind::Sentinel(s) => Box::pin(async move {
                let (generation, mut con) = s.get().await?;
                let reply = con.req_packed_commands(pipeline, offset, count).await;
                if let Err(e) = &reply {
                    s.failed(generation, e);
                }
                reply
            }),
        }
    }

    fn get_db(&self) -> i64 {
        match &self.0 {
            Kind::Single(con) => con.get_db(),
            Kind::Cluster(_) | Kind::Sentinel(_) => 0,
        }
    }
}
