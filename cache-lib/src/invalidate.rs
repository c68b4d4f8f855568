//! Deleting entries together with their bookkeeping, and sweeping
//! registrations of entries that are gone; used by the library's `clear*`
//! calls and by the invalidator daemon.
//!
//! Every step touches one slot at a time, so the same code serves a single
//! server and a Redis Cluster. The order of the steps is what keeps a fill
//! from caching stale data (see the `lease` protocol in the crate docs).

use std::collections::{BTreeMap, BTreeSet};
use std::sync::LazyLock;

use futures_util::future::try_join;
use redis::{RedisResult, Script, Value};

use crate::conn::Conn;
use crate::keys::{slot, DepId, EntryKeys, Namespace, DRAIN_LUA, DROP_LUA, FENCE_LUA, RELEASE_LUA};

/// Entries or sets per script call or command: big enough to amortise the
/// round trip, small enough that one call never blocks Redis for long.
const CHUNK: usize = 512;

/// How long the sweeper fences an entry it unregisters.
const FENCE_MS: u64 = 10_000;

static DROP: LazyLock<Script> = LazyLock::new(|| Script::new(DROP_LUA));
static DRAIN: LazyLock<Script> = LazyLock::new(|| Script::new(DRAIN_LUA));
static FENCE: LazyLock<Script> = LazyLock::new(|| Script::new(FENCE_LUA));
static RELEASE: LazyLock<Script> = LazyLock::new(|| Script::new(RELEASE_LUA));

/// Deletes the cache entries `keys` and every entry registered under one of
/// `deps`, with their leases and bookkeeping. Returns how many values were
/// deleted. Idempotent: running it twice deletes nothing more.
///
/// Three steps, each one pipelined round trip (concurrent per node on a
/// cluster): move each dependency set's members into its drain set (and
/// delete `keys` meanwhile); delete the entries found there; remove exactly
/// those members from the drain sets. The last two are skipped when the
/// sets were empty. A caller that fails midway and runs again finds the members
/// still in the drain sets.
///
/// ```no_run
/// # async fn demo() -> redis::RedisResult<()> {
/// use smartcache::conn::{Conn, Options};
/// use smartcache::keys::{Namespace, TableName};
/// let mut con = Conn::open("redis://127.0.0.1:6379/0", &Options::default())?;
/// let ns = Namespace::default();
/// let deps = [TableName::parse("products").unwrap().table_dep()];
/// smartcache::invalidate::invalidate(&mut con, &ns, &["product_list".into()], &deps).await?;
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
    let members: BTreeSet<&str> = drained
        .values()
        .flatten()
        .map(String::as_str)
        .filter(|m| !direct.contains(m))
        .collect();
    removed += drop_entries(con, ns, members).await?;
    let srem = drained
        .iter()
        .filter(|(_, members)| !members.is_empty())
        .flat_map(|(dep, members)| {
            let drain = ns.drain_key(dep);
            members.chunks(CHUNK).map(move |chunk| {
                let mut cmd = redis::cmd("SREM");
                cmd.arg(&drain).arg(chunk);
                cmd
            })
        })
        .collect();
    con.run_all(srem).await?;
    Ok(removed)
}

/// Moves each dependency set into its drain set; returns the members to
/// delete per dependency.
async fn drain(
    con: &mut Conn,
    ns: &Namespace,
    deps: &[DepId],
) -> RedisResult<BTreeMap<DepId, Vec<String>>> {
    let groups = con.group(deps.iter(), |d| slot(d.as_str()), CHUNK);
    let calls: Vec<_> = groups
        .iter()
        .map(|group| {
            let mut inv = DRAIN.prepare_invoke();
            for d in group {
                inv.key(ns.dep_set_key(d)).key(ns.drain_key(d));
            }
            inv
        })
        .collect();
    let replies = con.run_script(&DRAIN, &calls).await?;
    let mut out = BTreeMap::new();
    for (group, reply) in groups.iter().zip(replies) {
        let sets: Vec<Vec<String>> = redis::from_redis_value(reply)?;
        for (d, members) in group.iter().zip(sets) {
            out.insert((*d).clone(), members);
        }
    }
    Ok(out)
}

/// Deletes entries with their lease and bookkeeping; returns how many
/// values were there.
async fn drop_entries<'a>(
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
                inv.key(e.all().as_slice());
            }
            inv
        })
        .collect();
    let mut removed = sum(con.run_script(&DROP, &calls).await?)?;
    // A key with braces, written by another program on a cluster: its
    // bookkeeping (if any) is in other slots, so delete key by key. The
    // library refuses such keys, so no fill of it is in flight.
    if !apart.is_empty() {
        let cmds = apart
            .iter()
            .flat_map(EntryKeys::all)
            .map(|k| redis::cmd("UNLINK").arg(k).clone())
            .collect();
        let counts = con.run_all(cmds).await?;
        removed += sum(counts.into_iter().step_by(4).collect())?;
    }
    Ok(removed)
}

fn sum(replies: Vec<Value>) -> RedisResult<u64> {
    replies
        .into_iter()
        .map(|v| redis::from_redis_value::<u64>(v).map_err(redis::RedisError::from))
        .sum()
}

