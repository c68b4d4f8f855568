//! Commit → key deleted at a fixed commit rate, against the floor (NOTIFY
//! delivery + one `DEL` round trip) and a naive listener, in the same run.

use crate::stats::{histogram, median, met, record, us};
use crate::throughput::{set_keys, Naive};
use crate::{Args, NS};
use futures_util::StreamExt;
use hdrhistogram::Histogram;
use redis::aio::MultiplexedConnection;
use redis::AsyncCommands;
use std::collections::HashMap;
use std::time::{Duration, Instant};
use tokio::sync::mpsc;
use tokio::time::MissedTickBehavior;
use tokio_postgres::{AsyncMessage, NoTls};

/// One commit per tick.
const TICK: Duration = Duration::from_millis(1);

pub(crate) async fn run(args: &Args, db_url: &str) -> anyhow::Result<()> {
    let n = args.commit_secs as i64 * 1000;
    let mut all: [Histogram<u64>; 3] = [histogram(), histogram(), histogram()];
    let mut rows = Vec::new();
    for run in 0..args.runs as i64 {
        let ids: Vec<i64> = (run * n + 1..=run * n + n)
            .map(|i| (i - 1) % 100_000 + 1)
            .collect();
        let (sc, rate) = commit_to_delete(args, db_url, "bench_items", "item", &ids).await?;
        let (notify, del) = floor(args, db_url, &ids).await?;
        let naive = Naive::start(db_url, &args.redis_url).await?;
        let (nv, _) = commit_to_delete(args, db_url, "naive_items", "naive", &ids).await?;
        naive.stop();
        let mut fl = histogram();
        let mut no = histogram();
        let mut de = histogram();
        for (i, d) in notify.iter().enumerate() {
            record(&mut fl, *d + del[i % del.len()]);
            record(&mut no, *d);
        }
        for d in &del {
            record(&mut de, *d);
        }
        let mut s = histogram();
        let mut v = histogram();
        for d in &sc {
            record(&mut s, *d);
        }
        for d in &nv {
            record(&mut v, *d);
        }
        all[0].add(&s)?;
        all[1].add(&fl)?;
        all[2].add(&v)?;
        rows.push([s, fl, no, de, v, rate_hist(rate)]);
    }
    let q = |i: usize, p: f64| median(rows.iter().map(|r| us(&r[i], p)).collect());
    let ratio =
        |i: usize, p: f64| median(rows.iter().map(|r| us(&r[i], p) / us(&r[1], p)).collect());
    println!("## Commit → key deleted\n");
    println!(
        "A writer commits single-row `UPDATE`s at 1,000 commits/s ({} per run; achieved {:.0}/s); \
         each key is watched with pipelined `EXISTS` in a tight loop on a separate connection \
         from the moment `COMMIT` returns (adds up to one poll round trip). Floor = commit ack → \
         NOTIFY received on a LISTEN connection (same writes, row trigger with `pg_notify`) + one \
         `DEL` round trip on a `ConnectionManager` (measured alongside at 1,000/s), summed \
         sample by sample. Median of {} runs, µs.\n",
        n,
        median(rows.iter().map(|r| r[5].mean()).collect()),
        args.runs
    );
    println!("| | p50 | p99 | p99.9 | max | p50 ratio to floor | p99 ratio to floor |");
    println!("|---|---|---|---|---|---|---|");
    for (i, name) in [
        (0, "smartcache (daemon)"),
        (1, "floor: NOTIFY + DEL"),
        (2, "  NOTIFY delivery alone"),
        (3, "  DEL round trip alone"),
        (4, "naive listener (1 DEL per NOTIFY)"),
    ] {
        println!(
            "| {name} | {:.0} | {:.0} | {:.0} | {:.0} | {:.2}× | {:.2}× |",
            q(i, 0.5),
            q(i, 0.99),
            q(i, 0.999),
            q(i, 1.0),
            ratio(i, 0.5),
            ratio(i, 0.99)
        );
    }
    let r99 = ratio(0, 0.99);
    println!(
        "\nGoal p99 ≤ 2× floor: {r99:.2}×, met: {}\n",
        met(r99 <= 2.0)
    );
    crate::plot::cdf(
        &args.plot,
        "commit → key deleted, 1,000 commits/s",
        &[
            ("smartcache", &all[0]),
            ("floor: NOTIFY + DEL", &all[1]),
            ("naive listener", &all[2]),
        ],
    )?;
    println!("CDF of all runs: {}\n", args.plot.display());
    Ok(())
}

