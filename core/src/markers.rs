//! The marker keys that watch Redis for data loss (see
//! [`Namespace::marker_keys`]).

use redis::RedisResult;

use crate::conn::{sum_ints, Conn};
use crate::keys::Namespace;

/// What [`check_markers`] found (see [`Namespace::marker_keys`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
///
/// ```
/// use smartcache_core::markers::Markers;
/// assert_ne!(Markers::Intact, Markers::Lost { missing: 1 });
/// ```
pub enum Markers {
    /// Every marker is there: no part of the keyspace lost its data.
    Intact,
    /// None is there: a new namespace, or all of Redis lost its data (the
    /// cached values with it).
    Absent,
    /// Some are gone: part of the keyspace lost its data, and dependency
    /// sets may have gone while values elsewhere survived.
    Lost {
        /// How many markers are gone.
        missing: usize,
    },
}

/// Checks the namespace's marker keys.
///
/// ```no_run
/// # async fn demo(mut con: smartcache_core::conn::Conn) -> redis::RedisResult<()> {
/// use smartcache_core::markers::{check_markers, Markers};
/// let ns = smartcache_core::keys::Namespace::default();
/// if let Markers::Lost { missing } = check_markers(&mut con, &ns).await? {
///     eprintln!("{missing} markers gone: part of Redis lost its data");
/// }
/// # Ok(()) }
/// ```
pub async fn check_markers(con: &mut Conn, ns: &Namespace) -> RedisResult<Markers> {
    let markers = ns.marker_keys();
    let cmds = markers
        .iter()
        .map(|k| redis::cmd("EXISTS").arg(k).clone())
        .collect();
    let found: u64 = sum_ints(con.run_all(cmds).await?)?;
    let missing = markers.len() - found as usize;
    Ok(match missing {
        0 => Markers::Intact,
        m if m == markers.len() => Markers::Absent,
        m => Markers::Lost { missing: m },
    })
}

/// Sets the namespace's marker keys.
///
/// ```no_run
/// # async fn demo(mut con: smartcache_core::conn::Conn) -> redis::RedisResult<()> {
/// smartcache_core::markers::set_markers(&mut con, &smartcache_core::keys::Namespace::default()).await?;
/// # Ok(()) }
/// ```
pub async fn set_markers(con: &mut Conn, ns: &Namespace) -> RedisResult<()> {
    let cmds = ns
        .marker_keys()
        .iter()
        .map(|k| redis::cmd("SET").arg(k).arg(1).clone())
        .collect();
    con.run_all(cmds).await.map(drop)
}

/// The generation keys of the namespace: one per primary (see
/// [`Namespace::generation_key`]).
///
/// ```no_run
/// # async fn demo(con: smartcache_core::conn::Conn) -> redis::RedisResult<()> {
/// let ns = smartcache_core::keys::Namespace::default();
/// let keys = smartcache_core::markers::generation_keys(&con, &ns).await?;
/// # Ok(()) }
/// ```
pub async fn generation_keys(con: &Conn, ns: &Namespace) -> RedisResult<Vec<String>> {
    Ok(con
        .primary_slots()
        .await?
        .into_iter()
        .map(|s| ns.generation_key(s))
        .collect())
}

/// Increments each generation key; returns the new values in order.
///
/// Call it after a batch's deletions have completed: each primary then
/// applies the increment after them, and whatever keeps a prefix of that
/// primary's writes (a snapshot, an append-only file, a replica) keeps the
/// increment only if it kept the deletions.
///
/// ```no_run
/// # async fn demo(mut con: smartcache_core::conn::Conn, keys: Vec<String>) -> redis::RedisResult<()> {
/// let values = smartcache_core::markers::bump_generations(&mut con, &keys).await?;
/// # Ok(()) }
/// ```
pub async fn bump_generations(con: &mut Conn, keys: &[String]) -> RedisResult<Vec<i64>> {
    each_key(con, "INCR", keys).await
}

/// The current value of each generation key (`None`: missing).
///
/// ```no_run
/// # async fn demo(mut con: smartcache_core::conn::Conn, keys: Vec<String>) -> redis::RedisResult<()> {
/// let values = smartcache_core::markers::read_generations(&mut con, &keys).await?;
/// # Ok(()) }
/// ```
pub async fn read_generations(con: &mut Conn, keys: &[String]) -> RedisResult<Vec<Option<i64>>> {
    each_key(con, "GET", keys).await
}

/// `command key` for each key (each on its own node), replies in order.
async fn each_key<T: redis::FromRedisValue>(
    con: &mut Conn,
    command: &str,
    keys: &[String],
) -> RedisResult<Vec<T>> {
    let cmds = keys
        .iter()
        .map(|k| redis::cmd(command).arg(k).clone())
        .collect();
    con.run_all(cmds)
        .await?
        .into_iter()
        .map(|v| redis::from_redis_value(v).map_err(redis::RedisError::from))
        .collect()
}

/// Raises a generation key to at least `value` (after the values were
/// dropped for a regression, so later increments exceed what was recorded).
///
/// ```no_run
/// # async fn demo(mut con: smartcache_core::conn::Conn) -> redis::RedisResult<()> {
/// smartcache_core::markers::raise_generation(&mut con, "cache:@sc:gen", 42).await?;
/// # Ok(()) }
/// ```
pub async fn raise_generation(con: &mut Conn, key: &str, value: i64) -> RedisResult<()> {
    crate::scripts::RAISE
        .key(key)
        .arg(value)
        .invoke_async::<i64>(con)
        .await
        .map(drop)
}
