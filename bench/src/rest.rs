//! A single commit at rest, right after the daemon started: after a clean
//! stop, after a SIGKILL, after its connection was cut. Each commit must be
//! picked up by the doorbell (not the poll), from the first one on.
//! Against the floor (NOTIFY receipt + one `DEL`) measured in the same run
//! with commits spaced the same way.

use crate::daemon::Daemon;
use crate::stats::{histogram, median, met, record, us};
use crate::{Args, NS};
use futures_util::StreamExt;
use hdrhistogram::Histogram;
use redis::AsyncCommands;
use std::time::{Duration, Instant};
use tokio_postgres::{AsyncMessage, NoTls};

/// Commits per start; spaced wider than the daemon's hold after activity,
/// so each finds it waiting for the doorbell.
const COMMITS: usize = 15;
const SPACING: Duration = Duration::from_millis(400);

pub(crate) async fn run(args: &Args, db_url: &str, daemon: &mut Daemon) -> anyhow::Result<()> {
    let mut rows: Vec<[Histogram<u64>; 4]> = Vec::new();
    for run in 0..args.runs {
        let floor = floor(args, db_url).await?;
        let mut per_kind = Vec::new();
        for kind in ["clean stop, start", "SIGKILL, start", "connection cut"] {
            match kind {
                "clean stop, start" => daemon.restart(args, db_url).await?,
                "SIGKILL, start" => daemon.kill_and_start(args, db_url).await?,
                _ => cut(db_url).await?,
            }
            tokio::time::sleep(Duration::from_secs(1)).await;
            let base = (run * 3 + per_kind.len()) as i64 * COMMITS as i64;
            per_kind.push(spaced_commits(args, db_url, base).await?);
        }
        rows.push([
            floor,
            per_kind.remove(0),
            per_kind.remove(0),
            per_kind.remove(0),
        ]);
    }
    let q = |i: usize, p: f64| median(rows.iter().map(|r| us(&r[i], p)).collect());
    let ratio =
        |i: usize, p: f64| median(rows.iter().map(|r| us(&r[i], p) / us(&r[0], p)).collect());
    println!("## A single commit at rest, after a daemon start\n");
    println!(
        "{COMMITS} single-row commits {} ms apart after each event (the first 1 s after it), \
         commit ack → key gone, seen through a Redis client-tracking push (no polling). Floor: the \
         same spacing, ack → NOTIFY received, then one `DEL` seen through the same push. Median of {} runs, µs.\n",
        SPACING.as_millis(),
        args.runs
    );
    println!(
        "| after | p50 | p99 | max | p50 ratio to floor | p99 ratio to floor | goal p99 ≤ 2× met |"
    );
    println!("|---|---|---|---|---|---|---|");
    for (i, name) in [
        (0, "floor: NOTIFY + DEL"),
        (1, "a clean stop and start"),
        (2, "SIGKILL and start"),
        (3, "its connection cut"),
    ] {
        let r99 = ratio(i, 0.99);
        println!(
            "| {name} | {:.0} | {:.0} | {:.0} | {:.2}× | {r99:.2}× | {} |",
            q(i, 0.5),
            q(i, 0.99),
            q(i, 1.0),
            ratio(i, 0.5),
            if i == 0 {
                String::new()
            } else {
                met(r99 <= 2.0).to_string()
            }
        );
    }
    println!();
    Ok(())
}

/// Ends the daemon's main session from outside; it reconnects.
async fn cut(db_url: &str) -> anyhow::Result<()> {
    let admin = crate::connect(db_url).await?;
    let pids: Vec<i32> = admin
        .query(
            "SELECT pid FROM pg_stat_activity WHERE application_name = 'smartcache-invalidator'",
            &[],
        )
        .await?
        .iter()
        .map(|r| r.get(0))
        .collect();
    admin
        .execute(
            "SELECT pg_terminate_backend(p) FROM unnest($1::int[]) p",
            &[&pids],
        )
        .await?;
    Ok(())
}

/// Commits one row at a time, `SPACING` apart; ack → key gone for each.
async fn spaced_commits(args: &Args, db_url: &str, base: i64) -> anyhow::Result<Histogram<u64>> {
    let mut con = crate::redis_con(&args.redis_url).await?;
    let mut watch = Watcher::open(&args.redis_url).await?;
    let writer = crate::connect(db_url).await?;
    let stmt = writer
        .prepare("UPDATE bench_items SET val = val + 1 WHERE id = $1")
        .await?;
    let mut h = histogram();
    for i in 0..COMMITS as i64 {
        let id = 50_001 + (base + i) % 50_000;
        let key = format!("{NS}:item:{id}");
        let _: () = con.set(&key, "v").await?;
        watch.track(&key).await?;
        writer.execute(&stmt, &[&id]).await?;
        let ack = Instant::now();
        let gone = watch.gone(&key).await?;
        record(&mut h, gone.saturating_duration_since(ack));
        tokio::time::sleep(SPACING).await;
    }
    Ok(h)
}