/// One pass over every dependency set of the namespace: removes the
/// members whose entry is gone (neither a value nor a lease: the value
/// expired or was evicted, the fill failed); returns how many it removed.
///
/// An entry is fenced (its lease taken by the sweeper) before it leaves a
/// set, so a fill cannot register it anew in between and lose that
/// registration; a fence that someone overrode meanwhile
/// ([`crate::Cache::set`]) puts the member back.
///
/// ```no_run
/// # async fn demo() -> redis::RedisResult<()> {
/// use smartcache::conn::{Conn, Options};
/// let mut con = Conn::open("redis://127.0.0.1:6379/0", &Options::default())?;
/// let ns = smartcache::keys::Namespace::default();
/// let removed = smartcache::invalidate::sweep(&mut con, &ns).await?;
/// # Ok(()) }
/// ```
pub async fn sweep(con: &mut Conn, ns: &Namespace) -> RedisResult<u64> {
    let token = format!("sweep:{}", crate::lease::new_token());
    let sets = con.scan_all(&ns.match_dep_sets()).await?;
    let mut removed = 0;
    for set in &sets {
        let mut cursor: u64 = 0;
        loop {
            let reply: RedisResult<(u64, Vec<String>)> = redis::cmd("SSCAN")
                .arg(set)
                .arg(cursor)
                .arg("COUNT")
                .arg(CHUNK)
                .query_async(con)
                .await;
            // Not a set (another program wrote it): invalidation deals with it.
            let Ok((next, members)) = reply else {
                break;
            };
            removed += sweep_members(con, ns, set, members, &token).await?;
            if next == 0 {
                break;
            }
            cursor = next;
        }
    }
    Ok(removed)
}

async fn sweep_members(
    con: &mut Conn,
    ns: &Namespace,
    set: &str,
    members: Vec<String>,
    token: &str,
) -> RedisResult<u64> {
    let entries: Vec<(String, EntryKeys)> = members
        .into_iter()
        .map(|m| {
            let e = ns.entry_keys(&m);
            (m, e)
        })
        .filter(|(_, e)| con.reaches(e))
        .collect();
    let groups = con.group(entries.iter(), |(_, e)| slot(&e.value), CHUNK);
    let calls: Vec<_> = groups
        .iter()
        .map(|group| {
            let mut inv = FENCE.prepare_invoke();
            inv.arg(token).arg(FENCE_MS);
            for (_, e) in group {
                inv.key(e.all().as_slice());
            }
            inv
        })
        .collect();
    let mut fenced = Vec::new();
    for (group, reply) in groups.iter().zip(con.run_script(&FENCE, &calls).await?) {
        let flags: Vec<u8> = redis::from_redis_value(reply)?;
        fenced.extend(
            group
                .iter()
                .zip(flags)
                .filter(|(_, f)| *f == 1)
                .map(|(e, _)| *e),
        );
    }
    if fenced.is_empty() {
        return Ok(0);
    }
    let srem = fenced
        .chunks(CHUNK)
        .map(|chunk| {
            let mut cmd = redis::cmd("SREM");
            cmd.arg(set);
            for (m, _) in chunk {
                cmd.arg(m);
            }
            cmd
        })
        .collect();
    con.run_all(srem).await?;
    let calls: Vec<_> = fenced
        .iter()
        .map(|(_, e)| {
            let mut inv = RELEASE.prepare_invoke();
            inv.key(&e.lease).key(&e.value).key(&e.deps).arg(token);
            inv
        })
        .collect();
    let kept = con.run_script(&RELEASE, &calls).await?;
    let mut readd = redis::cmd("SADD");
    readd.arg(set);
    let mut broken = 0;
    for ((m, _), intact) in fenced.iter().zip(kept) {
        if redis::from_redis_value::<u8>(intact)? == 0 {
            readd.arg(m);
            broken += 1;
        }
    }
    if broken > 0 {
        con.run_all(vec![readd]).await?;
    }
    Ok((fenced.len() - broken) as u64)
}

/// What [`check_markers`] found (see [`Namespace::marker_keys`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
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
/// # async fn demo(mut con: smartcache::conn::Conn) -> redis::RedisResult<()> {
/// use smartcache::invalidate::{check_markers, Markers};
/// let ns = smartcache::keys::Namespace::default();
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
    let found: u64 = sum(con.run_all(cmds).await?)?;
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
/// # async fn demo(mut con: smartcache::conn::Conn) -> redis::RedisResult<()> {
/// smartcache::invalidate::set_markers(&mut con, &smartcache::keys::Namespace::default()).await?;
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

/// Drops every cached value of the namespace with its lease (defeating
/// fills in flight) and bookkeeping, then sets the markers: what to do when
/// part of Redis lost its data. Dependency sets stay, so a fill racing this
/// keeps its registration; the sweeper removes what is left over. Returns
/// how many values were dropped.
///
/// ```no_run
/// # async fn demo(mut con: smartcache::conn::Conn) -> redis::RedisResult<()> {
/// let ns = smartcache::keys::Namespace::default();
/// let dropped = smartcache::invalidate::drop_all_values(&mut con, &ns).await?;
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
