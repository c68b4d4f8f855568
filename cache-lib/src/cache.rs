//! The cache handle, its builder and the management calls.

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use redis::RedisError;
use serde::de::DeserializeOwned;
use serde::Serialize;
use smartcache_core::conn::{self, Conn};
use smartcache_core::describe::{describe, KeyInfo};
use smartcache_core::diagnose::{explain, Settings};
use smartcache_core::invalidate::{invalidate, unlink};
use smartcache_core::keys::{check_cache_key, Namespace, TableName, DEFAULT_NAMESPACE};
use smartcache_core::tls::{Tls, TlsFile};
use std::path::PathBuf;
use tracing::{info, warn};

use crate::breaker::{Breaker, LogLimiter};
use crate::dep::Dep;
use crate::entry::Entry;
use crate::error::{error_chain, redact_url, Error};
use crate::flight::Flights;
use crate::inner::{Got, Inner};
use crate::local::{Bound, Local, LocalStats};
use crate::tracking::Tracking;

/// A handle on the cache: cheap to clone, share one per process.
///
/// ```no_run
/// # async fn demo() -> Result<(), smartcache::Error> {
/// use smartcache::{Cache, Dep};
/// let cache = Cache::builder("redis://127.0.0.1:6379/0").namespace("cache").build().await?;
/// let name: String = cache
///     .get_or_compute("product:1:name", [Dep::row("products", [1])], || async {
///         Ok::<_, smartcache::Error>("Teapot".to_string())
///     })
///     .await?;
/// # Ok(()) }
/// ```
#[derive(Clone)]
pub struct Cache {
    pub(crate) inner: Arc<Inner>,
}

impl std::fmt::Debug for Cache {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        self.inner.fmt(f)
    }
}

/// Settings for a [`Cache`]; start with [`Cache::builder`].
///
/// ```no_run
/// # async fn demo() -> Result<(), smartcache::Error> {
/// use std::time::Duration;
/// let cache = smartcache::Cache::builder("redis://127.0.0.1:6379/0")
///     .namespace("shop")
///     .lease_ttl(Duration::from_secs(5))
///     .default_ttl(None)
///     .clear_on_start(false)
///     .build()
///     .await?;
/// # Ok(()) }
/// ```
#[derive(Clone, Debug)]
#[must_use = "call .build() to get a Cache"]
pub struct CacheBuilder {
    url: String,
    namespace: String,
    lease_ttl: Duration,
    lease_wait: Option<Duration>,
    default_ttl: Option<Duration>,
    clear_on_start: bool,
    timeout: Duration,
    connect_timeout: Duration,
    admin_timeout: Duration,
    breaker_cooldown: Duration,
    log_interval: Duration,
    cluster: bool,
    local: Option<Bound>,
    local_max_lag: Duration,
    tls: Tls,
    ca_file: Option<PathBuf>,
    client_cert: Option<(PathBuf, PathBuf)>,
}

impl CacheBuilder {
    fn new(url: &str) -> Self {
        Self {
            url: url.to_owned(),
            namespace: DEFAULT_NAMESPACE.to_owned(),
            lease_ttl: Duration::from_secs(5),
            lease_wait: None,
            default_ttl: None,
            clear_on_start: false,
            timeout: Duration::from_millis(250),
            connect_timeout: Duration::from_secs(1),
            admin_timeout: Duration::from_secs(30),
            breaker_cooldown: Duration::from_secs(2),
            log_interval: Duration::from_secs(10),
            cluster: false,
            local: None,
            local_max_lag: Duration::from_millis(250),
            tls: Tls::default(),
            ca_file: None,
            client_cert: None,
        }
    }

