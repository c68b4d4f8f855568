//! Deleting entries together with their bookkeeping: the invalidator's
//! batches, and the library's `clear*` calls.
//!
//! Every step touches one slot at a time, so the same code serves a single
//! server and a Redis Cluster. The order of the steps is what keeps a fill
//! from caching stale data (see [`crate::fill`]).

use std::collections::{BTreeMap, BTreeSet};

use futures_util::future::try_join;
use redis::RedisResult;

use crate::conn::{sum_ints, Conn, CHUNK};
use crate::fill::new_token;
use crate::keys::{slot, DepId, EntryKeys, Namespace};
use crate::markers::set_markers;
use crate::registry::with_bucket;
use crate::scripts::{DRAIN, DROP};

/// Deletes the cache entries `keys` and every entry registered under one of
/// `deps`, with their leases and bookkeeping. Returns how many values were
/// deleted. Idempotent: running it twice deletes nothing more.
///
/// Three steps, each one pipelined round trip (concurrent per node on a
/// cluster): move each dependency's registrants into an entry of this call
/// in the dependency's drains hash, taking over the entries already there
/// (and delete `keys` meanwhile); delete the entries found; delete the
/// drains entries they came from. The last two are skipped when nothing
/// was found. A drains entry never changes and goes only once its members
/// were dropped after it was written, so a caller that fails midway leaves
/// them for the next invalidation of those dependencies (its own retry),
/// whatever concurrent invalidations do.
///
/// ```no_run
/// # async fn demo() -> redis::RedisResult<()> {
/// use smartcache_core::conn::{Conn, Options};
/// use smartcache_core::keys::{Namespace, TableName};
/// let mut con = Conn::open("redis://127.0.0.1:6379/0", &Options::default())?;
/// let ns = Namespace::default();
/// let deps = [TableName::parse("products").unwrap().table_dep()];
/// smartcache_core::invalidate::invalidate(&mut con, &ns, &["product_list".into()], &deps).await?;
/// # Ok(()) }
/// ```
pub async fn invalidate(
    con: &mut Conn,
    ns: &Namespace,
    keys: &[String],
    deps: &[DepId],
) -> RedisResult<u64> {
    // The keys given directly go in the same round trip as the draining.
    let mut other = con.clone();
    let direct: BTreeSet<&str> = keys.iter().map(String::as_str).collect();
    let (drained, mut removed) = try_join(
        drain(con, ns, deps),
        drop_entries(&mut other, ns, direct.iter().copied()),
    )
    .await?;
    removed += drop_entries(con, ns, drained.members().filter(|m| !direct.contains(m))).await?;
    forget(con, ns, &drained).await?;
    Ok(removed)
}

/// What the first step of [`invalidate`] took, per dependency: the
/// registrants to delete, and the drains entries (by token) to delete once
/// they are.
pub(crate) struct Drained {
    taken: BTreeMap<DepId, Taken>,
}

/// One dependency's part of [`Drained`].
#[derive(Debug, Default)]
struct Taken {
    members: Vec<String>,
    tokens: Vec<String>,
}

impl Drained {
    /// Every cache key taken, once.
    pub(crate) fn members(&self) -> impl Iterator<Item = &str> {
        let all: BTreeSet<&str> = self
            .taken
            .values()
            .flat_map(|t| &t.members)
            .map(String::as_str)
            .collect();
        all.into_iter()
    }
}

/// Moves each dependency's registrants (row bucket field, set, and the
/// legacy drain set) into an entry of this call in the dependency's drains
/// hash, and takes over the entries already there (calls in progress, or
/// dead before their drop).
pub(crate) async fn drain(con: &mut Conn, ns: &Namespace, deps: &[DepId]) -> RedisResult<Drained> {
    let token = new_token();
    let groups = con.group(deps.iter(), |d| slot(d.as_str()), CHUNK);
    let calls: Vec<_> = groups
        .iter()
        .map(|group| {
            let mut inv = DRAIN.prepare_invoke();
            inv.arg(&token);
            for d in group {
                let keys = ns.dep_keys(d);
                with_bucket(&mut inv, &keys);
                inv.key(&keys.legacy_drain).key(&keys.drains);
            }
            inv
        })
        .collect();
    let replies = con.run_script(&DRAIN, &calls).await?;
    let mut taken = BTreeMap::new();
    for (group, reply) in groups.iter().zip(replies) {
        let per_dep: Vec<(Vec<String>, Vec<String>)> = redis::from_redis_value(reply)?;
        for (d, (members, tokens)) in group.iter().zip(per_dep) {
            taken.insert((*d).clone(), Taken { members, tokens });
        }
    }
    Ok(Drained { taken })
}

