//! The dependency registry: which cache keys are registered under which
//! dependency (see [`DepKeys`] for where a registration lives).
//!
//! ```no_run
//! # async fn demo(mut con: smartcache_core::conn::Conn) -> redis::RedisResult<()> {
//! use smartcache_core::keys::{Namespace, TableName};
//! use smartcache_core::registry::{register, registrants};
//! let ns = Namespace::default();
//! let dep = TableName::parse("products").unwrap().row_dep(&["1"]);
//! register(&mut con, &ns, "product:1", std::slice::from_ref(&dep)).await?;
//! assert_eq!(registrants(&mut con, &ns, &dep).await?, ["product:1"]);
//! # Ok(()) }
//! ```

use std::collections::BTreeMap;

use redis::{RedisResult, ScriptInvocation};

use crate::conn::{Conn, CHUNK};
use crate::keys::{slot, Bookkeeping, DepId, DepKeys, Namespace, TableName};
use crate::scripts::{LIST, REGISTER};

/// Registers `key` under each of `deps`: one script call per slot of the
/// dependencies (one call in all on a single server).
///
/// ```no_run
/// # async fn demo(mut con: smartcache_core::conn::Conn) -> redis::RedisResult<()> {
/// use smartcache_core::keys::{Namespace, TableName};
/// let deps = [TableName::parse("products").unwrap().table_dep()];
/// smartcache_core::registry::register(&mut con, &Namespace::default(), "product_list", &deps).await?;
/// # Ok(()) }
/// ```
pub async fn register(
    con: &mut Conn,
    ns: &Namespace,
    key: &str,
    deps: &[DepId],
) -> RedisResult<()> {
    let calls: Vec<_> = con
        .group(deps.iter(), |d| slot(d.as_str()), CHUNK)
        .iter()
        .map(|group| {
            let mut inv = REGISTER.prepare_invoke();
            inv.arg(key);
            for d in group {
                with_bucket(&mut inv, &ns.dep_keys(d));
            }
            inv
        })
        .collect();
    con.run_script(&REGISTER, &calls).await.map(drop)
}

/// Adds a dependency's bucket and set to a call of `register.lua` or
/// `drain.lua`: KEYS (bucket or the set again, set), ARGV `''` or
/// `'#' + field`.
pub(crate) fn with_bucket(inv: &mut ScriptInvocation<'_>, keys: &DepKeys) {
    match &keys.bucket {
        Some((bucket, field)) => inv.key(bucket).key(&keys.set).arg(format!("#{field}")),
        None => inv.key(&keys.set).key(&keys.set).arg(""),
    };
}

/// The cache keys registered under `dep` now (bucket field and set),
/// sorted.
///
/// ```no_run
/// # async fn demo(mut con: smartcache_core::conn::Conn) -> redis::RedisResult<()> {
/// use smartcache_core::keys::{Namespace, TableName};
/// let dep = TableName::parse("products").unwrap().table_dep();
/// let keys = smartcache_core::registry::registrants(&mut con, &Namespace::default(), &dep).await?;
/// # Ok(()) }
/// ```
pub async fn registrants(con: &mut Conn, ns: &Namespace, dep: &DepId) -> RedisResult<Vec<String>> {
    let keys = ns.dep_keys(dep);
    let mut read = vec![(keys.set.clone(), Kind::Set)];
    read.extend(keys.bucket.iter().map(|(b, _)| (b.clone(), Kind::Bucket)));
    let mut lists = list(con, &read).await?.into_iter();
    let mut out = lists.next().unwrap_or_default();
    if let (Some((_, field)), Some(fields)) = (&keys.bucket, lists.next()) {
        out.extend(
            fields
                .chunks(2)
                .filter(|f| &f[0] == field)
                .map(|f| f[1].clone()),
        );
    }
    out.sort_unstable();
    out.dedup();
    Ok(out)
}

