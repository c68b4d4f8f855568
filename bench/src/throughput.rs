//! Bulk invalidation: one statement changing every row, and single-row
//! commits from 8 clients; smartcache's daemon against a naive listener
//! (row trigger with `pg_notify(key)`, one `DEL` per notification).

use crate::daemon::Daemon;
use crate::stats::{median, met};
use crate::{Args, NS};
use futures_util::StreamExt;
use redis::aio::MultiplexedConnection;
use redis::AsyncCommands;
use std::time::{Duration, Instant};
use tokio::sync::mpsc;
use tokio::task::JoinHandle;
use tokio_postgres::{AsyncMessage, Client, NoTls};

const CLIENTS: usize = 8;

/// A hand-written listener as a user would write it without smartcache.
pub(crate) struct Naive {
    _client: Client,
    tasks: [JoinHandle<()>; 2],
}

impl Naive {
    pub(crate) async fn start(db_url: &str, redis_url: &str) -> anyhow::Result<Self> {
        let (client, mut connection) = tokio_postgres::connect(db_url, NoTls).await?;
        let mut redis = crate::redis_manager(redis_url).await?;
        let (tx, mut rx) = mpsc::unbounded_channel::<String>();
        let driver = tokio::spawn(async move {
            let mut messages = futures_util::stream::poll_fn(move |cx| connection.poll_message(cx));
            while let Some(Ok(m)) = messages.next().await {
                if let AsyncMessage::Notification(n) = m {
                    let _ = tx.send(n.payload().to_owned());
                }
            }
        });
        let deleter = tokio::spawn(async move {
            while let Some(key) = rx.recv().await {
                let _: redis::RedisResult<()> = redis.del(&key).await;
            }
        });
        client.batch_execute("LISTEN bench_naive").await?;
        Ok(Self {
            _client: client,
            tasks: [driver, deleter],
        })
    }

    pub(crate) fn stop(self) {
        for t in &self.tasks {
            t.abort();
        }
    }
}

pub(crate) async fn set_keys(
    con: &mut MultiplexedConnection,
    keys: &[String],
) -> anyhow::Result<()> {
    for chunk in keys.chunks(10_000) {
        let mut pipe = redis::pipe();
        for k in chunk {
            pipe.set(k, "v").ignore();
        }
        let _: () = pipe.query_async(con).await?;
    }
    Ok(())
}