/// The last step, once every member was dropped: deletes the drains
/// entries they came from.
pub(crate) async fn forget(con: &mut Conn, ns: &Namespace, drained: &Drained) -> RedisResult<()> {
    let hdel = drained
        .taken
        .iter()
        .filter(|(_, t)| !t.tokens.is_empty())
        .flat_map(|(dep, t)| {
            let drains = ns.drains_key(dep);
            t.tokens.chunks(CHUNK).map(move |chunk| {
                let mut cmd = redis::cmd("HDEL");
                cmd.arg(&drains).arg(chunk);
                cmd
            })
        })
        .collect();
    con.run_all(hdel).await.map(drop)
}

/// Deletes entries with their lease and bookkeeping; returns how many
/// values were there.
pub(crate) async fn drop_entries<'a>(
    con: &mut Conn,
    ns: &Namespace,
    keys: impl IntoIterator<Item = &'a str>,
) -> RedisResult<u64> {
    let (together, apart): (Vec<EntryKeys>, Vec<EntryKeys>) = keys
        .into_iter()
        .map(|k| ns.entry_keys(k))
        .partition(|e| con.reaches(e));
    let calls: Vec<_> = con
        .group(together, |e| slot(&e.value), CHUNK)
        .iter()
        .map(|group| {
            let mut inv = DROP.prepare_invoke();
            for e in group {
                inv.key(e.all().as_slice()).arg(&e.key);
            }
            inv
        })
        .collect();
    let mut removed = sum_ints(con.run_script(&DROP, &calls).await?)?;
    // A key with braces, written by another program on a cluster: its
    // lease (if any) is in another slot, so delete key by key. The library
    // refuses such keys, so no fill of it is in flight.
    if !apart.is_empty() {
        let cmds = apart
            .iter()
            .flat_map(|e| [&e.value, &e.lease])
            .map(|k| redis::cmd("UNLINK").arg(k).clone())
            .collect();
        let counts = con.run_all(cmds).await?;
        removed += sum_ints(counts.into_iter().step_by(2).collect())?;
    }
    Ok(removed)
}

/// Drops every cached value of the namespace with its lease (defeating
/// fills in flight) and bookkeeping, then sets the markers: what to do when
/// part of Redis lost its data. Dependency sets stay, so a fill racing this
/// keeps its registration; the sweeper removes what is left over. Returns
/// how many values were dropped.
///
/// ```no_run
/// # async fn demo(mut con: smartcache_core::conn::Conn) -> redis::RedisResult<()> {
/// let ns = smartcache_core::keys::Namespace::default();
/// let dropped = smartcache_core::invalidate::drop_all_values(&mut con, &ns).await?;
/// # Ok(()) }
/// ```
pub async fn drop_all_values(con: &mut Conn, ns: &Namespace) -> RedisResult<u64> {
    let found = con.scan_all(&ns.match_all()).await?;
    let entries: BTreeSet<&str> = found
        .iter()
        .filter_map(|k| ns.cache_key_of(k).or_else(|| ns.cache_key_of_lease(k)))
        .collect();
    let dropped = drop_entries(con, ns, entries).await?;
    set_markers(con, ns).await?;
    Ok(dropped)
}

/// Deletes exactly the Redis keys `keys` (`UNLINK`), in batches of one
/// slot; for the library's `clear_all`, which deletes the namespace's
/// every key.
///
/// ```no_run
/// # async fn demo(mut con: smartcache_core::conn::Conn) -> redis::RedisResult<()> {
/// let ns = smartcache_core::keys::Namespace::default();
/// let all = con.scan_all(&ns.match_all()).await?;
/// smartcache_core::invalidate::unlink(&mut con, all).await?;
/// # Ok(()) }
/// ```
pub async fn unlink(con: &mut Conn, keys: Vec<String>) -> RedisResult<()> {
    let cmds = con
        .group(keys, |k| slot(k), UNLINK_BATCH)
        .into_iter()
        .map(|batch| redis::cmd("UNLINK").arg(batch).clone())
        .collect();
    con.run_all(cmds).await.map(drop)
}

/// Keys per `UNLINK` of [`unlink`].
const UNLINK_BATCH: usize = 500;
