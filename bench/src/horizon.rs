//! The outbox while a long transaction holds the vacuum horizon: the
//! drained rows stay as dead row versions, and a claim that scanned from
//! the lowest id would slow down with every one of them.
//!
//! Four writers at 1,000 commits/s in all, commit → key deleted, in three
//! phases: no long transaction; a `REPEATABLE READ` transaction held open
//! throughout; one opened and closed every 5 s. After the held phase the
//! claim is timed with `EXPLAIN ANALYZE` (in a rolled-back transaction)
//! from the daemon's position and from the start. Then a backlog of
//! `--backlog` rows, written while the daemon was stopped and the horizon
//! held, is drained and timed.

use crate::daemon::Daemon;
use crate::latency::commit_to_delete_by;
use crate::stats::{histogram, median, record, us};
use crate::Args;
use hdrhistogram::Histogram;
use std::time::{Duration, Instant};

pub(crate) async fn run(args: &Args, db_url: &str, daemon: &mut Daemon) -> anyhow::Result<()> {
    let n = (args.horizon_secs * 1000) as i64;
    let ids = |phase: i64| -> Vec<i64> { (0..n).map(|i| (phase * n + i) % 100_000 + 1).collect() };
    let phase = |ds: Vec<Duration>| {
        let mut h = histogram();
        for d in ds {
            record(&mut h, d);
        }
        h
    };
    let (free, _) = commit_to_delete_by(args, db_url, "bench_items", "item", &ids(0), 4).await?;
    let free = phase(free);

    let long = crate::connect(db_url).await?;
    long.batch_execute("BEGIN ISOLATION LEVEL REPEATABLE READ; SELECT count(*) FROM bench_items")
        .await?;
    let (held, _) = commit_to_delete_by(args, db_url, "bench_items", "item", &ids(1), 4).await?;
    let held = phase(held);
    let dead = dead_rows(db_url).await?;
    let claims = claim_times(db_url).await?;
    long.batch_execute("COMMIT").await?;

    let toggler = {
        let db_url = db_url.to_owned();
        let secs = args.horizon_secs;
        tokio::spawn(async move {
            let c = crate::connect(&db_url).await?;
            let end = Instant::now() + Duration::from_secs(secs);
            while Instant::now() < end {
                c.batch_execute(
                    "BEGIN ISOLATION LEVEL REPEATABLE READ; SELECT count(*) FROM bench_items",
                )
                .await?;
                tokio::time::sleep(Duration::from_secs(5)).await;
                c.batch_execute("COMMIT").await?;
                tokio::time::sleep(Duration::from_secs(1)).await;
            }
            anyhow::Ok(())
        })
    };
    let (toggled, _) = commit_to_delete_by(args, db_url, "bench_items", "item", &ids(2), 4).await?;
    toggler.await??;
    let toggled = phase(toggled);

    let (backlog_rows, backlog_s) = backlog(args, db_url, daemon).await?;

    println!("## The outbox while a long transaction holds the vacuum horizon\n");
    println!(
        "4 writers, 1,000 single-row commits/s in all, {} s per phase; commit ack → key gone. \
         `VACUUM` cannot remove the outbox rows the daemon deletes while the long transaction \
         lives ({dead} dead rows at the end of the held phase).\n",
        args.horizon_secs
    );
    println!("| phase | p50 µs | p99 µs | max µs | p99 ratio to no long transaction |");
    println!("|---|---|---|---|---|");
    let row = |name: &str, h: &Histogram<u64>| {
        println!(
            "| {name} | {:.0} | {:.0} | {:.0} | {:.2}× |",
            us(h, 0.5),
            us(h, 0.99),
            us(h, 1.0),
            us(h, 0.99) / us(&free, 0.99)
        )
    };
    row("no long transaction", &free);
    row("a REPEATABLE READ transaction open throughout", &held);
    row("one opened and closed every 5 s", &toggled);
    println!(
        "\nClaim of {} rows under the held horizon (`EXPLAIN ANALYZE`, median of 5): from the daemon's \
         cursor {:.2} ms, from id 0 (what a claim without a cursor pays) {:.2} ms.\n",
        claims.0, claims.1, claims.2
    );
    println!(
        "Backlog: {backlog_rows} rows written while the daemon was stopped and a long transaction \
         held the horizon (after the phases above left their dead rows), drained in {backlog_s:.2} s \
         after the daemon started: {:.0} rows/s (goal ≥ 40,000).\n",
        backlog_rows as f64 / backlog_s
    );
    Ok(())
}