/// Waits until none of `keys` exists; returns when that was seen. Checks
/// with multi-key `EXISTS` per 1,000 keys, dropping chunks that are gone
/// and starting the next pass at the first chunk that is not.
async fn wait_gone(con: &mut MultiplexedConnection, keys: &[String]) -> anyhow::Result<Instant> {
    let mut chunks: Vec<&[String]> = keys.chunks(1000).collect();
    let deadline = Instant::now() + Duration::from_secs(180);
    loop {
        let mut first_left = chunks.len();
        for (i, c) in chunks.iter().enumerate() {
            let n: usize = redis::cmd("EXISTS").arg(*c).query_async(con).await?;
            if n > 0 {
                first_left = i;
                break;
            }
        }
        chunks.drain(..first_left);
        if chunks.is_empty() {
            return Ok(Instant::now());
        }
        if Instant::now() > deadline {
            anyhow::bail!("keys still cached after 180 s");
        }
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
}

#[derive(Default, Clone)]
struct Figures {
    /// Statement start → COMMIT returned (bulk) or → last commit (clients).
    write_s: f64,
    /// COMMIT returned (last one) → every key gone.
    tail_s: f64,
    /// Rows invalidated per second of the time it took.
    rate: f64,
    /// Rows per second from the statement sent to every key gone: what a
    /// user waits for.
    end_to_end: f64,
    /// Daemon CPU per 1,000 row invalidations, ms.
    cpu_ms_per_1k: f64,
}

pub(crate) async fn run(args: &Args, db_url: &str, daemon: &mut Daemon) -> anyhow::Result<()> {
    let rows = args.rows;
    let mut con = crate::redis_con(&args.redis_url).await?;
    let mut clients = Vec::new();
    for _ in 0..CLIENTS {
        clients.push(crate::connect(db_url).await?);
    }
    let mut results: Vec<[Figures; 4]> = Vec::new();
    let mut naive_multi = None;
    for _ in 0..args.runs {
        let sc_bulk = bulk(
            &mut con,
            &clients[0],
            "bench_items",
            "item",
            rows,
            Some(daemon),
        )
        .await?;
        let sc_multi = multi(
            &mut con,
            &clients,
            "bench_items",
            "item",
            rows,
            Some(daemon),
        )
        .await?;
        let naive = Naive::start(db_url, &args.redis_url).await?;
        let nv_bulk = bulk(&mut con, &clients[0], "naive_items", "naive", rows, None).await?;
        // The naive writers serialise on NOTIFY and take longest: once.
        if naive_multi.is_none() {
            naive_multi =
                Some(multi(&mut con, &clients, "naive_items", "naive", rows, None).await?);
        }
        naive.stop();
        let nv_multi = naive_multi.clone().unwrap_or_default();
        results.push([sc_bulk, sc_multi, nv_bulk, nv_multi]);
    }
    let m = |i: usize, f: fn(&Figures) -> f64| median(results.iter().map(|r| f(&r[i])).collect());
    println!("## Throughput\n");
    println!(
        "{rows} keys cached, then their rows changed; time until every key is gone (multi-key \
         `EXISTS` per 1,000 keys, ~1 ms resolution). Naive: a row trigger `pg_notify('…', key)` and \
         a Rust listener doing one `DEL` per notification. Median of {} runs (the naive {CLIENTS}-client \
         test runs once: its writers serialise on NOTIFY).\n",
        args.runs
    );
    println!(
        "| test | | writes took | commit → all keys gone | row invalidations/s | statement sent → all keys gone, rows/s | ratio to naive | daemon CPU per 1,000 | goal (≥ 50,000/s and ≥ 20×) met |"
    );
    println!("|---|---|---|---|---|---|---|---|---|");
    for (name, sc, nv) in [
        (format!("one `UPDATE` of {rows} rows"), 0, 2),
        (
            format!("{rows} single-row commits, {CLIENTS} clients"),
            1,
            3,
        ),
    ] {
        let ratio = median(results.iter().map(|r| r[sc].rate / r[nv].rate).collect());
        let rate = m(sc, |f| f.rate);
        println!(
            "| {name} | smartcache | {:.2} s | {:.3} s | {:.0} | {:.0} | {ratio:.1}× | {:.1} ms | {} |",
            m(sc, |f| f.write_s),
            m(sc, |f| f.tail_s),
            rate,
            m(sc, |f| f.end_to_end),
            m(sc, |f| f.cpu_ms_per_1k),
            met(rate >= 50_000.0 && ratio >= 20.0)
        );
        println!(
            "| | naive | {:.2} s | {:.3} s | {:.0} | {:.0} | | | |",
            m(nv, |f| f.write_s),
            m(nv, |f| f.tail_s),
            m(nv, |f| f.rate),
            m(nv, |f| f.end_to_end)
        );
    }
    println!(
        "\nFor the {CLIENTS}-client test, row invalidations/s = rows / (first commit → all keys gone), so it \
         is bounded by the write rate; the bulk test's rate counts from COMMIT returned.\n"
    );
    println!(
        "## Daemon resources\n\n| | figure | goal | met |\n|---|---|---|---|\n\
         | RSS after the throughput runs | {:.1} MB | | |\n\
         | peak RSS (VmHWM) | {:.1} MB | < 50 MB | {} |\n\
         | CPU per 1,000 invalidations, bulk statement | {:.1} ms | | |\n\
         | CPU per 1,000 invalidations, {CLIENTS} clients | {:.1} ms | | |\n",
        daemon.rss_mb()?,
        daemon.peak_rss_mb()?,
        met(daemon.peak_rss_mb()? < 50.0),
        m(0, |f| f.cpu_ms_per_1k),
        m(1, |f| f.cpu_ms_per_1k),
    );
    Ok(())
}

fn keys(prefix: &str, rows: i64) -> Vec<String> {
    (1..=rows).map(|id| format!("{NS}:{prefix}:{id}")).collect()
}

async fn bulk(
    con: &mut MultiplexedConnection,
    writer: &Client,
    table: &str,
    prefix: &str,
    rows: i64,
    daemon: Option<&Daemon>,
) -> anyhow::Result<Figures> {
    let keys = keys(prefix, rows);
    set_keys(con, &keys).await?;
    let cpu = daemon.map(|d| d.cpu_s()).transpose()?;
    let started = Instant::now();
    writer
        .batch_execute(&format!(
            "UPDATE {table} SET val = val + 1 WHERE id <= {rows}"
        ))
        .await?;
    let committed = Instant::now();
    let gone = wait_gone(con, &keys).await?;
    figures(started, committed, gone, rows, cpu, daemon)
}

async fn multi(
    con: &mut MultiplexedConnection,
    clients: &[Client],
    table: &str,
    prefix: &str,
    rows: i64,
    daemon: Option<&Daemon>,
) -> anyhow::Result<Figures> {
    let keys = keys(prefix, rows);
    set_keys(con, &keys).await?;
    let cpu = daemon.map(|d| d.cpu_s()).transpose()?;
    let sql = format!("UPDATE {table} SET val = val + 1 WHERE id = $1");
    let started = Instant::now();
    let writers = clients.iter().enumerate().map(|(c, client)| {
        let sql = &sql;
        async move {
            let stmt = client.prepare(sql).await?;
            for id in (c as i64 + 1..=rows).step_by(clients.len()) {
                client.execute(&stmt, &[&id]).await?;
            }
            anyhow::Ok(Instant::now())
        }
    });
    let done = futures_util::future::try_join_all(writers).await?;
    let committed = done.into_iter().max().unwrap_or(started);
    let gone = wait_gone(con, &keys).await?;
    let mut f = figures(started, committed, gone, rows, cpu, daemon)?;
    f.rate = rows as f64 / (gone - started).as_secs_f64();
    Ok(f)
}

fn figures(
    started: Instant,
    committed: Instant,
    gone: Instant,
    rows: i64,
    cpu: Option<f64>,
    daemon: Option<&Daemon>,
) -> anyhow::Result<Figures> {
    let tail = gone.saturating_duration_since(committed).as_secs_f64();
    let cpu_ms_per_1k = match (cpu, daemon) {
        (Some(before), Some(d)) => (d.cpu_s()? - before) * 1000.0 / (rows as f64 / 1000.0),
        _ => f64::NAN,
    };
    Ok(Figures {
        write_s: (committed - started).as_secs_f64(),
        tail_s: tail,
        rate: rows as f64 / tail.max(1e-6),
        end_to_end: rows as f64 / (gone - started).as_secs_f64().max(1e-6),
        cpu_ms_per_1k,
    })
}