    /// Trust the CA certificate(s) in this PEM file instead of the
    /// system's roots on a `rediss://` URL: the CA of a managed service or
    /// a private one. The file is read when the cache is built; one that
    /// cannot be read, or holds no certificate, fails the build with
    /// [`Error::TlsFile`]. Without it, `rediss://` trusts the system's
    /// roots (`/etc/ssl/certs` on Debian).
    ///
    /// ```no_run
    /// # async fn demo() -> Result<(), smartcache::Error> {
    /// let cache = smartcache::Cache::builder("rediss://:token@redis.internal:6380/0")
    ///     .ca_file("/etc/smartcache/redis-ca.pem")
    ///     .build()
    ///     .await?;
    /// # Ok(()) }
    /// ```
    pub fn ca_file(mut self, path: impl Into<PathBuf>) -> Self {
        self.ca_file = Some(path.into());
        self
    }

    /// Present this client certificate (PEM chain) and its private key (PEM)
    /// to servers that require one (`tls-auth-clients yes`, mutual TLS).
    /// Read when the cache is built, like [`CacheBuilder::ca_file`].
    ///
    /// ```no_run
    /// # async fn demo() -> Result<(), smartcache::Error> {
    /// let cache = smartcache::Cache::builder("rediss://redis.internal:6380/0")
    ///     .ca_file("/etc/smartcache/ca.pem")
    ///     .client_cert("/etc/smartcache/client.crt", "/etc/smartcache/client.key")
    ///     .build()
    ///     .await?;
    /// # Ok(()) }
    /// ```
    pub fn client_cert(mut self, cert: impl Into<PathBuf>, key: impl Into<PathBuf>) -> Self {
        self.client_cert = Some((cert.into(), key.into()));
        self
    }

    /// TLS settings already read ([`Tls::from_files`]), e.g. shared with
    /// other connections of the program. [`CacheBuilder::ca_file`] and
    /// [`CacheBuilder::client_cert`], when given, are used instead.
    ///
    /// ```no_run
    /// # fn demo() -> Result<(), Box<dyn std::error::Error>> {
    /// use smartcache::Tls;
    /// let tls = Tls::from_files(Some("/etc/smartcache/ca.pem".as_ref()), None)?;
    /// let b = smartcache::Cache::builder("rediss://redis.internal:6380/0").tls(tls);
    /// # Ok(()) }
    /// ```
    pub fn tls(mut self, tls: Tls) -> Self {
        self.tls = tls;
        self
    }

    /// Talk to a Redis Cluster: the URL is then one or more seed nodes
    /// separated by commas (`redis://10.0.0.1:6379,redis://10.0.0.2:6379`).
    /// The library refuses to store keys containing `{` or `}` there (see
    /// [`smartcache_core::keys::check_cluster_key`]); reading or clearing such a key
    /// written by another program works. Default off.
    ///
    /// ```
    /// let b = smartcache::Cache::builder("redis://127.0.0.1:7000,redis://127.0.0.1:7001")
    ///     .cluster(true);
    /// ```
    pub fn cluster(mut self, cluster: bool) -> Self {
        self.cluster = cluster;
        self
    }

    /// The namespace: every Redis key smartcache touches starts with
    /// `{namespace}:`. Default `cache`. Must match the invalidator's.
    ///
    /// ```
    /// let b = smartcache::Cache::builder("redis://127.0.0.1/").namespace("shop");
    /// ```
    pub fn namespace(mut self, namespace: impl Into<String>) -> Self {
        self.namespace = namespace.into();
        self
    }

    /// How long a fill lease lasts if its holder never comes back (a crash).
    /// A computation that takes longer than this is returned uncached.
    /// Default 5 s.
    ///
    /// ```
    /// let b = smartcache::Cache::builder("redis://127.0.0.1/")
    ///     .lease_ttl(std::time::Duration::from_secs(2));
    /// ```
    pub fn lease_ttl(mut self, ttl: Duration) -> Self {
        self.lease_ttl = ttl;
        self
    }

    /// How long a miss waits for another process that holds the lease
    /// before computing uncached itself. Default: the lease TTL.
    ///
    /// ```
    /// let b = smartcache::Cache::builder("redis://127.0.0.1/")
    ///     .lease_wait(std::time::Duration::from_millis(500));
    /// ```
    pub fn lease_wait(mut self, wait: Duration) -> Self {
        self.lease_wait = Some(wait);
        self
    }

