//! The fill-lease protocol: the Redis side of a miss.
//!
//! 1. [`acquire`]: value there? return it. Else take the lease, then
//!    register the key under each dependency ([`crate::registry`]), before
//!    the caller reads the database.
//! 2. The caller computes.
//! 3. [`fill`]: store only if the lease still holds our token.
//!
//! Any invalidation that drains a dependency after step 1 finds the key
//! there and deletes the lease, so step 3 refuses to store what may be
//! stale. One that drained it before the key was registered ran after the
//! change it invalidates had committed, so the read in step 2 sees that
//! change. Each step touches one slot at a time (a Redis Cluster allows no
//! more); the order is what makes it safe.
//!
//! ```no_run
//! # async fn demo() -> redis::RedisResult<()> {
//! use std::time::Duration;
//! use smartcache_core::conn::{Conn, Options};
//! use smartcache_core::fill::{acquire, fill, new_token, Acquired};
//! use smartcache_core::keys::{Namespace, TableName};
//! let mut con = Conn::open("redis://127.0.0.1:6379/0", &Options::default())?;
//! let ns = Namespace::default();
//! let deps = [TableName::parse("products").unwrap().row_dep(&["1"])];
//! let token = new_token();
//! if let Acquired::Lease = acquire(&mut con, &ns, "product:1", &token, Duration::from_secs(5), &deps).await? {
//!     let value = br#"{"id":1}"#; // read from the database now
//!     fill(&mut con, &ns, "product:1", &token, value, None, &deps).await?;
//! }
//! # Ok(()) }
//! ```

use std::hash::{BuildHasher, RandomState};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::LazyLock;
use std::time::{Duration, SystemTime};

use redis::{RedisResult, Value};

use crate::conn::Conn;
use crate::fingerprint::fingerprint;
use crate::keys::{DepId, Namespace};
use crate::registry::register;
use crate::scripts::{ACQUIRE, FILL, RELEASE, SEIZE};

/// What [`acquire`] found.
///
/// ```
/// use smartcache_core::fill::Acquired;
/// assert_ne!(Acquired::Lease, Acquired::HeldByOther);
/// ```
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Acquired {
    /// The value is cached.
    Value(Vec<u8>),
    /// We hold the lease; dependencies are registered.
    Lease,
    /// Another filler holds the lease.
    HeldByOther,
}

/// A token unique to this fill attempt, across processes.
///
/// ```
/// let (a, b) = (smartcache_core::fill::new_token(), smartcache_core::fill::new_token());
/// assert_ne!(a, b);
/// ```
pub fn new_token() -> String {
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

/// Step 1 of a miss: returns the value if it is cached; else takes the
/// fill lease of `key` with `token` for `lease_ttl` and registers `key`
/// under each of `deps`. A lease whose registration failed is given back
/// and the error returned: unregistered, the fill could not be invalidated.
///
/// ```no_run
/// # async fn demo(mut con: smartcache_core::conn::Conn) -> redis::RedisResult<()> {
/// use std::time::Duration;
/// use smartcache_core::fill::{acquire, new_token};
/// let ns = smartcache_core::keys::Namespace::default();
/// let got = acquire(&mut con, &ns, "product_list", &new_token(), Duration::from_secs(5), &[]).await?;
/// # Ok(()) }
/// ```
pub async fn acquire(
    con: &mut Conn,
    ns: &Namespace,
    key: &str,
    token: &str,
    lease_ttl: Duration,
    deps: &[DepId],
) -> RedisResult<Acquired> {
    let e = ns.entry_keys(key);
    let reply: Value = ACQUIRE
        .prepare_invoke()
        .key(&e.value)
        .key(&e.lease)
        .arg(token)
        .arg((lease_ttl.as_millis() as u64).max(1))
        .invoke_async(con)
        .await?;
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
            let _ = release(con, ns, key, token).await;
            return Err(e);
        }
    }
    Ok(acquired)
}

fn unexpected(script: &str, got: &dyn std::fmt::Debug) -> redis::RedisError {
    redis::RedisError::from((
        redis::ErrorKind::UnexpectedReturnType,
        "unexpected reply from a smartcache script",
        format!("{script}: {got:?}"),
    ))
}

