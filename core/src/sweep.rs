//! Keeps bookkeeping proportional to the live entries: removes the
//! dependency-set members whose entry is gone.

use redis::RedisResult;

use crate::conn::{Conn, CHUNK};
use crate::fill::new_token;
use crate::keys::{slot, EntryKeys, Namespace};
use crate::scripts::{FENCE, RELEASE};

/// How long the sweeper fences an entry it unregisters.
const FENCE_MS: u64 = 10_000;

/// One pass over every dependency set of the namespace: removes the
/// members whose entry is gone (neither a value nor a lease: the value
/// expired or was evicted, the fill failed); returns how many it removed.
///
/// An entry is fenced (its lease taken by the sweeper) before it leaves a
/// set, so a fill cannot register it anew in between and lose that
/// registration; a fence that someone overrode meanwhile
/// (a store, [`crate::fill::store`]) puts the member back.
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
    let token = format!("sweep:{}", new_token());
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