/// Learns when keys are deleted from Redis client tracking (RESP3
/// invalidation pushes), as a process holding them would: no polling that
/// would take the cores the daemon needs.
struct Watcher {
    con: redis::aio::MultiplexedConnection,
    pushes: tokio::sync::mpsc::UnboundedReceiver<(Instant, Vec<String>)>,
}

impl Watcher {
    async fn open(url: &str) -> anyhow::Result<Self> {
        let client = smartcache_core::conn::node_client(
            url,
            &smartcache_core::conn::Options::default(),
            None,
        )?;
        let (tx, pushes) = tokio::sync::mpsc::unbounded_channel();
        let sink = move |push: redis::PushInfo| -> Result<(), std::convert::Infallible> {
            if push.kind == redis::PushKind::Invalidate {
                let keys = match push.data.first() {
                    Some(redis::Value::Array(keys)) => keys
                        .iter()
                        .filter_map(|k| match k {
                            redis::Value::BulkString(b) => String::from_utf8(b.clone()).ok(),
                            _ => None,
                        })
                        .collect(),
                    _ => Vec::new(),
                };
                let _ = tx.send((Instant::now(), keys));
            }
            Ok(())
        };
        let config = redis::AsyncConnectionConfig::new().set_push_sender(sink);
        let mut con = client
            .get_multiplexed_async_connection_with_config(&config)
            .await?;
        redis::cmd("CLIENT")
            .arg("TRACKING")
            .arg("ON")
            .exec_async(&mut con)
            .await?;
        Ok(Self { con, pushes })
    }

    /// Reads `key` so that its deletion is pushed; forgets earlier pushes.
    async fn track(&mut self, key: &str) -> anyhow::Result<()> {
        let _: Option<String> = self.con.get(key).await?;
        while self.pushes.try_recv().is_ok() {}
        Ok(())
    }

    /// When the push saying `key` changed arrived.
    async fn gone(&mut self, key: &str) -> anyhow::Result<Instant> {
        loop {
            let (at, keys) = tokio::time::timeout(Duration::from_secs(10), self.pushes.recv())
                .await
                .map_err(|_| anyhow::anyhow!("{key} never deleted"))?
                .ok_or_else(|| anyhow::anyhow!("tracking connection closed"))?;
            if keys.iter().any(|k| k == key) {
                return Ok(at);
            }
        }
    }
}

/// Ack → NOTIFY received (a row trigger with `pg_notify`), then a `DEL`
/// seen through the same tracking push, spaced like the commits.
async fn floor(args: &Args, db_url: &str) -> anyhow::Result<Histogram<u64>> {
    let (listener, mut connection) = tokio_postgres::connect(db_url, NoTls).await?;
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel::<Instant>();
    let driver = tokio::spawn(async move {
        let mut messages = futures_util::stream::poll_fn(move |cx| connection.poll_message(cx));
        while let Some(Ok(m)) = messages.next().await {
            if let AsyncMessage::Notification(_) = m {
                let _ = tx.send(Instant::now());
            }
        }
    });
    listener.batch_execute("LISTEN bench_naive").await?;
    let mut del = crate::redis_manager(&args.redis_url).await?;
    let mut watch = Watcher::open(&args.redis_url).await?;
    let writer = crate::connect(db_url).await?;
    let stmt = writer
        .prepare("UPDATE naive_items SET val = val + 1 WHERE id = $1")
        .await?;
    let mut h = histogram();
    for i in 0..COMMITS as i64 {
        let k = format!("{NS}:floor:{i}");
        let _: () = del.set(&k, "v").await?;
        watch.track(&k).await?;
        writer.execute(&stmt, &[&(1 + i)]).await?;
        let ack = Instant::now();
        let got = tokio::time::timeout(Duration::from_secs(5), rx.recv())
            .await?
            .ok_or_else(|| anyhow::anyhow!("listener gone"))?;
        let _: () = del.del(&k).await?;
        let gone = watch.gone(&k).await?;
        record(
            &mut h,
            got.saturating_duration_since(ack) + gone.saturating_duration_since(got),
        );
        tokio::time::sleep(SPACING).await;
    }
    driver.abort();
    Ok(h)
}
