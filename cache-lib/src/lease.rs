//! The fill-lease protocol: the Redis side of `get_or_compute` on a miss.
//!
//! 1. [`acquire`]: value there? return it. Else take the lease and register
//!    the entry's dependencies, before the caller reads the database.
//! 2. The caller computes.
//! 3. [`fill`]: store only if the lease still holds our token.
//!
//! Any invalidation that runs after step 1 reaches the entry (through the
//! dependency sets registered in step 1, or by its key) and deletes the
//! lease, so step 3 refuses to store what may be stale. A change whose
//! invalidation ran before step 1 was committed before the read in step 2,
//! so the read sees it.

use std::hash::{BuildHasher, RandomState};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, LazyLock};
use std::time::{Duration, SystemTime};

use redis::aio::ConnectionLike;
use redis::{RedisResult, Script, Value};

use crate::cache::Inner;
use crate::keys::{DepId, Namespace, ACQUIRE_LUA, DESCRIBE_LUA, FILL_LUA, RELEASE_LUA, STORE_LUA};

static ACQUIRE: LazyLock<Script> = LazyLock::new(|| Script::new(ACQUIRE_LUA));
static FILL: LazyLock<Script> = LazyLock::new(|| Script::new(FILL_LUA));
static RELEASE: LazyLock<Script> = LazyLock::new(|| Script::new(RELEASE_LUA));
static STORE: LazyLock<Script> = LazyLock::new(|| Script::new(STORE_LUA));
static DESCRIBE: LazyLock<Script> = LazyLock::new(|| Script::new(DESCRIBE_LUA));

/// What [`acquire`] found.
#[derive(Debug)]
pub(crate) enum Acquired {
    /// The value is cached.
    Value(Vec<u8>),
    /// We hold the lease; dependencies are registered.
    Lease,
    /// Another filler holds the lease.
    HeldByOther,
}

/// A token unique to this fill attempt, across processes.
pub(crate) fn new_token() -> String {
    static PROCESS: LazyLock<u64> = LazyLock::new(|| {
        let now = SystemTime::now()
            .duration_since(SystemTime::UNIX_EPOCH)
            .unwrap_or_default()
            .as_nanos();
        RandomState::new().hash_one((std::process::id(), now))
    });
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    format!(
        "{:016x}.{:x}",
        *PROCESS,
        COUNTER.fetch_add(1, Ordering::Relaxed)
    )
}

fn ttl_ms(ttl: Option<Duration>) -> u64 {
    // A TTL below a millisecond would mean "no TTL" to the script.
    ttl.map_or(0, |d| (d.as_millis() as u64).max(1))
}

pub(crate) async fn acquire<C: ConnectionLike + Send>(
    con: &mut C,
    ns: &Namespace,
    key: &str,
    token: &str,
    lease_ttl: Duration,
    deps: &[DepId],
) -> RedisResult<Acquired> {
    let mut inv = ACQUIRE.prepare_invoke();
    inv.arg(ns.prefix())
        .arg(key)
        .arg(token)
        .arg((lease_ttl.as_millis() as u64).max(1));
    for d in deps {
        inv.arg(d.as_str());
    }
    let reply: Value = inv.invoke_async(con).await?;
    match reply {
        Value::Array(items) => match items.as_slice() {
            [Value::Int(1), Value::BulkString(v)] => Ok(Acquired::Value(v.clone())),
            [Value::Int(2)] => Ok(Acquired::Lease),
            [Value::Int(0)] => Ok(Acquired::HeldByOther),
            _ => Err(unexpected("acquire", &items)),
        },
        other => Err(unexpected("acquire", &other)),
    }
}

fn unexpected(script: &str, got: &dyn std::fmt::Debug) -> redis::RedisError {
    redis::RedisError::from((
        redis::ErrorKind::UnexpectedReturnType,
        "unexpected reply from a smartcache script",
        format!("{script}: {got:?}"),
    ))
}