/// Step 3 of a miss: stores `value` (with `ttl`, `None` for none) and its
/// stamp if the lease still holds `token`, and drops the lease. Returns whether it was
/// stored: `false` means an invalidation, a store or the sweeper came
/// first, so the value may be stale. `deps` are the dependencies
/// [`acquire`] registered: their fingerprint goes with the stamp, so the
/// sweeper can remove registrations under any others.
///
/// ```no_run
/// # async fn demo(mut con: smartcache_core::conn::Conn, token: String) -> redis::RedisResult<()> {
/// let ns = smartcache_core::keys::Namespace::default();
/// let stored = smartcache_core::fill::fill(&mut con, &ns, "product_list", &token, b"[]", None, &[]).await?;
/// # Ok(()) }
/// ```
pub async fn fill(
    con: &mut Conn,
    ns: &Namespace,
    key: &str,
    token: &str,
    value: &[u8],
    ttl: Option<Duration>,
    deps: &[DepId],
) -> RedisResult<bool> {
    let e = ns.entry_keys(key);
    FILL.prepare_invoke()
        .key(e.all().as_slice())
        .arg(token)
        .arg(value)
        .arg(ttl_ms(ttl))
        .arg(key)
        .arg(fingerprint(deps))
        .invoke_async(con)
        .await
}

/// Gives the lease back without storing (the computation failed or was
/// cancelled), so other fillers need not wait for it to expire. Returns
/// whether the lease still held `token`.
///
/// ```no_run
/// # async fn demo(mut con: smartcache_core::conn::Conn, token: String) -> redis::RedisResult<()> {
/// let ns = smartcache_core::keys::Namespace::default();
/// smartcache_core::fill::release(&mut con, &ns, "product_list", &token).await?;
/// # Ok(()) }
/// ```
pub async fn release(con: &mut Conn, ns: &Namespace, key: &str, token: &str) -> RedisResult<bool> {
    let e = ns.entry_keys(key);
    RELEASE
        .prepare_invoke()
        .key(&e.lease)
        .key(&e.value)
        .key(&e.stamps)
        .arg(token)
        .arg(key)
        .invoke_async(con)
        .await
}

/// How long [`store`] waits for a sweeper's fence to go before it takes
/// the lease anyway: the sweeper holds one for a few round trips, and one
/// that died leaves it for 10 s.
const SWEEP_FENCE_PATIENCE: Duration = Duration::from_millis(200);

/// Unconditional store with dependency registration; defeats in-flight
/// fills of the key. Returns whether it was stored. Three steps: take the
/// lease whatever holds it (for `lease_ttl`; a sweeper's fence is waited
/// for first, up to 200 ms), register `key` under `deps`,
/// then store as a fill does, under that lease. So the value is never
/// there without its registrations: a registration that fails (the lease
/// is given back and the error returned) or is cut short stores nothing,
/// and an invalidation of a dependency between the last two steps deletes
/// the lease, so the store is refused (`Ok(false)`) like a fill that read
/// before that commit.
///
/// ```no_run
/// # async fn demo(mut con: smartcache_core::conn::Conn) -> redis::RedisResult<()> {
/// use std::time::Duration;
/// use smartcache_core::keys::{Namespace, TableName};
/// let deps = [TableName::parse("products").unwrap().table_dep()];
/// let ns = Namespace::default();
/// let lease = Duration::from_secs(5);
/// smartcache_core::fill::store(&mut con, &ns, "product_list", b"[]", None, lease, &deps).await?;
/// # Ok(()) }
/// ```
pub async fn store(
    con: &mut Conn,
    ns: &Namespace,
    key: &str,
    value: &[u8],
    ttl: Option<Duration>,
    lease_ttl: Duration,
    deps: &[DepId],
) -> RedisResult<bool> {
    let token = new_token();
    let lease = ns.lease_key(key);
    let waited = std::time::Instant::now();
    loop {
        let force = waited.elapsed() >= SWEEP_FENCE_PATIENCE;
        let seized: i64 = SEIZE
            .prepare_invoke()
            .key(&lease)
            .arg(&token)
            .arg((lease_ttl.as_millis() as u64).max(1))
            .arg(if force { "1" } else { "" })
            .invoke_async(con)
            .await?;
        if seized == 1 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
    if let Err(e) = register(con, ns, key, deps).await {
        let _ = release(con, ns, key, &token).await;
        return Err(e);
    }
    fill(con, ns, key, &token, value, ttl, deps).await
}
