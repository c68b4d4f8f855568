//! The fill-lease protocol: the Redis side of `get_or_compute` on a miss.
//!
//! 1. [`acquire`]: value there? return it. Else take the lease, then add
//!    the key to each dependency set, before the caller reads the database.
//! 2. The caller computes.
//! 3. [`fill`]: store only if the lease still holds our token.
//!
//! Any invalidation that takes a dependency set after step 1 finds the key
//! there and deletes the lease, so step 3 refuses to store what may be
//! stale. One that took the set before the key was added ran after the
//! change it invalidates had committed, so the read in step 2 sees that
//! change. Each step touches one slot at a time (a Redis Cluster allows no
//! more); the order is what makes it safe.

use std::hash::{BuildHasher, RandomState};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, LazyLock};
use std::time::{Duration, SystemTime};

use redis::{RedisResult, Script, Value};

use crate::cache::Inner;
use crate::conn::Conn;
use crate::keys::{
    slot, DepId, Namespace, ACQUIRE_LUA, DESCRIBE_LUA, FILL_LUA, RELEASE_LUA, STORE_LUA,
};

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

pub(crate) async fn acquire(
    con: &mut Conn,
    ns: &Namespace,
    key: &str,
    token: &str,
    lease_ttl: Duration,
    deps: &[DepId],
) -> RedisResult<Acquired> {
    let e = ns.entry_keys(key);
    let mut inv = ACQUIRE.prepare_invoke();
    inv.key(&e.value)
        .key(&e.lease)
        .key(&e.deps)
        .arg(token)
        .arg((lease_ttl.as_millis() as u64).max(1));
    for d in deps {
        inv.arg(d.as_str());
    }
    let reply: Value = inv.invoke_async(con).await?;
    let acquired = match reply {
        Value::Array(items) => match items.as_slice() {
            [Value::Int(1), Value::BulkString(v)] => Acquired::Value(v.clone()),
            [Value::Int(2)] => Acquired::Lease,
            [Value::Int(0)] => Acquired::HeldByOther,
            _ => return Err(unexpected("acquire", &items)),
        },
        other => return Err(unexpected("acquire", &other)),
    };
    if matches!(acquired, Acquired::Lease) {
        if let Err(e) = register(con, ns, key, deps).await {
            // Without its registrations the fill could not be invalidated.
            let _ = release(con, ns, key, token).await;
            return Err(e);
        }
    }
    Ok(acquired)
}

/// Adds `key` to the dependency set of each of `deps`.
async fn register(con: &mut Conn, ns: &Namespace, key: &str, deps: &[DepId]) -> RedisResult<()> {
    let cmds = deps
        .iter()
        .map(|d| redis::cmd("SADD").arg(ns.dep_set_key(d)).arg(key).clone())
        .collect();
    con.run_all(cmds).await.map(drop)
}

fn unexpected(script: &str, got: &dyn std::fmt::Debug) -> redis::RedisError {
    redis::RedisError::from((
        redis::ErrorKind::UnexpectedReturnType,
        "unexpected reply from a smartcache script",
        format!("{script}: {got:?}"),
    ))
}

/// Stores `value` if our lease still stands; true if stored.
pub(crate) async fn fill(
    con: &mut Conn,
    ns: &Namespace,
    key: &str,
    token: &str,
    value: &[u8],
    ttl: Option<Duration>,
) -> RedisResult<bool> {
    let e = ns.entry_keys(key);
    FILL.prepare_invoke()
        .key(e.all().as_slice())
        .arg(token)
        .arg(value)
        .arg(ttl_ms(ttl))
        .invoke_async(con)
        .await
}

/// Gives the lease back without storing.
pub(crate) async fn release(
    con: &mut Conn,
    ns: &Namespace,
    key: &str,
    token: &str,
) -> RedisResult<bool> {
    let e = ns.entry_keys(key);
    RELEASE
        .prepare_invoke()
        .key(&e.lease)
        .key(&e.value)
        .key(&e.deps)
        .arg(token)
        .invoke_async(con)
        .await
}

/// Unconditional store with dependency registration; defeats in-flight
/// fills of the key. The value is written before the key joins the
/// dependency sets: an invalidation in between misses it, as it would miss
/// a store that came a moment later, but the key is registered for every
/// change after.
pub(crate) async fn store(
    con: &mut Conn,
    ns: &Namespace,
    key: &str,
    value: &[u8],
    ttl: Option<Duration>,
    deps: &[DepId],
) -> RedisResult<()> {
    let e = ns.entry_keys(key);
    let mut inv = STORE.prepare_invoke();
    inv.key(e.all().as_slice()).arg(value).arg(ttl_ms(ttl));
    for d in deps {
        inv.arg(d.as_str());
    }
    inv.invoke_async::<i64>(con).await?;
    register(con, ns, key, deps).await
}

/// Size in bytes, dependency ids and age (if the library stored it) of
/// each key; `None` for keys that vanished.
pub(crate) async fn describe(
    con: &mut Conn,
    ns: &Namespace,
    keys: &[&str],
) -> RedisResult<Vec<Option<(u64, Vec<String>, Option<Duration>)>>> {
    let (together, apart): (Vec<_>, Vec<_>) = keys
        .iter()
        .map(|k| ns.entry_keys(k))
        .enumerate()
        .partition(|(_, e)| con.reaches(e));
    let groups = con.group(together, |(_, e)| slot(&e.value), 256);
    let calls: Vec<_> = groups
        .iter()
        .map(|group| {
            let mut inv = DESCRIBE.prepare_invoke();
            for (_, e) in group {
                inv.key(&e.value).key(&e.deps).key(&e.born);
            }
            inv
        })
        .collect();
    let mut out = vec![None; keys.len()];
    // A key with braces on a cluster (another program's): its size only.
    let sizes = apart
        .iter()
        .map(|(_, e)| redis::cmd("MEMORY").arg("USAGE").arg(&e.value).clone())
        .collect();
    for ((i, _), size) in apart.iter().zip(con.run_all(sizes).await?) {
        let size: Option<u64> = redis::from_redis_value(size)?;
        out[*i] = size.map(|s| (s, Vec::new(), None));
    }
    for (group, reply) in groups.iter().zip(con.run_script(&DESCRIBE, &calls).await?) {
        let rows: Vec<(i64, Vec<String>, i64)> = redis::from_redis_value(reply)?;
        for ((i, _), (size, mut deps, age_ms)) in group.iter().zip(rows) {
            deps.sort_unstable();
            let age = u64::try_from(age_ms).ok().map(Duration::from_millis);
            out[*i] = u64::try_from(size).ok().map(|s| (s, deps, age));
        }
    }
    Ok(out)
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
