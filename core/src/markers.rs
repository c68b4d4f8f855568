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
