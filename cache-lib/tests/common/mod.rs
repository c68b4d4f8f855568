//! Shared fixture: each test gets its own namespace on the shared Redis,
//! or its own throwaway `redis-server`.
#![allow(dead_code, unreachable_pub)]

use std::net::TcpListener;
use std::path::Path;
use std::process::Stdio;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant, SystemTime};

use smartcache::Cache;
use smartcache_core::conn::{Conn, Options};

pub fn redis_url() -> String {
    std::env::var("SMARTCACHE_TEST_REDIS_URL").unwrap_or_else(|_| "redis://127.0.0.1:6379/0".into())
}

/// Whether `SMARTCACHE_TEST_REDIS_URL` names a Redis Cluster
/// (`SMARTCACHE_TEST_REDIS_CLUSTER=1`).
pub fn cluster() -> bool {
    std::env::var("SMARTCACHE_TEST_REDIS_CLUSTER").is_ok_and(|v| v == "1")
}

pub fn builder(ns: &str) -> smartcache::CacheBuilder {
    Cache::builder(&redis_url())
        .namespace(ns)
        .cluster(cluster())
}

/// `t_<name>_<pid>_<n>_<nanos>`: unique per test run, so tests run in
/// parallel on one Redis without touching each other.
pub fn namespace(test: &str) -> String {
    static N: AtomicU64 = AtomicU64::new(0);
    let nanos = SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .unwrap()
        .subsec_nanos();
    format!(
        "t_{test}_{}_{}_{nanos:x}",
        std::process::id(),
        N.fetch_add(1, Ordering::Relaxed)
    )
}

pub struct Fixture {
    pub ns: String,
    pub cache: Cache,
    pub redis: Conn,
}

impl Fixture {
    pub async fn new(test: &str) -> Self {
        let ns = namespace(test);
        let cache = builder(&ns)
            .build()
            .await
            .expect("Redis at 127.0.0.1:6379 must be running for these tests");
        let mut options = Options::default();
        options.cluster = cluster();
        let redis = Conn::open(&redis_url(), &options).unwrap();
        Self { ns, cache, redis }
    }

    /// Another `Cache` on the same namespace, as another process would have.
    pub async fn other_process(&self) -> Cache {
        builder(&self.ns).build().await.unwrap()
    }

    pub async fn raw_get(&mut self, key: &str) -> Option<Vec<u8>> {
        redis::cmd("GET")
            .arg(self.cache.namespace().value_key(key))
            .query_async(&mut self.redis)
            .await
            .unwrap()
    }

    pub async fn raw_set(&mut self, redis_key: &str, value: &str) {
        redis::cmd("SET")
            .arg(redis_key)
            .arg(value)
            .query_async::<()>(&mut self.redis)
            .await
            .unwrap();
    }

    pub async fn exists(&mut self, redis_key: &str) -> bool {
        redis::cmd("EXISTS")
            .arg(redis_key)
            .query_async::<u64>(&mut self.redis)
            .await
            .unwrap()
            == 1
    }

    /// Every Redis key of the namespace, sorted.
    pub async fn all_keys(&mut self) -> Vec<String> {
        let pattern = self.cache.namespace().match_all();
        self.redis.scan_all(&pattern).await.unwrap()
    }

    pub async fn cleanup(mut self) {
        self.cache.clear_all().await.unwrap();
        assert!(self.all_keys().await.is_empty());
    }
}

pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// A throwaway `redis-server` without persistence, stopped by PID.
pub struct OwnRedis {
    pub port: u16,
    child: Option<tokio::process::Child>,
    dir: tempfile::TempDir,
}

impl OwnRedis {
    pub async fn start() -> Self {
        let dir = tempfile::tempdir().unwrap();
        let port = free_port();
        let mut me = Self {
            port,
            child: None,
            dir,
        };
        me.restart().await;
        me
    }

    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}/0", self.port)
    }

    pub async fn restart(&mut self) {
        assert!(self.child.is_none(), "already running");
        let child = spawn_redis(self.port, self.dir.path());
        self.child = Some(child);
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            if tokio::net::TcpStream::connect(("127.0.0.1", self.port))
                .await
                .is_ok()
            {
                return;
            }
            assert!(Instant::now() < deadline, "redis-server did not start");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// Kills our own server by its PID (never by name).
    pub async fn stop(&mut self) {
        if let Some(mut child) = self.child.take() {
            child.start_kill().unwrap();
            child.wait().await.unwrap();
        }
    }
}

fn spawn_redis(port: u16, dir: &Path) -> tokio::process::Child {
    tokio::process::Command::new("redis-server")
        .args(["--port", &port.to_string(), "--bind", "127.0.0.1"])
        .args(["--save", "", "--appendonly", "no"])
        .arg("--dir")
        .arg(dir)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .kill_on_drop(true)
        .spawn()
        .expect("redis-server must be installed for the Redis-down test")
}

impl Drop for OwnRedis {
    fn drop(&mut self) {
        if let Some(child) = self.child.as_mut() {
            let _ = child.start_kill();
        }
    }
}

/// A fill that has taken its lease and read the database, paused before it
/// stores: lets a test run an invalidation at exactly that point.
pub struct PausedFill<T> {
    go: tokio::sync::oneshot::Sender<()>,
    task: tokio::task::JoinHandle<smartcache::Fetched<T>>,
}

impl<T: Send + 'static> PausedFill<T> {
    /// Lets the fill return `value` and store it if it still may.
    pub async fn finish(self) -> smartcache::Fetched<T> {
        self.go.send(()).unwrap();
        self.task.await.unwrap()
    }
}

/// Starts a fill of `key` that computes `value`; returns once the compute
/// closure runs (the lease is held, the "database read" done).
pub async fn paused_fill<T>(
    cache: &Cache,
    key: &str,
    deps: Vec<smartcache::Dep>,
    value: T,
) -> PausedFill<T>
where
    T: serde::Serialize + serde::de::DeserializeOwned + Send + Sync + 'static,
{
    let (read_tx, read_rx) = tokio::sync::oneshot::channel::<()>();
    let (go, go_rx) = tokio::sync::oneshot::channel::<()>();
    let cache = cache.clone();
    let key = key.to_owned();
    let task = tokio::spawn(async move {
        cache
            .entry(key)
            .deps(deps)
            .fetch(|| async move {
                read_tx.send(()).unwrap();
                go_rx.await.unwrap();
                Ok::<_, smartcache::Error>(value)
            })
            .await
            .unwrap()
    });
    read_rx.await.unwrap();
    PausedFill { go, task }
}