/// Every row dependency of `table` that has registrants now: the fields of
/// its row buckets, its row dependency sets and what invalidations that
/// died midway left in its drains, found with `SCAN` (each step calls
/// `progress`).
///
/// ```no_run
/// # async fn demo(mut con: smartcache_core::conn::Conn) -> redis::RedisResult<()> {
/// use smartcache_core::keys::{Namespace, TableName};
/// let t = TableName::parse("products").unwrap();
/// let deps = smartcache_core::registry::row_deps(&mut con, &Namespace::default(), &t, &|| {}).await?;
/// # Ok(()) }
/// ```
pub async fn row_deps(
    con: &mut Conn,
    ns: &Namespace,
    table: &TableName,
    progress: &(dyn Fn() + Sync),
) -> RedisResult<Vec<DepId>> {
    let mut deps: Vec<DepId> = scan(con, &ns.match_row_dep_sets(table), progress)
        .await?
        .iter()
        .filter_map(|k| ns.dep_id_of(k))
        .collect();
    // Registrants an invalidation took and did not drop (it died): the
    // next invalidation of the dependency takes them over.
    for pattern in ns.match_row_drains(table) {
        let found = scan(con, &pattern, progress).await?;
        deps.extend(found.iter().filter_map(|k| ns.drained_dep_of(k)));
    }
    let own = table.row_dep(&[""]);
    let buckets: Vec<(String, Kind)> = scan(con, &ns.match_row_buckets(table), progress)
        .await?
        .into_iter()
        .filter(|k| {
            matches!(ns.bookkeeping(k), Some(Bookkeeping::RowBucket { table })
                if DepId::row(table, "") == own)
        })
        .map(|k| (k, Kind::Bucket))
        .collect();
    for (bucket, fields) in buckets.iter().zip(list(con, &buckets).await?) {
        if let Some(Bookkeeping::RowBucket { table }) = ns.bookkeeping(&bucket.0) {
            deps.extend(fields.chunks(2).map(|f| DepId::row(table, &f[0])));
        }
    }
    deps.sort_unstable();
    deps.dedup();
    Ok(deps)
}

/// Every key matching `pattern` (`SCAN` over every primary), telling
/// `progress` after each step (a scan over a big namespace is long work,
/// not a stall).
///
/// ```no_run
/// # async fn demo(mut con: smartcache_core::conn::Conn) -> redis::RedisResult<()> {
/// let keys = smartcache_core::registry::scan(&mut con, "cache:product:*", &|| {}).await?;
/// # Ok(()) }
/// ```
pub async fn scan(
    con: &mut Conn,
    pattern: &str,
    progress: &(dyn Fn() + Sync),
) -> RedisResult<Vec<String>> {
    let mut out = Vec::new();
    con.clone()
        .scan(pattern, |batch| {
            progress();
            out.extend(batch);
            true
        })
        .await?;
    Ok(out)
}

/// What `list.lua` reads a key as.
#[derive(Clone, Copy)]
enum Kind {
    Set,
    Bucket,
}

/// The contents of `keys` (set members, or bucket fields and values in
/// turn), in their order; a key of another type reads as empty.
async fn list(con: &mut Conn, keys: &[(String, Kind)]) -> RedisResult<Vec<Vec<String>>> {
    let groups = con.group(keys.iter().enumerate(), |(_, (k, _))| slot(k), CHUNK);
    let calls: Vec<_> = groups
        .iter()
        .map(|group| {
            let mut inv = LIST.prepare_invoke();
            for (_, (k, kind)) in group {
                inv.key(k).arg(match kind {
                    Kind::Set => "s",
                    Kind::Bucket => "b",
                });
            }
            inv
        })
        .collect();
    let mut out = vec![Vec::new(); keys.len()];
    for (group, reply) in groups.iter().zip(con.run_script(&LIST, &calls).await?) {
        let lists: Vec<Vec<String>> = redis::from_redis_value(reply)?;
        for ((i, _), l) in group.iter().zip(lists) {
            out[*i] = l;
        }
    }
    Ok(out)
}

/// The reverse of the registry: for each cache key, the dependency ids it
/// is registered under (sorted), read from every row bucket and dependency
/// set of the namespace. Costs a walk of the whole registry; the admin
/// listing calls it once per listing.
///
/// ```no_run
/// # async fn demo(mut con: smartcache_core::conn::Conn) -> redis::RedisResult<()> {
/// let ns = smartcache_core::keys::Namespace::default();
/// let by_key = smartcache_core::registry::dependencies(&mut con, &ns).await?;
/// # Ok(()) }
/// ```
pub async fn dependencies(
    con: &mut Conn,
    ns: &Namespace,
) -> RedisResult<BTreeMap<String, Vec<String>>> {
    let found = con.scan_all(&ns.match_bookkeeping()).await?;
    let mut keys = Vec::new();
    let mut what = Vec::new();
    for k in &found {
        match ns.bookkeeping(k) {
            Some(Bookkeeping::DepSet(dep)) => {
                keys.push((k.clone(), Kind::Set));
                what.push(Ok(dep));
            }
            Some(Bookkeeping::RowBucket { table }) => {
                keys.push((k.clone(), Kind::Bucket));
                what.push(Err(table));
            }
            _ => {}
        }
    }
    let mut out: BTreeMap<String, Vec<String>> = BTreeMap::new();
    for (w, contents) in what.iter().zip(list(con, &keys).await?) {
        match w {
            Ok(dep) => {
                for m in contents {
                    out.entry(m).or_default().push(dep.to_string());
                }
            }
            Err(table) => {
                for pair in contents.chunks(2) {
                    let dep = DepId::row(table, &pair[0]).to_string();
                    out.entry(pair[1].clone()).or_default().push(dep);
                }
            }
        }
    }
    for deps in out.values_mut() {
        deps.sort_unstable();
        deps.dedup();
    }
    Ok(out)
}