async fn dead_rows(db_url: &str) -> anyhow::Result<i64> {
    let c = crate::connect(db_url).await?;
    // The statistics are flushed at most once a second.
    tokio::time::sleep(Duration::from_millis(1100)).await;
    Ok(c.query_one(
        "SELECT coalesce(n_dead_tup, 0) FROM pg_stat_all_tables WHERE relid = 'smartcache.outbox'::regclass",
        &[],
    )
    .await?
    .get(0))
}

/// (batch, ms from the last id, ms from id 0) for the daemon's claim
/// statement, as the daemon's session plans it.
async fn claim_times(db_url: &str) -> anyhow::Result<(i64, f64, f64)> {
    let c = crate::connect(db_url).await?;
    c.batch_execute(smartcache_invalidator::claim::PLANNER_SETTINGS)
        .await?;
    let last: i64 = c
        .query_one("SELECT last_value FROM smartcache.outbox_id_seq", &[])
        .await?
        .get(0);
    let sql = smartcache_invalidator::claim::claim_sql();
    let time = |cursor: i64| {
        let (c, sql) = (&c, &sql);
        async move {
            let mut runs = Vec::new();
            for _ in 0..5 {
                c.batch_execute("BEGIN").await?;
                let plan = c
                    .query(
                        &format!(
                            "EXPLAIN (ANALYZE) {}",
                            sql.replace("$1", "0")
                                .replace("$2", "0")
                                .replace("$3", &cursor.to_string())
                                .replace("$4", "5000")
                        ),
                        &[],
                    )
                    .await?;
                c.batch_execute("ROLLBACK").await?;
                let ms = plan.iter().map(|r| r.get::<_, String>(0)).find_map(|l| {
                    l.strip_prefix("Execution Time: ")?
                        .trim_end_matches(" ms")
                        .parse::<f64>()
                        .ok()
                });
                runs.push(ms.unwrap_or(f64::NAN));
            }
            anyhow::Ok(median(runs))
        }
    };
    let from_cursor = time(last - 100).await?;
    let from_zero = time(0).await?;
    Ok((5000, from_cursor, from_zero))
}

/// Stops the daemon, holds the horizon, writes `--backlog` outbox rows
/// (one single-row statement each, as capture writes them), starts the
/// daemon and times the drain.
async fn backlog(args: &Args, db_url: &str, daemon: &mut Daemon) -> anyhow::Result<(i64, f64)> {
    let rows = args.backlog;
    daemon.pause().await?;
    let long = crate::connect(db_url).await?;
    long.batch_execute("BEGIN ISOLATION LEVEL REPEATABLE READ; SELECT count(*) FROM bench_items")
        .await?;
    let c = crate::connect(db_url).await?;
    c.batch_execute(&format!(
        "INSERT INTO smartcache.outbox (table_schema, table_name, op, cols, npk, old_rows, new_rows) \
         SELECT 'public', 'bench_items', 'U', '{{id}}', 1, jsonb_build_array(jsonb_build_array(g % 100000 + 1)), \
                jsonb_build_array(jsonb_build_array(g % 100000 + 1)) \
         FROM generate_series(1, {rows}) g"
    ))
    .await?;
    let started = Instant::now();
    daemon.resume(args, db_url).await?;
    loop {
        let left: i64 = c
            .query_one("SELECT count(*) FROM smartcache.outbox", &[])
            .await?
            .get(0);
        if left == 0 {
            break;
        }
        anyhow::ensure!(
            started.elapsed() < Duration::from_secs(600),
            "backlog not drained in 10 minutes"
        );
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    let took = started.elapsed().as_secs_f64();
    long.batch_execute("COMMIT").await?;
    Ok((rows, took))
}
