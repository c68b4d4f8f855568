//! Memory per cached entry: `used_memory` (`INFO memory`) grown by filling
//! entries through the library, against plain `SET`s of the same values
//! under key names of the same length, in the same run. `used_memory` is
//! the whole server's: run this section against a Redis nothing else
//! writes to meanwhile.

use crate::Args;
use futures_util::stream::{self, StreamExt};
use smartcache::{Cache, Dep, Error};
use smartcache_core::conn::{Conn, Options};
use std::time::Duration;

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
        "| value | dependencies | smartcache B/entry | plain SET B/entry | ratio | goal | met |"
    );
    println!("|---|---|---|---|---|---|---|");
    for size in [50, 2000] {
        for deps in [1, 3] {
            let value = vec![b'x'; size];
            let entry = grown(&mut con, ENTRY_NS, || fill(&cache, entries, deps, &value)).await?;
            let writer = con.clone();
            let plain = grown(&mut con, PLAIN_NS, || set_plain(&writer, entries, &value)).await?;
            let (entry, plain) = (entry / entries as f64, plain / entries as f64);
            let ratio = entry / plain;
            println!(
                "| {size} B | {deps} row{} | {entry:.0} | {plain:.0} | {ratio:.2}× | ≤ {}× | {} |",
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