/// A one-value histogram carrying the achieved commit rate.
fn rate_hist(rate: f64) -> Histogram<u64> {
    let mut h = histogram();
    h.saturating_record(rate.max(1.0) as u64);
    h
}

/// Commits `UPDATE {table} … WHERE id = $1` for each id at 1,000/s and
/// times, per commit, COMMIT ack → `{NS}:{prefix}:{id}` gone.
async fn commit_to_delete(
    args: &Args,
    db_url: &str,
    table: &str,
    prefix: &str,
    ids: &[i64],
) -> anyhow::Result<(Vec<Duration>, f64)> {
    commit_to_delete_by(args, db_url, table, prefix, ids, 1).await
}

/// Like [`commit_to_delete`], the ids split over `writers` connections
/// committing together at 1,000 commits/s in all.
pub(crate) async fn commit_to_delete_by(
    args: &Args,
    db_url: &str,
    table: &str,
    prefix: &str,
    ids: &[i64],
    writers: usize,
) -> anyhow::Result<(Vec<Duration>, f64)> {
    let mut con = crate::redis_con(&args.redis_url).await?;
    let keys: Vec<String> = ids.iter().map(|id| format!("{NS}:{prefix}:{id}")).collect();
    set_keys(&mut con, &keys).await?;
    let (tx, rx) = mpsc::unbounded_channel();
    let watcher = tokio::spawn(watch(con, rx));
    let started = Instant::now();
    let sql = format!("UPDATE {table} SET val = val + 1 WHERE id = $1");
    // An id changed again (a phase longer than the table) finds its key
    // deleted by the first change: set it again first, or the figure
    // would count those as instant deletions.
    let mut seen = std::collections::HashSet::new();
    let again: Vec<bool> = ids.iter().map(|id| !seen.insert(*id)).collect();
    let tasks = (0..writers).map(|w| {
        let (tx, sql) = (tx.clone(), sql.clone());
        let mine: Vec<(i64, bool)> = ids
            .iter()
            .copied()
            .zip(again.iter().copied())
            .skip(w)
            .step_by(writers)
            .collect();
        let (db_url, prefix) = (db_url.to_owned(), prefix.to_owned());
        let redis_url = args.redis_url.clone();
        tokio::spawn(async move {
            let writer = crate::connect(&db_url).await?;
            let mut con = crate::redis_con(&redis_url).await?;
            let stmt = writer.prepare(&sql).await?;
            let mut tick = tokio::time::interval(TICK * writers as u32);
            tick.set_missed_tick_behavior(MissedTickBehavior::Burst);
            for (id, again) in mine {
                tick.tick().await;
                let key = format!("{NS}:{prefix}:{id}");
                if again {
                    let _: () = con.set(&key, "v").await?;
                }
                writer.execute(&stmt, &[&id]).await?;
                let _ = tx.send((key, Instant::now()));
            }
            anyhow::Ok(())
        })
    });
    for t in futures_util::future::join_all(tasks).await {
        t??;
    }
    let rate = ids.len() as f64 / started.elapsed().as_secs_f64();
    drop(tx);
    Ok((watcher.await??, rate))
}