    /// Expiry of entries that do not set their own. Default `None`: entries
    /// live until the invalidator (or a `clear`) deletes them.
    ///
    /// ```
    /// let b = smartcache::Cache::builder("redis://127.0.0.1/")
    ///     .default_ttl(Some(std::time::Duration::from_secs(86_400)));
    /// ```
    pub fn default_ttl(mut self, ttl: Option<Duration>) -> Self {
        self.default_ttl = ttl;
        self
    }

    /// Delete the whole namespace when the cache is built. Default off.
    ///
    /// The decorator this library replaces did this on every process start,
    /// because without an invalidator a restart was the only moment stale
    /// entries went away. With the invalidator entries are never stale, and
    /// with several replicas of an app each deploy (or crash-restart of any
    /// one replica) would flush the cache of all of them, sending the full
    /// load to the database at the worst moment. Turn it on only for a single
    /// process that owns its namespace, e.g. in development.
    ///
    /// ```
    /// let b = smartcache::Cache::builder("redis://127.0.0.1/").clear_on_start(true);
    /// ```
    pub fn clear_on_start(mut self, clear: bool) -> Self {
        self.clear_on_start = clear;
        self
    }

    /// Time allowed to each Redis call on a request path before it is
    /// abandoned and the value is computed uncached. Default 250 ms.
    ///
    /// ```
    /// let b = smartcache::Cache::builder("redis://127.0.0.1/")
    ///     .timeout(std::time::Duration::from_millis(100));
    /// ```
    pub fn timeout(mut self, timeout: Duration) -> Self {
        self.timeout = timeout;
        self
    }

    /// Time allowed to connect to Redis. Default 1 s.
    ///
    /// ```
    /// let b = smartcache::Cache::builder("redis://127.0.0.1/")
    ///     .connect_timeout(std::time::Duration::from_millis(300));
    /// ```
    pub fn connect_timeout(mut self, timeout: Duration) -> Self {
        self.connect_timeout = timeout;
        self
    }

    /// After a Redis failure, request paths skip Redis for this long, then
    /// one request probes it. Default 2 s.
    ///
    /// ```
    /// let b = smartcache::Cache::builder("redis://127.0.0.1/")
    ///     .breaker_cooldown(std::time::Duration::from_secs(1));
    /// ```
    pub fn breaker_cooldown(mut self, cooldown: Duration) -> Self {
        self.breaker_cooldown = cooldown;
        self
    }

    /// Keep copies of values in this process, served without a Redis round
    /// trip while Redis client tracking vouches for them: at most
    /// `max_bytes` (keys, values and a fixed overhead per copy) and
    /// `max_entries` copies. Default off; a zero bound keeps it off. See
    /// the crate docs, "The local tier".
    ///
    /// ```
    /// let b = smartcache::Cache::builder("redis://127.0.0.1/").local(64 << 20, 100_000);
    /// ```
    pub fn local(mut self, max_bytes: u64, max_entries: u64) -> Self {
        self.local = (max_bytes > 0 && max_entries > 0).then_some(Bound {
            max_bytes,
            max_entries,
        });
        self
    }

    /// The local tier serves a copy only while its tracking connections
    /// answered a heartbeat sent less than this long ago (heartbeats go
    /// every quarter of it); later, it is flushed and reads go to Redis
    /// until tracking is re-established. This bounds how long a copy can
    /// outlive its change when invalidations stop arriving without the
    /// connection closing (a network partition). Default 250 ms, at least
    /// 10 ms.
    ///
    /// ```
    /// let b = smartcache::Cache::builder("redis://127.0.0.1/")
    ///     .local(64 << 20, 100_000)
    ///     .local_max_lag(std::time::Duration::from_millis(100));
    /// ```
    pub fn local_max_lag(mut self, lag: Duration) -> Self {
        self.local_max_lag = lag.max(Duration::from_millis(10));
        self
    }

    fn options(&self) -> Result<conn::Options, Error> {
        let mut options = conn::Options::default();
        options.cluster = self.cluster;
        options.tls = self.tls_settings()?;
        options.connect_timeout = self.connect_timeout;
        options.response_timeout = self.admin_timeout;
        options.max_delay = Duration::from_secs(1);
        Ok(options)
    }

