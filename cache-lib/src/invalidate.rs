//! Deleting entries together with their bookkeeping; used by the library's
//! `clear*` calls and by the invalidator daemon.

use redis::aio::ConnectionLike;
use redis::{RedisResult, Script};
use std::sync::LazyLock;

use crate::keys::{DepId, Namespace, INVALIDATE_LUA};

/// Arguments per script call: big enough to amortise the round trip, small
/// enough that one call never blocks Redis for long.
const CHUNK: usize = 512;

static INVALIDATE: LazyLock<Script> = LazyLock::new(|| Script::new(INVALIDATE_LUA));

/// Deletes the cache entries `keys` and every entry registered under one of
/// `deps`, with their leases and dependency registrations, in one pipelined
/// round trip. Returns how many values were deleted. Idempotent: running it
/// twice deletes nothing more.
///
/// ```no_run
/// # async fn demo() -> redis::RedisResult<()> {
/// use smartcache::keys::{Namespace, TableName};
/// let client = redis::Client::open("redis://127.0.0.1:6379/0")?;
/// let mut con = client.get_multiplexed_async_connection().await?;
/// let ns = Namespace::default();
/// let deps = [TableName::parse("products").unwrap().table_dep()];
/// smartcache::invalidate::invalidate(&mut con, &ns, &["product_list".into()], &deps).await?;
/// # Ok(()) }
/// ```
pub async fn invalidate<C>(
    con: &mut C,
    ns: &Namespace,
    keys: &[String],
    deps: &[DepId],
) -> RedisResult<u64>
where
    C: ConnectionLike + Send,
{
    if keys.is_empty() && deps.is_empty() {
        return Ok(0);
    }
    let mut pipe = redis::pipe();
    for chunk in keys.chunks(CHUNK) {
        let mut inv = INVALIDATE.prepare_invoke();
        inv.arg(ns.prefix()).arg(chunk.len()).arg(chunk);
        pipe.invoke_script(&inv);
    }
    for chunk in deps.chunks(CHUNK) {
        let mut inv = INVALIDATE.prepare_invoke();
        inv.arg(ns.prefix()).arg(0);
        for d in chunk {
            inv.arg(d.as_str());
        }
        pipe.invoke_script(&inv);
    }
    let counts: Vec<u64> = match pipe.query_async(con).await {
        Ok(counts) => counts,
        Err(e) if e.kind() == redis::ErrorKind::Server(redis::ServerErrorKind::NoScript) => {
            INVALIDATE.prepare_invoke().load_async(con).await?;
            pipe.query_async(con).await?
        }
        Err(e) => return Err(e),
    };
    Ok(counts.iter().sum())
}

/// Collects the Redis keys matching `pattern` with `SCAN` (never `KEYS`, so
/// Redis is not blocked on a large database).
///
/// ```no_run
/// # async fn demo() -> redis::RedisResult<()> {
/// let client = redis::Client::open("redis://127.0.0.1:6379/0")?;
/// let mut con = client.get_multiplexed_async_connection().await?;
/// let found = smartcache::invalidate::scan_matching(&mut con, "cache:product:*").await?;
/// # Ok(()) }
/// ```
pub async fn scan_matching<C>(con: &mut C, pattern: &str) -> RedisResult<Vec<String>>
where
    C: ConnectionLike + Send,
{
    let mut cursor: u64 = 0;
    let mut out = Vec::new();
    loop {
        let (next, batch): (u64, Vec<String>) = redis::cmd("SCAN")
            .arg(cursor)
            .arg("MATCH")
            .arg(pattern)
            .arg("COUNT")
            .arg(1000)
            .query_async(con)
            .await?;
        out.extend(batch);
        if next == 0 {
            break;
        }
        cursor = next;
    }
    out.sort_unstable();
    out.dedup();
    Ok(out)
}
