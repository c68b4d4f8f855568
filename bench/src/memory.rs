//! Memory per cached entry: `used_memory` (`INFO memory`) grown by filling
//! entries through the library, against plain `SET`s of the same values
//! under key names of the same length, in the same run. `used_memory` is
//! the whole server's: run this section against a Redis nothing else
//! writes to meanwhile. It also times the fills (misses through the
//! library) and their invalidation through the row dependencies (the
//! daemon's Redis side, in batches of 5,000 dependencies as a batch of
//! outbox rows would give).

use crate::Args;
use futures_util::stream::{self, StreamExt};
use smartcache::{Cache, Dep, Error};
use smartcache_core::conn::{Conn, Options};
use smartcache_core::keys::{Namespace, TableName};
use std::time::{Duration, Instant};

/// The bench's namespaces for this section: equally long, so key names
/// cost the same in both.
const ENTRY_NS: &str = "scbench_mem_e";
const PLAIN_NS: &str = "scbench_mem_p";

/// The goal per dependency count: at most this many times a plain SET.
fn goal(deps: usize) -> f64 {
    if deps == 1 {
        2.0
    } else {
        3.0
    }
}

/// Prints the section's table.
pub(crate) async fn run(args: &Args) -> anyhow::Result<()> {
    let entries = args.memory_entries;
    let mut con = Conn::open(&args.redis_url, &Options::default())?;
    let cache = Cache::builder(&args.redis_url)
        .namespace(ENTRY_NS)
        .timeout(Duration::from_secs(10))
        .build()
        .await?;
    println!("## Memory per entry ({entries} entries per case, `INFO memory` used_memory)\n");
    println!(
        "| value | dependencies | smartcache B/entry | plain SET B/entry | ratio | goal | met | fills/s | invalidated entries/s |"
    );
    println!("|---|---|---|---|---|---|---|---|---|");
    for size in [50, 2000] {
        for deps in [1, 3] {
            let value = vec![b'x'; size];
            clear(&mut con, ENTRY_NS).await?;
            let before = used_memory(&mut con).await?;
            let start = Instant::now();
            fill(&cache, entries, deps, &value).await?;
            let fills = entries as f64 / start.elapsed().as_secs_f64();
            let entry = (used_memory(&mut con).await? - before) as f64 / entries as f64;
            let start = Instant::now();
            invalidate_all(&mut con, entries, deps).await?;
            let invalidated = entries as f64 / start.elapsed().as_secs_f64();
            clear(&mut con, ENTRY_NS).await?;
            let writer = con.clone();
            let plain = grown(&mut con, PLAIN_NS, || set_plain(&writer, entries, &value)).await?;
            let plain = plain / entries as f64;
            let ratio = entry / plain;
            println!(
                "| {size} B | {deps} row{} | {entry:.0} | {plain:.0} | {ratio:.2}× | ≤ {}× | {} | {fills:.0} | {invalidated:.0} |",
                if deps == 1 { "" } else { "s" },
                goal(deps),
                crate::stats::met(ratio <= goal(deps))
            );
        }
    }
    println!();
    Ok(())
}

/// `used_memory` grown by `work`, which writes under namespace `ns`; the
/// namespace is emptied before and after.
async fn grown<F, Fut>(con: &mut Conn, ns: &str, work: F) -> anyhow::Result<f64>
where
    F: FnOnce() -> Fut,
    Fut: std::future::Future<Output = anyhow::Result<()>>,
{
    clear(con, ns).await?;
    let before = used_memory(con).await?;
    work().await?;
    let after = used_memory(con).await?;
    clear(con, ns).await?;
    Ok(after as f64 - before as f64)
}

async fn used_memory(con: &mut Conn) -> anyhow::Result<i64> {
    // Let lazy frees (UNLINK) finish first.
    tokio::time::sleep(Duration::from_millis(500)).await;
    let info: String = redis::cmd("INFO").arg("memory").query_async(con).await?;
    info.lines()
        .find_map(|l| l.strip_prefix("used_memory:"))
        .and_then(|v| v.trim().parse().ok())
        .ok_or_else(|| anyhow::anyhow!("INFO memory has no used_memory"))
}

async fn clear(con: &mut Conn, ns: &str) -> anyhow::Result<()> {
    let keys = con.scan_all(&format!("{ns}:*")).await?;
    smartcache_core::invalidate::unlink(con, keys).await?;
    Ok(())
}

/// Invalidates every entry through its row dependencies, as the daemon
/// does for changed rows, 5,000 dependencies per call; checks none is left.
async fn invalidate_all(con: &mut Conn, entries: usize, deps: usize) -> anyhow::Result<()> {
    let ns = Namespace::new(ENTRY_NS)?;
    let tables: Vec<TableName> = ["products", "prices", "stock"][..deps]
        .iter()
        .map(|t| TableName::parse(t))
        .collect::<Result<_, _>>()?;
    let all: Vec<_> = (0..entries)
        .flat_map(|i| tables.iter().map(move |t| t.row_dep(&[i.to_string()])))
        .collect();
    let mut deleted = 0;
    for batch in all.chunks(5000) {
        deleted += smartcache_core::invalidate::invalidate(con, &ns, &[], batch).await?;
    }
    anyhow::ensure!(
        deleted == entries as u64,
        "invalidation deleted {deleted} of {entries} entries"
    );
    Ok(())
}

/// Entry `product:{i}` depends on row `i` of one table, or of three.
fn deps_of(i: usize, deps: usize) -> Vec<Dep> {
    ["products", "prices", "stock"][..deps]
        .iter()
        .map(|t| Dep::row(*t, [i as i64]))
        .collect()
}

/// Misses on every entry through `get_or_compute_bytes`, 64 at a time.
async fn fill(cache: &Cache, entries: usize, deps: usize, value: &[u8]) -> anyhow::Result<()> {
    stream::iter(0..entries)
        .map(|i| async move {
            cache
                .get_or_compute_bytes(&format!("product:{i}"), deps_of(i, deps), || async {
                    Ok::<_, Error>(value.to_vec())
                })
                .await
        })
        .buffer_unordered(64)
        .for_each(|r| async {
            r.expect("infallible compute");
        })
        .await;
    let stored = cache.keys("product:*").await?.len();
    anyhow::ensure!(
        stored == entries,
        "only {stored} of {entries} entries were stored (Redis timeouts?): run again"
    );
    Ok(())
}

async fn set_plain(con: &Conn, entries: usize, value: &[u8]) -> anyhow::Result<()> {
    let results: Vec<redis::RedisResult<()>> = stream::iter(0..entries)
        .map(|i| {
            let mut con = con.clone();
            async move {
                redis::cmd("SET")
                    .arg(format!("{PLAIN_NS}:product:{i}"))
                    .arg(value)
                    .query_async(&mut con)
                    .await
            }
        })
        .buffer_unordered(64)
        .collect()
        .await;
    results.into_iter().collect::<Result<(), _>>()?;
    Ok(())
}