/// Stores `value` if our lease still stands; true if stored.
pub(crate) async fn fill<C: ConnectionLike + Send>(
    con: &mut C,
    ns: &Namespace,
    key: &str,
    token: &str,
    value: &[u8],
    ttl: Option<Duration>,
) -> RedisResult<bool> {
    FILL.prepare_invoke()
        .arg(ns.prefix())
        .arg(key)
        .arg(token)
        .arg(value)
        .arg(ttl_ms(ttl))
        .invoke_async(con)
        .await
}

/// Gives the lease back without storing.
pub(crate) async fn release<C: ConnectionLike + Send>(
    con: &mut C,
    ns: &Namespace,
    key: &str,
    token: &str,
) -> RedisResult<bool> {
    RELEASE
        .prepare_invoke()
        .arg(ns.prefix())
        .arg(key)
        .arg(token)
        .invoke_async(con)
        .await
}

/// Unconditional store with dependency registration; defeats in-flight
/// fills of the key.
pub(crate) async fn store<C: ConnectionLike + Send>(
    con: &mut C,
    ns: &Namespace,
    key: &str,
    value: &[u8],
    ttl: Option<Duration>,
    deps: &[DepId],
) -> RedisResult<()> {
    let mut inv = STORE.prepare_invoke();
    inv.arg(ns.prefix()).arg(key).arg(value).arg(ttl_ms(ttl));
    for d in deps {
        inv.arg(d.as_str());
    }
    inv.invoke_async::<i64>(con).await.map(drop)
}

/// Size in bytes, dependency ids and age (if the library stored it) of
/// each key; `None` for keys that vanished.
pub(crate) async fn describe<C: ConnectionLike + Send>(
    con: &mut C,
    ns: &Namespace,
    keys: &[&str],
) -> RedisResult<Vec<Option<(u64, Vec<String>, Option<Duration>)>>> {
    let mut inv = DESCRIBE.prepare_invoke();
    inv.arg(ns.prefix());
    for k in keys {
        inv.arg(*k);
    }
    let rows: Vec<(i64, Vec<String>, i64)> = inv.invoke_async(con).await?;
    Ok(rows
        .into_iter()
        .map(|(size, mut deps, age_ms)| {
            deps.sort_unstable();
            let age = u64::try_from(age_ms).ok().map(Duration::from_millis);
            u64::try_from(size).ok().map(|s| (s, deps, age))
        })
        .collect())
}

/// A held lease. Dropped without [`Lease::fill`] (the computation failed or
/// the request was cancelled), it is released in the background so other
/// fillers need not wait for it to expire.
pub(crate) struct Lease {
    inner: Arc<Inner>,
    key: String,
    token: String,
    armed: bool,
}

impl Lease {
    pub(crate) fn new(inner: Arc<Inner>, key: &str, token: String) -> Self {
        Self {
            inner,
            key: key.to_owned(),
            token,
            armed: true,
        }
    }

    /// Stores `value` if the lease still stands; true if stored.
    pub(crate) async fn fill(mut self, value: &[u8], ttl: Option<Duration>) -> bool {
        let mut con = self.inner.con.clone();
        let stored = self
            .inner
            .try_redis(
                "fill",
                fill(&mut con, &self.inner.ns, &self.key, &self.token, value, ttl),
            )
            .await;
        if stored.is_some() {
            self.armed = false;
        }
        stored.unwrap_or(false)
    }
}

impl Lease {
    /// Gives the lease back without storing.
    pub(crate) async fn release(mut self) {
        self.armed = false;
        let mut con = self.inner.con.clone();
        self.inner
            .try_redis(
                "release",
                release(&mut con, &self.inner.ns, &self.key, &self.token),
            )
            .await;
    }
}

impl Drop for Lease {
    fn drop(&mut self) {
        if !self.armed {
            return;
        }
        let Ok(rt) = tokio::runtime::Handle::try_current() else {
            return;
        };
        let inner = self.inner.clone();
        let key = std::mem::take(&mut self.key);
        let token = std::mem::take(&mut self.token);
        rt.spawn(async move {
            let mut con = inner.con.clone();
            inner
                .try_redis("release", release(&mut con, &inner.ns, &key, &token))
                .await;
        });
    }
}