    fn settings(&self) -> Result<(Conn, Namespace, String, conn::Options), Error> {
        let ns = Namespace::new(&self.namespace)?;
        let url = redact_url(&self.url);
        let options = self.options()?;
        let invalid = |source| Error::InvalidUrl {
            url: url.clone(),
            source,
        };
        let con = Conn::open(&self.url, &options).map_err(invalid)?;
        if self.local.is_some() {
            // The local tier's tracking connections are opened later, in
            // the background: refuse now what they could never reach.
            conn::node_client(&self.url, &options, None).map_err(invalid)?;
        }
        Ok((con, ns, url, options))
    }

    fn tls_settings(&self) -> Result<Tls, Error> {
        if self.ca_file.is_none() && self.client_cert.is_none() {
            return Ok(self.tls.clone());
        }
        let client = self
            .client_cert
            .as_ref()
            .map(|(c, k)| (c.as_path(), k.as_path()));
        Tls::from_files(self.ca_file.as_deref(), client).map_err(|source| Error::TlsFile {
            setting: match source.file {
                TlsFile::Ca => "CacheBuilder::ca_file",
                _ => "CacheBuilder::client_cert",
            },
            source,
        })
    }

    fn finish(&self, con: Conn, ns: Namespace, url: String, options: &conn::Options) -> Cache {
        Cache {
            inner: Arc::new(Inner {
                con,
                url,
                lease_ttl: self.lease_ttl,
                lease_wait: self.lease_wait.unwrap_or(self.lease_ttl),
                default_ttl: self.default_ttl,
                timeout: self.timeout,
                admin_timeout: self.admin_timeout,
                breaker: Breaker::new(self.breaker_cooldown),
                log: LogLimiter::new(self.log_interval),
                flights: Flights::default(),
                tier: self.local.map(|bound| {
                    Tracking::start(
                        Local::new(bound),
                        ns.prefix(),
                        &self.url,
                        options,
                        self.local_max_lag,
                    )
                }),
                ns,
            }),
        }
    }

    /// Connects to Redis and returns the cache; fails with
    /// [`Error::Connect`] if Redis cannot be reached, so a command-line tool
    /// or a start-up check learns it at once.
    ///
    /// Once built, the cache never fails a request because of Redis: it
    /// reconnects by itself. An app that must start even while Redis is
    /// down uses [`CacheBuilder::build_lazy`].
    ///
    /// ```no_run
    /// # async fn demo() -> Result<(), smartcache::Error> {
    /// let cache = smartcache::Cache::builder("redis://127.0.0.1:6379/0").build().await?;
    /// # Ok(()) }
    /// ```
    pub async fn build(self) -> Result<Cache, Error> {
        let (con, ns, url, options) = self.settings()?;
        let mut probe = con.clone();
        let ping_cmd = redis::cmd("PING");
        let ping = ping_cmd.query_async::<()>(&mut probe);
        let source = match tokio::time::timeout(self.connect_timeout * 3, ping).await {
            Ok(Ok(())) => None,
            Ok(Err(source)) => Some(source),
            Err(_) => Some(RedisError::from((
                redis::ErrorKind::Io,
                "connection timed out",
            ))),
        };
        if let Some(source) = source {
            let cause = explain(&source, &self.url, &options, &Settings::BUILDER).await;
            return Err(Error::Connect { url, cause, source });
        }
        let cache = self.finish(con, ns, url, &options);
        if self.clear_on_start {
            let n = cache.clear_all().await?;
            info!(
                namespace = cache.inner.ns.name(),
                entries = n,
                "cleared on start"
            );
        }
        Ok(cache)
    }