/// Polls every pending key with one pipelined `EXISTS` each, back to back,
/// and returns ack → first poll that found the key gone.
async fn watch(
    mut con: MultiplexedConnection,
    mut rx: mpsc::UnboundedReceiver<(String, Instant)>,
) -> anyhow::Result<Vec<Duration>> {
    let mut pending: Vec<(String, Instant)> = Vec::new();
    let mut out = Vec::new();
    let mut open = true;
    loop {
        while open {
            match rx.try_recv() {
                Ok(p) => pending.push(p),
                Err(mpsc::error::TryRecvError::Empty) => break,
                Err(mpsc::error::TryRecvError::Disconnected) => open = false,
            }
        }
        if pending.is_empty() {
            match rx.recv().await {
                Some(p) if open => pending.push(p),
                _ => break,
            }
            continue;
        }
        let mut pipe = redis::pipe();
        for (k, _) in &pending {
            pipe.exists(k);
        }
        let exists: Vec<bool> = pipe.query_async(&mut con).await?;
        let now = Instant::now();
        let mut i = 0;
        let mut stuck = None;
        pending.retain(|(k, ack)| {
            let keep = exists[i];
            i += 1;
            if !keep {
                out.push(now - *ack);
            } else if now - *ack > Duration::from_secs(30) {
                stuck = Some(k.clone());
            }
            keep
        });
        if let Some(k) = stuck {
            anyhow::bail!("{k} still exists 30 s after its commit: is the daemon running?");
        }
    }
    Ok(out)
}

/// The floor's two parts, measured together at 1,000/s: commit ack →
/// NOTIFY received, and a `DEL` round trip.
async fn floor(
    args: &Args,
    db_url: &str,
    ids: &[i64],
) -> anyhow::Result<(Vec<Duration>, Vec<Duration>)> {
    let (listener, mut connection) = tokio_postgres::connect(db_url, NoTls).await?;
    let (ntx, mut nrx) = mpsc::unbounded_channel::<(String, Instant)>();
    // Driving the connection with poll_message is what delivers
    // notifications; a plain spawn(connection) drops them.
    let driver = tokio::spawn(async move {
        let mut messages = futures_util::stream::poll_fn(move |cx| connection.poll_message(cx));
        while let Some(Ok(m)) = messages.next().await {
            if let AsyncMessage::Notification(n) = m {
                let _ = ntx.send((n.payload().to_owned(), Instant::now()));
            }
        }
    });
    listener.batch_execute("LISTEN bench_naive").await?;

    let mut del_con = crate::redis_manager(&args.redis_url).await?;
    let count = ids.len();
    let dels = tokio::spawn(async move {
        let mut out = Vec::with_capacity(count);
        let mut tick = tokio::time::interval(TICK);
        for i in 0..count {
            tick.tick().await;
            let k = format!("{NS}:floor:{}", i % 100);
            let _: () = del_con.set(&k, "v").await?;
            let t = Instant::now();
            let _: () = del_con.del(&k).await?;
            out.push(t.elapsed());
        }
        anyhow::Ok(out)
    });

    let writer = crate::connect(db_url).await?;
    let stmt = writer
        .prepare("UPDATE naive_items SET val = val + 1 WHERE id = $1")
        .await?;
    let mut acks = HashMap::with_capacity(ids.len());
    let mut tick = tokio::time::interval(TICK);
    tick.set_missed_tick_behavior(MissedTickBehavior::Burst);
    for &id in ids {
        tick.tick().await;
        writer.execute(&stmt, &[&id]).await?;
        acks.insert(format!("{NS}:naive:{id}"), Instant::now());
    }
    let mut out = Vec::with_capacity(ids.len());
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    while out.len() < ids.len() {
        match tokio::time::timeout_at(deadline, nrx.recv()).await {
            Ok(Some((payload, at))) => {
                if let Some(ack) = acks.get(&payload) {
                    out.push(at.saturating_duration_since(*ack));
                }
            }
            _ => anyhow::bail!("only {} of {} notifications arrived", out.len(), ids.len()),
        }
    }
    driver.abort();
    Ok((out, dels.await??))
}
