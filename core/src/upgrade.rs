//! The upgrade from the per-entry layout, in which every entry had a
//! reverse index `{ns}:@sc:deps:{{ns}:{K}}` and a birth stamp
//! `{ns}:@sc:born:{{ns}:{K}}` of its own, to the compact one.
//!
//! Dependency sets kept their names and type, so invalidation of entries
//! that an older library registered needs nothing: [`crate::invalidate`]
//! drains their sets as before. What is left are the two per-entry keys,
//! which only the admin view read: [`upgrade`] moves each birth time into
//! the stamps hash of its slot and deletes both keys. The daemon runs it
//! when it starts and with every sweep, so entries that an older library
//! still writes during a rolling upgrade are folded in too.
//!
//! ```no_run
//! # async fn demo(mut con: smartcache_core::conn::Conn) -> redis::RedisResult<()> {
//! let ns = smartcache_core::keys::Namespace::default();
//! let upgraded = smartcache_core::upgrade::upgrade(&mut con, &ns).await?;
//! # Ok(()) }
//! ```

use std::collections::BTreeSet;

use redis::RedisResult;

use crate::conn::{Conn, CHUNK};
use crate::keys::{slot, Bookkeeping, Namespace};
use crate::scripts::UPGRADE;

/// Folds every entry's per-entry bookkeeping into the compact layout;
/// returns how many entries had some.
///
/// ```no_run
/// # async fn demo(mut con: smartcache_core::conn::Conn) -> redis::RedisResult<()> {
/// let ns = smartcache_core::keys::Namespace::default();
/// smartcache_core::upgrade::upgrade(&mut con, &ns).await?;
/// # Ok(()) }
/// ```
pub async fn upgrade(con: &mut Conn, ns: &Namespace) -> RedisResult<u64> {
    let found = con.scan_all(&ns.match_bookkeeping()).await?;
    let keys: BTreeSet<&str> = found
        .iter()
        .filter_map(|k| match ns.bookkeeping(k) {
            Some(Bookkeeping::LegacyDeps(key) | Bookkeeping::LegacyBorn(key)) => Some(key),
            _ => None,
        })
        .collect();
    let (together, apart): (Vec<_>, Vec<_>) = keys
        .iter()
        .map(|k| ns.entry_keys(k))
        .partition(|e| con.reaches(e));
    let calls: Vec<_> = together
        .iter()
        .map(|e| {
            let mut inv = UPGRADE.prepare_invoke();
            inv.key(&e.value)
                .key(ns.legacy_born_key(&e.key))
                .key(ns.legacy_deps_key(&e.key))
                .key(&e.stamps)
                .arg(&e.key);
            inv
        })
        .collect();
    for chunk in calls.chunks(CHUNK) {
        con.run_script(&UPGRADE, chunk).await?;
    }
    // A key with braces on a cluster: its old keys are in another slot than
    // its value; they are dropped (its age becomes unknown).
    let old: Vec<String> = apart
        .iter()
        .flat_map(|e| [ns.legacy_born_key(&e.key), ns.legacy_deps_key(&e.key)])
        .collect();
    let cmds = con
        .group(old, |k| slot(k), CHUNK)
        .into_iter()
        .flatten()
        .map(|k| redis::cmd("UNLINK").arg(k).clone())
        .collect();
    con.run_all(cmds).await?;
    Ok(keys.len() as u64)
}
