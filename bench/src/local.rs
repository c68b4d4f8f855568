//! The local tier's invalidation delay: a change → the last of several
//! `Cache`s' local copies gone (each `Cache` has its own tracking
//! connection, as separate app processes would), next to the Redis-side
//! figure measured in the same run.

use crate::latency::commit_to_delete_by;
use crate::stats::{histogram, median, met, record, us};
use crate::throughput::set_keys;
use crate::{Args, NS};
use hdrhistogram::Histogram;
use redis::AsyncCommands;
use smartcache::Cache;
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::time::MissedTickBehavior;

/// `Cache`s holding a copy of every key.
const READERS: usize = 4;

/// One change per tick.
const TICK: Duration = Duration::from_millis(1);

pub(crate) async fn run(args: &Args, db_url: &str) -> anyhow::Result<()> {
    let n = args.commit_secs as i64 * 1000;
    let mut readers = Vec::new();
    for _ in 0..READERS {
        let cache = Cache::builder(&args.redis_url)
            .namespace(NS)
            .local(64 << 20, 100_000)
            .build()
            .await?;
        while !cache.local_stats().is_some_and(|s| s.serving) {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        readers.push(cache);
    }
    let readers = Arc::new(readers);
    let mut rows = Vec::new();
    for run in 0..args.runs as i64 {
        // The daemon's UNLINK after a commit → every copy gone.
        let ids: Vec<i64> = (run * n + 1..=run * n + n)
            .map(|i| (i - 1) % 100_000 + 1)
            .collect();
        let keys: Vec<String> = ids.iter().map(|id| format!("item:{id}")).collect();
        fill(args, &readers, &keys).await?;
        let (tx, rx) = std::sync::mpsc::channel();
        let r = Arc::clone(&readers);
        let watcher = tokio::task::spawn_blocking(move || watch(r, rx));
        let writer = crate::connect(db_url).await?;
        let stmt = writer
            .prepare("UPDATE bench_items SET val = val + 1 WHERE id = $1")
            .await?;
        let mut tick = tokio::time::interval(TICK);
        tick.set_missed_tick_behavior(MissedTickBehavior::Burst);
        for (id, key) in ids.iter().zip(&keys) {
            tick.tick().await;
            writer.execute(&stmt, &[id]).await?;
            let _ = tx.send((key.clone(), Instant::now()));
        }
        drop(tx);
        let commit_local = watcher.await??;

        // The same commits, Redis only (no copies held), interleaved.
        let (redis_only, _) =
            commit_to_delete_by(args, db_url, "bench_items", "item", &ids, 1).await?;

        // Another connection's UNLINK → every copy gone, and the UNLINK
        // round trip alone.
        let keys: Vec<String> = (0..n).map(|i| format!("ltrack:{i}")).collect();
        fill(args, &readers, &keys).await?;
        let (tx, rx) = std::sync::mpsc::channel();
        let r = Arc::clone(&readers);
        let watcher = tokio::task::spawn_blocking(move || watch(r, rx));
        let mut con = crate::redis_con(&args.redis_url).await?;
        let mut rtt = Vec::with_capacity(keys.len());
        let mut tick = tokio::time::interval(TICK);
        tick.set_missed_tick_behavior(MissedTickBehavior::Burst);
        for key in &keys {
            tick.tick().await;
            let sent = Instant::now();
            let _: () = con.unlink(format!("{NS}:{key}")).await?;
            rtt.push(sent.elapsed());
            let _ = tx.send((key.clone(), sent));
        }
        drop(tx);
        let unlink_local = watcher.await??;
        rows.push([
            hist(&commit_local),
            hist(&redis_only),
            hist(&unlink_local),
            hist(&rtt),
        ]);
    }
    let q = |i: usize, p: f64| median(rows.iter().map(|r| us(&r[i], p)).collect());
    println!("## Local tier: change → every process's copy gone\n");
    println!(
        "{READERS} `Cache`s with the local tier on (each its own tracking connection, as \
         separate app processes would have) hold a copy of every key. One change per ms ({n} \
         per run): a single-row `UPDATE` committed and invalidated by the daemon (a separate \
         process), or an `UNLINK` from another connection. From the commit ack (or the \
         moment the `UNLINK` is sent), a loop asks each `Cache` whether it still holds a copy \
         (`Cache::holds_locally`, no Redis call, every 20 µs from a thread that sleeps in between); the figure is the time until the last of \
         the {READERS} let its copy go. The Redis-only row is the \
         same commits with no copies held, watched with `EXISTS` as in \"Commit → key \
         deleted\". Median of {} runs, µs.\n",
        args.runs
    );
    println!("| | p50 | p99 | p99.9 | max |");
    println!("|---|---|---|---|---|");
    for (i, name) in [
        (0, "commit → last local copy gone"),
        (1, "commit → Redis key gone (no local tier)"),
        (2, "`UNLINK` sent → last local copy gone"),
        (3, "`UNLINK` round trip alone"),
    ] {
        println!(
            "| {name} | {:.0} | {:.0} | {:.0} | {:.0} |",
            q(i, 0.5),
            q(i, 0.99),
            q(i, 0.999),
            q(i, 1.0)
        );
    }
    let flushes: u64 = readers
        .iter()
        .map(|c| c.local_stats().map_or(0, |s| s.flushes))
        .sum();
    println!(
        "\nWhole-tier flushes over all runs (each reader's start counts one; more mean a late \
         heartbeat let copies go early): {flushes}"
    );
    let p99 = q(2, 0.99);
    println!(
        "\nGoal: a delete reaches every process's local tier within 1 ms at p99: {p99:.0} µs, \
         met: {}\n",
        met(p99 <= 1000.0)
    );
    Ok(())
}

fn hist(samples: &[Duration]) -> Histogram<u64> {
    let mut h = histogram();
    for d in samples {
        record(&mut h, *d);
    }
    h
}

/// Stores each key and has every reader take a copy.
async fn fill(args: &Args, readers: &[Cache], keys: &[String]) -> anyhow::Result<()> {
    let mut con = crate::redis_con(&args.redis_url).await?;
    let full: Vec<String> = keys.iter().map(|k| format!("{NS}:{k}")).collect();
    set_keys(&mut con, &full).await?;
    for cache in readers {
        for k in keys {
            // A read can time out, or land while a late heartbeat paused
            // the tier, on a loaded machine: read again.
            let mut tries = 0;
            while !cache.holds_locally(k) {
                tries += 1;
                anyhow::ensure!(tries <= 100, "{k}: no local copy after 100 reads");
                if cache.get_bytes(k).await?.is_none() {
                    tokio::time::sleep(Duration::from_millis(10)).await;
                }
            }
        }
    }
    Ok(())
}

/// For each key sent, looks at every reader's local tier (every 20 µs, on
/// a thread of its own that sleeps in between, so the watch takes no CPU
/// from the daemon and the servers) until none holds it; returns sent →
/// the last copy gone.
fn watch(
    readers: Arc<Vec<Cache>>,
    rx: std::sync::mpsc::Receiver<(String, Instant)>,
) -> anyhow::Result<Vec<Duration>> {
    let mut pending: Vec<(String, Instant, Vec<usize>)> = Vec::new();
    let mut out = Vec::new();
    let mut open = true;
    while open || !pending.is_empty() {
        loop {
            match rx.try_recv() {
                Ok((k, at)) => pending.push((k, at, (0..readers.len()).collect())),
                Err(std::sync::mpsc::TryRecvError::Empty) => break,
                Err(std::sync::mpsc::TryRecvError::Disconnected) => {
                    open = false;
                    break;
                }
            }
        }
        for (key, at, left) in &mut pending {
            left.retain(|&i| readers[i].holds_locally(key));
            if left.is_empty() {
                out.push(at.elapsed());
            } else {
                anyhow::ensure!(
                    at.elapsed() < Duration::from_secs(30),
                    "{key} still held 30 s after its change: is the daemon running?"
                );
            }
        }
        pending.retain(|(_, _, left)| !left.is_empty());
        std::thread::sleep(Duration::from_micros(20));
    }
    Ok(out)
}
