//! Shared fixture for the end-to-end tests: each test gets its own
//! database on the shared PostgreSQL server and its own Redis namespace,
//! so tests run in parallel without seeing each other.

#![allow(unreachable_pub, missing_docs)]

pub mod ca;
pub mod db;
pub mod pg_tls;
pub mod pgbouncer;
pub mod redis_tls;
pub mod sentinel;
pub mod servers;

use db::TestDb;
use redis::AsyncCommands;
use smartcache_core::conn::{Conn, Options};
use smartcache_core::keys::Namespace;
use smartcache_invalidator::config::{Config, Overrides};
use smartcache_invalidator::schema;
use std::path::Path;
use std::time::{Duration, Instant};
use tokio::sync::oneshot;
use tokio::task::JoinHandle;
use tokio_postgres::Client;

/// Redis URL; `SMARTCACHE_TEST_REDIS_URL` overrides it.
pub fn redis_url() -> String {
    std::env::var("SMARTCACHE_TEST_REDIS_URL")
        .unwrap_or_else(|_| "redis://127.0.0.1:6379/0".to_owned())
}

/// Whether the Redis URL names a cluster's seed nodes
/// (`SMARTCACHE_TEST_REDIS_CLUSTER=1`): `scripts/test.sh` runs the
/// invalidation suites a second time that way.
pub fn redis_cluster() -> bool {
    std::env::var("SMARTCACHE_TEST_REDIS_CLUSTER").is_ok_and(|v| v == "1")
}

/// How long a test waits for the daemon before failing.
pub const PATIENCE: Duration = Duration::from_secs(20);

/// One test's world: a database, a namespace, connections to both.
pub struct Env {
    pub db: TestDb,
    pub ns: Namespace,
    pub pg: Client,
    pub redis: Conn,
    /// The Redis URL and whether it is a cluster, as the config gets them.
    pub redis_url: String,
    pub redis_cluster: bool,
    /// How to connect (cluster, TLS), and the config file lines that say
    /// the same to the daemon (e.g. `redis_ca_file = …`).
    pub redis_options: Options,
    pub redis_settings: String,
}

/// A connection to `url` (a cluster's seed nodes when `cluster`).
pub fn redis_conn(url: &str, cluster: bool) -> Conn {
    let mut options = Options::default();
    options.cluster = cluster;
    Conn::open(url, &options).expect("valid Redis URL")
}

/// What `smartcache-invalidator install` does, connected as `client`'s role.
pub async fn install_with(client: &mut tokio_postgres::Client, config: &Config) {
    let plan = schema::install_plan(client, config)
        .await
        .expect("plan install");
    schema::apply(client, &plan).await.expect("install");
}

impl Env {
    /// Creates the database and runs `setup_sql` in it.
    pub async fn new(tag: &str, setup_sql: &str) -> Self {
        Self::on_redis(tag, setup_sql, &redis_url(), redis_cluster()).await
    }

    /// Like [`Env::new`], against the Redis (or cluster) at `url`.
    pub async fn on_redis(tag: &str, setup_sql: &str, url: &str, cluster: bool) -> Self {
        let mut options = Options::default();
        options.cluster = cluster;
        Self::on_redis_with(tag, setup_sql, url, options, "").await
    }

    /// Like [`Env::on_redis`], connecting with `options` (cluster, TLS);
    /// `settings` are the config file lines saying the same to the daemon.
    pub async fn on_redis_with(
        tag: &str,
        setup_sql: &str,
        url: &str,
        options: Options,
        settings: &str,
    ) -> Self {
        let cluster = options.cluster;
        let db = TestDb::create(tag).await;
        let pg = db.connect().await;
        pg.batch_execute(setup_sql).await.expect("setup SQL");
        let ns = Namespace::new(&format!("t_{}", db::unique_name(tag))).unwrap();
        let mut redis = Conn::open(url, &options).expect("valid Redis URL");
        let _: () = redis::cmd("PING")
            .query_async(&mut redis)
            .await
            .expect("connect to Redis");
        Self {
            db,
            ns,
            pg,
            redis,
            redis_url: url.to_owned(),
            redis_cluster: cluster,
            redis_options: options,
            redis_settings: settings.to_owned(),
        }
    }

    /// The library on this test's Redis and namespace.
    pub async fn cache(&self) -> smartcache::Cache {
        smartcache::Cache::builder(&self.redis_url)
            .namespace(self.ns.name())
            .cluster(self.redis_cluster)
            .tls(self.redis_options.tls.clone())
            .build()
            .await
            .expect("connect the library to Redis")
    }

    /// A config for this database and namespace with `tables_toml` (the
    /// `[[tables]]` part) and a short poll interval.
    pub fn config(&self, tables_toml: &str) -> Config {
        Config::from_toml(
            &self.config_text(tables_toml),
            Path::new("test.toml"),
            &Overrides::default(),
        )
        .expect("valid test config")
    }

    /// The text of [`Env::config`].
    pub fn config_text(&self, tables_toml: &str) -> String {
        format!(
            "database_url = {:?}\nredis_url = {:?}\nredis_cluster = {}\nnamespace = {:?}\npoll_interval_ms = 100\n{}{tables_toml}",
            self.db.url,
            self.redis_url,
            self.redis_cluster,
            self.ns.name(),
            self.redis_settings
        )
    }

    /// What `smartcache-invalidator install` does.
    pub async fn install(&mut self, config: &Config) {
        install_with(&mut self.pg, config).await;
    }

    /// Starts the daemon in-process.
    pub fn start_daemon(&self, config: &Config) -> Daemon {
        let (tx, rx) = oneshot::channel::<()>();
        let task = tokio::spawn(smartcache_invalidator::run(config.clone(), async {
            let _ = rx.await;
        }));
        Daemon {
            stop: Some(tx),
            task,
        }
    }