    /// Returns the cache without waiting for Redis: if Redis is down, every
    /// call computes uncached until it comes back. Only a bad URL or
    /// namespace is an error. Call [`Cache::ping`] to check the connection.
    ///
    /// ```no_run
    /// # async fn demo() -> Result<(), smartcache::Error> {
    /// let cache = smartcache::Cache::builder("redis://127.0.0.1:6379/0").build_lazy().await?;
    /// # Ok(()) }
    /// ```
    pub async fn build_lazy(self) -> Result<Cache, Error> {
        let (con, ns, url, options) = self.settings()?;
        let cache = self.finish(con, ns, url, &options);
        if self.clear_on_start {
            match cache.clear_all().await {
                Ok(n) => info!(
                    namespace = cache.inner.ns.name(),
                    entries = n,
                    "cleared on start"
                ),
                Err(e) => warn!(error = %error_chain(&e), "clear_on_start failed"),
            }
        }
        Ok(cache)
    }
}

impl Cache {
    /// Starts configuring a cache for the Redis at `url`
    /// (`redis://[user:password@]host[:port][/db]`).
    ///
    /// ```no_run
    /// # async fn demo() -> Result<(), smartcache::Error> {
    /// let cache = smartcache::Cache::builder("redis://127.0.0.1:6379/0").build().await?;
    /// # Ok(()) }
    /// ```
    pub fn builder(url: &str) -> CacheBuilder {
        CacheBuilder::new(url)
    }

    /// Connects with the default settings and namespace `cache`; the same as
    /// `Cache::builder(url).build()`.
    ///
    /// ```no_run
    /// # async fn demo() -> Result<(), smartcache::Error> {
    /// let cache = smartcache::Cache::connect("redis://127.0.0.1:6379/0").await?;
    /// # Ok(()) }
    /// ```
    pub async fn connect(url: &str) -> Result<Self, Error> {
        Self::builder(url).build().await
    }

    /// The namespace of this cache.
    ///
    /// ```no_run
    /// # fn demo(cache: smartcache::Cache) {
    /// assert_eq!(cache.namespace().prefix(), "cache:");
    /// # }
    /// ```
    pub fn namespace(&self) -> &Namespace {
        &self.inner.ns
    }

    /// Checks that Redis answers (`PING`), with the management timeout.
    ///
    /// ```no_run
    /// # async fn demo(cache: smartcache::Cache) {
    /// if let Err(e) = cache.ping().await {
    ///     eprintln!("Redis is not answering: {e}");
    /// }
    /// # }
    /// ```
    pub async fn ping(&self) -> Result<(), Error> {
        let mut con = self.inner.con.clone();
        self.inner
            .admin("PING", redis::cmd("PING").query_async::<()>(&mut con))
            .await
    }

    /// What the local tier holds and has done; `None` when it is off
    /// ([`CacheBuilder::local`]).
    ///
    /// ```no_run
    /// # async fn demo() -> Result<(), smartcache::Error> {
    /// let cache = smartcache::Cache::builder("redis://127.0.0.1:6379/0")
    ///     .local(16 << 20, 10_000)
    ///     .build()
    ///     .await?;
    /// let stats = cache.local_stats().expect("the local tier is on");
    /// assert!(stats.bytes <= 16 << 20);
    /// # Ok(()) }
    /// ```
    pub fn local_stats(&self) -> Option<LocalStats> {
        self.inner.tier.as_ref().map(|t| t.local().stats())
    }

    /// Whether a read of `key` would be served from the local tier now,
    /// without a Redis round trip (always false when the tier is off).
    /// Reads nothing from Redis and fills nothing: for tests, benchmarks
    /// and monitoring.
    ///
    /// ```no_run
    /// # async fn demo(cache: smartcache::Cache) -> Result<(), smartcache::Error> {
    /// let _ = cache.get_bytes("product:1").await?; // may take a copy
    /// println!("held locally: {}", cache.holds_locally("product:1"));
    /// # Ok(()) }
    /// ```
    pub fn holds_locally(&self, key: &str) -> bool {
        self.inner
            .tier
            .as_ref()
            .is_some_and(|t| t.local().holds(key))
    }

