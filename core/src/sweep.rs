//! Keeps bookkeeping proportional to the live entries and their current
//! dependencies: removes the registrations and stamps of entries that are
//! gone, and the registrations of live entries under dependencies their
//! value no longer has (told by the fingerprint in its stamp, see
//! [`crate::fingerprint`]).

use redis::RedisResult;

use crate::conn::{Conn, CHUNK};
use crate::fill::new_token;
use crate::fingerprint::{probe, probe_hex};
use crate::keys::{slot, Bookkeeping, DepId, EntryKeys, Namespace};
use crate::registry::register;
use crate::scripts::{FENCE, RELEASE, UNREGISTER};

/// How long the sweeper fences an entry it unregisters.
const FENCE_MS: u64 = 10_000;

/// How the sweeper's lease tokens start (`drop.lua` leaves such a lease).
const FENCE_PREFIX: &str = "sweep:";

/// One pass over every dependency set, row bucket and stamps hash of the
/// namespace: removes the registrations and stamps of entries that are
/// gone (neither a value nor a lease: the value expired or was evicted, the
/// fill failed), and the registrations of live entries whose value does not
/// depend on the dependency they are registered under (the fingerprint
/// stamped with the value rules it out: the entry was filled again with
/// other dependencies); returns how many registrations it removed.
///
/// An entry is fenced (its lease taken by the sweeper) before it leaves a
/// set or bucket, so a fill cannot register it anew in between and lose
/// that registration; an entry with a lease (a fill in flight) is left
/// alone. An invalidation's drop leaves the fence in place; a fence that
/// someone overrode meanwhile (a store, [`crate::fill::store`]) puts the
/// registration back.
///
/// ```no_run
/// # async fn demo() -> redis::RedisResult<()> {
/// use smartcache_core::conn::{Conn, Options};
/// let mut con = Conn::open("redis://127.0.0.1:6379/0", &Options::default())?;
/// let ns = smartcache_core::keys::Namespace::default();
/// let removed = smartcache_core::sweep::sweep(&mut con, &ns).await?;
/// # Ok(()) }
/// ```
pub async fn sweep(con: &mut Conn, ns: &Namespace) -> RedisResult<u64> {
    let token = format!("{FENCE_PREFIX}{}", new_token());
    let found = con.scan_all(&ns.match_bookkeeping()).await?;
    let mut removed = 0;
    for key in &found {
        let holder = match ns.bookkeeping(key) {
            Some(Bookkeeping::DepSet(dep)) => Holder::Set(key, dep),
            Some(Bookkeeping::RowBucket { table }) => Holder::Bucket(key, table),
            Some(Bookkeeping::Stamps) => Holder::Stamps,
            _ => continue,
        };
        let mut cursor: u64 = 0;
        loop {
            let reply: RedisResult<(u64, Vec<String>)> = redis::cmd(holder.scan())
                .arg(key)
                .arg(cursor)
                .arg("COUNT")
                .arg(CHUNK)
                .query_async(con)
                .await;
            // Not of our type (another program wrote it): invalidation deals with it.
            let Ok((next, items)) = reply else {
                break;
            };
            removed += sweep_items(con, ns, &holder, &items, &token).await?;
            if next == 0 {
                break;
            }
            cursor = next;
        }
    }
    Ok(removed)
}

/// A key the sweeper walks, and what its items are.
enum Holder<'a> {
    /// A dependency set of a dependency: members are cache keys.
    Set(&'a str, DepId),
    /// A row bucket of a table: pairs of (row, cache key).
    Bucket(&'a str, &'a str),
    /// A stamps hash: pairs of (cache key, time).
    Stamps,
}

impl Holder<'_> {
    fn scan(&self) -> &'static str {
        match self {
            Holder::Set(..) => "SSCAN",
            Holder::Bucket(..) | Holder::Stamps => "HSCAN",
        }
    }

    /// (cache key, bucket field) of each item of a scan reply.
    fn entries<'i>(&self, items: &'i [String]) -> Vec<(&'i str, Option<&'i str>)> {
        match self {
            Holder::Set(..) => items.iter().map(|m| (m.as_str(), None)).collect(),
            Holder::Bucket(..) => items
                .chunks(2)
                .map(|f| (f[1].as_str(), Some(f[0].as_str())))
                .collect(),
            Holder::Stamps => items.chunks(2).map(|f| (f[0].as_str(), None)).collect(),
        }
    }
}