    /// Stores `value` under each cache key.
    pub async fn put(&mut self, keys: &[&str]) {
        for k in keys {
            let _: () = self
                .redis
                .set(self.ns.value_key(k), "cached")
                .await
                .unwrap();
        }
    }

    /// Whether the cache key has a value.
    pub async fn cached(&mut self, key: &str) -> bool {
        self.redis.exists(self.ns.value_key(key)).await.unwrap()
    }

    /// Waits until none of `keys` has a value; panics after [`PATIENCE`].
    pub async fn wait_gone(&mut self, keys: &[&str]) {
        let start = Instant::now();
        loop {
            let mut left = Vec::new();
            for k in keys {
                if self.cached(k).await {
                    left.push(*k);
                }
            }
            if left.is_empty() {
                return;
            }
            assert!(
                start.elapsed() < PATIENCE,
                "keys still cached after {PATIENCE:?}: {left:?}"
            );
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }

    /// Waits until the outbox is empty.
    pub async fn wait_drained(&self) {
        let start = Instant::now();
        loop {
            let n: i64 = self
                .pg
                .query_one("SELECT count(*) FROM smartcache.outbox", &[])
                .await
                .unwrap()
                .get(0);
            if n == 0 {
                return;
            }
            assert!(start.elapsed() < PATIENCE, "outbox still has {n} rows");
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }

    /// Cache keys of the namespace that hold a value, sorted.
    pub async fn cached_keys(&mut self) -> Vec<String> {
        let found = self.redis.scan_all(&self.ns.match_all()).await.unwrap();
        let mut keys: Vec<String> = found
            .iter()
            .filter_map(|k| self.ns.cache_key_of(k).map(str::to_owned))
            .collect();
        keys.sort();
        keys
    }
}

impl Drop for Env {
    fn drop(&mut self) {
        let ns = self.ns.clone();
        let (url, options) = (self.redis_url.clone(), self.redis_options.clone());
        db::block_on_side(async move {
            let Ok(mut con) = Conn::open(&url, &options) else {
                return;
            };
            if let Ok(keys) = con.scan_all(&ns.match_all()).await {
                for key in keys {
                    let _: Result<(), _> = con.unlink(key).await;
                }
            }
        });
    }
}

/// `smartcache-invalidator --config CONFIG`, the binary `cargo test
/// --workspace` built, with none of the environment's settings.
pub fn cli(config: &Path) -> std::process::Command {
    let mut cmd = std::process::Command::new(servers::daemon_binary());
    for var in [
        "DATABASE_URL",
        "REDIS_URL",
        "REDIS_URL_FILE",
        "SMARTCACHE_NAMESPACE",
        "SMARTCACHE_REDIS_CLUSTER",
        "SMARTCACHE_REDIS_CA_FILE",
        "SMARTCACHE_REDIS_CLIENT_CERT_FILE",
        "SMARTCACHE_REDIS_CLIENT_KEY_FILE",
    ] {
        cmd.env_remove(var);
    }
    cmd.arg("--config").arg(config);
    cmd
}

/// Exit status, stdout and stderr of a finished command, for assertions.
pub fn output_text(o: &std::process::Output) -> String {
    format!(
        "status {:?}\nstdout:\n{}\nstderr:\n{}",
        o.status.code(),
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    )
}

/// A response read by [`http_get`].
#[derive(Debug)]
pub struct HttpResponse {
    pub status: u16,
    pub headers: Vec<(String, String)>,
    pub body: String,
}

impl HttpResponse {
    /// The first header named `name` (case-insensitive), or "".
    pub fn header(&self, name: &str) -> &str {
        self.headers
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
            .unwrap_or("")
    }
}

/// The value of the first sample line of Prometheus text `metrics` that
/// starts with `name` (labels included in `name` if any).
pub fn sample(metrics: &str, name: &str) -> Option<f64> {
    metrics
        .lines()
        .find(|l| l.starts_with(name) && l[name.len()..].starts_with([' ', '{']))
        .and_then(|l| l.rsplit(' ').next())
        .and_then(|v| v.parse().ok())
}

/// GET over plain HTTP/1.1 with `Connection: close`.
pub async fn http_get(addr: &str, path: &str) -> std::io::Result<HttpResponse> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut s = tokio::net::TcpStream::connect(addr).await?;
    s.write_all(
        format!("GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n").as_bytes(),
    )
    .await?;
    let mut raw = String::new();
    s.read_to_string(&mut raw).await?;
    let (head, body) = raw.split_once("\r\n\r\n").unwrap_or((&raw, ""));
    let mut lines = head.lines();
    let status = lines
        .next()
        .and_then(|l| l.split(' ').nth(1))
        .and_then(|c| c.parse().ok())
        .unwrap_or(0);
    let headers = lines
        .filter_map(|l| l.split_once(':'))
        .map(|(k, v)| (k.trim().to_owned(), v.trim().to_owned()))
        .collect();
    Ok(HttpResponse {
        status,
        headers,
        body: body.to_owned(),
    })
}

/// A port nothing listens on right now.
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// A daemon running in-process.
pub struct Daemon {
    stop: Option<oneshot::Sender<()>>,
    task: JoinHandle<anyhow::Result<()>>,
}

impl Daemon {
    /// Asks it to stop and waits; panics if it failed.
    pub async fn stop(mut self) {
        if let Some(tx) = self.stop.take() {
            let _ = tx.send(());
        }
        let result = tokio::time::timeout(PATIENCE, &mut self.task)
            .await
            .expect("daemon stops in time")
            .expect("daemon task did not panic");
        result.expect("daemon exited cleanly");
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        self.task.abort();
    }
}