    /// Options for one entry: dependencies, TTL; then `get_or_compute`,
    /// `fetch` (which also says whether it was a hit) or `set`.
    ///
    /// ```no_run
    /// # async fn demo(cache: smartcache::Cache) -> Result<(), smartcache::Error> {
    /// use smartcache::Dep;
    /// let fetched = cache
    ///     .entry("top_sellers")
    ///     .depends_on(Dep::table("orders"))
    ///     .ttl(std::time::Duration::from_secs(3600))
    ///     .fetch(|| async { Ok::<_, smartcache::Error>(vec![3, 1, 2]) })
    ///     .await?;
    /// println!("{:?} {:?}", fetched.value, fetched.status);
    /// # Ok(()) }
    /// ```
    pub fn entry(&self, key: impl Into<String>) -> Entry<'_> {
        Entry::new(&self.inner, key.into())
    }

    /// The value of `key` as JSON-decoded `T`, computing and caching it on a
    /// miss; the entry is registered under `deps` and has the default TTL.
    ///
    /// Concurrent misses in this process share one computation; across
    /// processes a fill lease lets one compute while others wait briefly. A
    /// value computed from data read before a commit is never stored after
    /// that commit's invalidation. If Redis is down, the value is computed
    /// and returned uncached. Only an invalid key or dependency name, or the
    /// computation's own error, is returned as an error.
    ///
    /// ```no_run
    /// # async fn demo(cache: smartcache::Cache) -> anyhow::Result<()> {
    /// use smartcache::Dep;
    /// #[derive(serde::Serialize, serde::Deserialize)]
    /// struct Product { id: i64, name: String }
    /// let p: Product = cache
    ///     .get_or_compute("product:1", [Dep::row("products", [1])], || async {
    ///         Ok::<_, anyhow::Error>(Product { id: 1, name: "Teapot".into() })
    ///     })
    ///     .await?;
    /// # Ok(()) }
    /// ```
    pub async fn get_or_compute<T, E, F, Fut>(
        &self,
        key: &str,
        deps: impl IntoIterator<Item = Dep>,
        compute: F,
    ) -> Result<T, E>
    where
        T: Serialize + DeserializeOwned,
        E: From<Error>,
        F: FnOnce() -> Fut,
        Fut: Future<Output = Result<T, E>>,
    {
        // A local hit builds no entry: no allocation before the copy.
        if let Some(bytes) = self.inner.local_copy(key) {
            if let Ok(value) = serde_json::from_slice(&bytes) {
                return Ok(value);
            }
        }
        self.entry(key).deps(deps).get_or_compute(compute).await
    }

    /// [`Cache::get_or_compute`] for raw bytes, stored as they are.
    ///
    /// ```no_run
    /// # async fn demo(cache: smartcache::Cache) -> Result<(), smartcache::Error> {
    /// let png: Vec<u8> = cache
    ///     .get_or_compute_bytes("thumb:1", [], || async { Ok::<_, smartcache::Error>(vec![0x89, b'P']) })
    ///     .await?;
    /// # Ok(()) }
    /// ```
    pub async fn get_or_compute_bytes<E, F, Fut>(
        &self,
        key: &str,
        deps: impl IntoIterator<Item = Dep>,
        compute: F,
    ) -> Result<Vec<u8>, E>
    where
        E: From<Error>,
        F: FnOnce() -> Fut,
        Fut: Future<Output = Result<Vec<u8>, E>>,
    {
        if let Some(bytes) = self.inner.local_copy(key) {
            return Ok(bytes.to_vec());
        }
        self.entry(key)
            .deps(deps)
            .get_or_compute_bytes(compute)
            .await
    }

    /// The cached value of `key` as JSON-decoded `T`, if any.
    ///
    /// `Ok(None)` also when Redis is unavailable or the value is not valid
    /// JSON for `T` (both logged); an error only for an invalid key.
    ///
    /// ```no_run
    /// # async fn demo(cache: smartcache::Cache) -> Result<(), smartcache::Error> {
    /// let n: Option<u64> = cache.get("visits").await?;
    /// # Ok(()) }
    /// ```
    pub async fn get<T: DeserializeOwned>(&self, key: &str) -> Result<Option<T>, Error> {
        let Some(bytes) = self.get_bytes(key).await? else {
            return Ok(None);
        };
        match serde_json::from_slice(&bytes) {
            Ok(v) => Ok(Some(v)),
            Err(e) => {
                self.inner.warn_limited(
                    &e,
                    "cached value is not valid JSON for the requested type; treated as a miss",
                );
                Ok(None)
            }
        }
    }

    /// The cached bytes of `key`, if any (`Ok(None)` also when Redis is
    /// unavailable).
    ///
    /// ```no_run
    /// # async fn demo(cache: smartcache::Cache) -> Result<(), smartcache::Error> {
    /// let raw: Option<Vec<u8>> = cache.get_bytes("thumb:1").await?;
    /// # Ok(()) }
    /// ```
    pub async fn get_bytes(&self, key: &str) -> Result<Option<Vec<u8>>, Error> {
        check_cache_key(key)?;
        Ok(self.inner.read(key).await.map(Got::into_vec))
    }

    /// Stores `value` (as JSON) under `key`, registered under `deps`, with
    /// the default TTL, whatever was there. A fill of `key` in flight
    /// elsewhere is refused afterwards, so it cannot overwrite this with
    /// older data. The key is registered under `deps` before the value is
    /// written, so a value is never there without its registrations.
    /// Returns `Ok(false)` if nothing was stored: Redis was unavailable or
    /// the registration failed (logged), or a change to one of `deps` was
    /// invalidated meanwhile (the value may predate it).
    ///
    /// ```no_run
    /// # async fn demo(cache: smartcache::Cache) -> Result<(), smartcache::Error> {
    /// use smartcache::Dep;
    /// cache.set("product:1", &serde_json::json!({"id": 1}), [Dep::row("products", [1])]).await?;
    /// # Ok(()) }
    /// ```
    pub async fn set<T: Serialize + ?Sized>(
        &self,
        key: &str,
        value: &T,
        deps: impl IntoIterator<Item = Dep>,
    ) -> Result<bool, Error> {
        self.entry(key).deps(deps).set(value).await
    }

    /// [`Cache::set`] for raw bytes.
    ///
    /// ```no_run
    /// # async fn demo(cache: smartcache::Cache) -> Result<(), smartcache::Error> {
    /// cache.set_bytes("thumb:1", b"\x89PNG", []).await?;
    /// # Ok(()) }
    /// ```
    pub async fn set_bytes(
        &self,
        key: &str,
        value: &[u8],
        deps: impl IntoIterator<Item = Dep>,
    ) -> Result<bool, Error> {
        self.entry(key).deps(deps).set_bytes(value).await
    }

    /// Deletes exactly the entry `key` (clearing `post` leaves `posts`
    /// alone), with its lease and dependency registrations. Returns whether a
    /// value was there.
    ///
    /// ```no_run
    /// # async fn demo(cache: smartcache::Cache) -> Result<(), smartcache::Error> {
    /// let was_cached = cache.clear("product:1").await?;
    /// # Ok(()) }
    /// ```
    pub async fn clear(&self, key: &str) -> Result<bool, Error> {
        check_cache_key(key)?;
        let mut con = self.inner.con.clone();
        let n = self
            .inner
            .admin(
                "clear",
                invalidate(&mut con, &self.inner.ns, &[key.to_owned()], &[]),
            )
            .await;
        self.inner.forget(key);
        Ok(n? > 0)
    }

    /// Deletes every entry registered as depending on `table` (`table` or
    /// `schema.table`), on the whole table or on any of its rows. Returns how
    /// many values were deleted. Entries that the invalidator finds through
    /// key templates only are not known here; use [`Cache::clear`] for them.
    ///
    /// ```no_run
    /// # async fn demo(cache: smartcache::Cache) -> Result<(), smartcache::Error> {
    /// let n = cache.clear_table("shop.products").await?;
    /// # Ok(()) }
    /// ```
    pub async fn clear_table(&self, table: &str) -> Result<u64, Error> {
        let table = TableName::parse(table)?;
        let ns = &self.inner.ns;
        let mut con = self.inner.con.clone();
        let rows = self
            .inner
            .admin(
                "SCAN row dependencies",
                smartcache_core::registry::row_deps(&mut con.clone(), ns, &table, &|| {}),
            )
            .await?;
        let mut deps = vec![table.table_dep()];
        deps.extend(rows);
        let n = self
            .inner
            .admin("clear_table", invalidate(&mut con, ns, &[], &deps))
            .await;
        self.inner.forget_all();
        n
    }

    /// Deletes everything in the namespace (values, leases, dependency
    /// sets) with `SCAN` + `UNLINK` in batches; never `FLUSHDB`, and nothing
    /// outside `{namespace}:` is touched. Returns how many values were
    /// deleted.
    ///
    /// ```no_run
    /// # async fn demo(cache: smartcache::Cache) -> Result<(), smartcache::Error> {
    /// let n = cache.clear_all().await?;
    /// # Ok(()) }
    /// ```
    pub async fn clear_all(&self) -> Result<u64, Error> {
        let ns = &self.inner.ns;
        let mut con = self.inner.con.clone();
        let found = self
            .inner
            .admin("SCAN", con.clone().scan_all(&ns.match_all()))
            .await?;
        let values = found
            .iter()
            .filter(|k| ns.cache_key_of(k).is_some())
            .count() as u64;
        let unlinked = self.inner.admin("UNLINK", unlink(&mut con, found)).await;
        self.inner.forget_all();
        unlinked?;
        Ok(values)
    }

    /// Lists the entries whose cache key matches the glob `pattern`
    /// (`*` for all; Redis `MATCH` syntax), with their size and
    /// dependencies, sorted by key. Bookkeeping keys are skipped.
    ///
    /// ```no_run
    /// # async fn demo(cache: smartcache::Cache) -> Result<(), smartcache::Error> {
    /// for k in cache.keys("product:*").await? {
    ///     println!("{}\t{}\t{}", k.key, k.size_bytes, k.deps.join(","));
    /// }
    /// # Ok(()) }
    /// ```
    pub async fn keys(&self, pattern: &str) -> Result<Vec<KeyInfo>, Error> {
        let ns = &self.inner.ns;
        let mut con = self.inner.con.clone();
        let found = self
            .inner
            .admin("SCAN", con.clone().scan_all(&ns.match_cache_keys(pattern)))
            .await?;
        let keys: Vec<&str> = found.iter().filter_map(|k| ns.cache_key_of(k)).collect();
        self.describe(&mut con, &keys).await
    }

    /// Like [`Cache::keys`], but stops scanning once more than `limit`
    /// entries matched, so a listing stays quick on a big namespace.
    /// Returns at most `limit` entries sorted by key (which ones depends on
    /// Redis's `SCAN` order) and whether more entries match.
    ///
    /// ```no_run
    /// # async fn demo(cache: smartcache::Cache) -> Result<(), smartcache::Error> {
    /// let (first, more) = cache.keys_up_to("product:*", 1000).await?;
    /// if more {
    ///     println!("showing {} entries; narrow the pattern for the rest", first.len());
    /// }
    /// # Ok(()) }
    /// ```
    pub async fn keys_up_to(
        &self,
        pattern: &str,
        limit: usize,
    ) -> Result<(Vec<KeyInfo>, bool), Error> {
        let ns = &self.inner.ns;
        let mut con = self.inner.con.clone();
        let pattern = ns.match_cache_keys(pattern);
        let mut found = std::collections::BTreeSet::new();
        let mut more = false;
        let mut scanner = con.clone();
        let scan = scanner.scan(&pattern, |batch| {
            found.extend(batch.into_iter().filter(|k| ns.cache_key_of(k).is_some()));
            more = found.len() > limit;
            !more
        });
        self.inner.admin("SCAN", scan).await?;
        let keys: Vec<&str> = found
            .iter()
            .filter_map(|k| ns.cache_key_of(k))
            .take(limit)
            .collect();
        Ok((self.describe(&mut con, &keys).await?, more))
    }

    async fn describe(&self, con: &mut Conn, keys: &[&str]) -> Result<Vec<KeyInfo>, Error> {
        // One call: the dependencies come from one walk of the registry.
        self.inner
            .admin("describe keys", describe(con, &self.inner.ns, keys))
            .await
    }
}