async fn sweep_items(
    con: &mut Conn,
    ns: &Namespace,
    holder: &Holder<'_>,
    items: &[String],
    token: &str,
) -> RedisResult<u64> {
    let entries: Vec<Item> = holder
        .entries(items)
        .into_iter()
        .map(|(m, field)| {
            // The dependency this registration is under, if any.
            let dep = match holder {
                Holder::Set(_, dep) => Some(probe(dep)),
                Holder::Bucket(_, table) => Some(probe(&DepId::row(table, field.unwrap_or("")))),
                Holder::Stamps => None,
            };
            (field, ns.entry_keys(m), dep)
        })
        .filter(|(_, e, _)| con.reaches(e))
        .collect();
    let fenced = fence(con, &entries, token).await?;
    if fenced.is_empty() {
        return Ok(0);
    }
    match holder {
        Holder::Set(set, _) => {
            let cmds = fenced
                .chunks(CHUNK)
                .map(|chunk| {
                    let mut cmd = redis::cmd("SREM");
                    cmd.arg(set);
                    for (_, e, _) in chunk {
                        cmd.arg(&e.key);
                    }
                    cmd
                })
                .collect();
            con.run_all(cmds).await?;
        }
        Holder::Bucket(bucket, _) => {
            let calls: Vec<_> = fenced
                .chunks(CHUNK)
                .map(|chunk| {
                    let mut inv = UNREGISTER.prepare_invoke();
                    inv.key(*bucket);
                    for (field, e, _) in chunk {
                        inv.arg(field.unwrap_or_default()).arg(&e.key);
                    }
                    inv
                })
                .collect();
            con.run_script(&UNREGISTER, &calls).await?;
        }
        Holder::Stamps => {}
    }
    let calls: Vec<_> = fenced
        .iter()
        .map(|(_, e, _)| {
            let mut inv = RELEASE.prepare_invoke();
            inv.key(&e.lease)
                .key(&e.value)
                .key(&e.stamps)
                .arg(token)
                .arg(&e.key);
            inv
        })
        .collect();
    let kept = con.run_script(&RELEASE, &calls).await?;
    let mut broken = Vec::new();
    for ((field, e, _), intact) in fenced.iter().zip(kept) {
        if redis::from_redis_value::<u8>(intact)? == 0 {
            broken.push((*field, e));
        }
    }
    // A store overrode the fence: it registered after our removal or
    // before it; put the registration back either way.
    for (field, e) in &broken {
        match holder {
            Holder::Set(set, _) => {
                redis::cmd("SADD")
                    .arg(set)
                    .arg(&e.key)
                    .query_async::<()>(con)
                    .await?
            }
            Holder::Bucket(_, table) => {
                let dep = DepId::row(table, field.unwrap_or_default());
                register(con, ns, &e.key, &[dep]).await?
            }
            Holder::Stamps => {}
        }
    }
    Ok(match holder {
        Holder::Stamps => 0,
        _ => (fenced.len() - broken.len()) as u64,
    })
}

/// A registration the sweeper looks at: the bucket field (for a row
/// bucket), the entry, the probe of the dependency it is under (none for a
/// stamps hash's field).
type Item<'a> = (Option<&'a str>, EntryKeys, Option<u64>);

/// Takes the lease of each entry without a lease that has no value, or
/// whose value's fingerprint rules out the item's dependency; returns
/// those.
async fn fence<'a>(
    con: &mut Conn,
    entries: &'a [Item<'a>],
    token: &str,
) -> RedisResult<Vec<&'a Item<'a>>> {
    let groups = con.group(entries.iter(), |(_, e, _)| slot(&e.value), CHUNK);
    let calls: Vec<_> = groups
        .iter()
        .map(|group| {
            let mut inv = FENCE.prepare_invoke();
            inv.arg(token).arg(FENCE_MS);
            for (_, e, dep) in group {
                inv.key(e.all().as_slice()).arg(&e.key);
                inv.arg(dep.map(probe_hex).unwrap_or_default());
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
                .filter(|(_, f)| *f != 0)
                .map(|(e, _)| *e),
        );
    }
    Ok(fenced)
}
