//! The fault schedule: library readers and SQL writers run while faults are
//! injected at random — a daemon killed with SIGKILL, a daemon frozen
//! (SIGSTOP, then SIGCONT), the daemons' PostgreSQL sessions cut,
//! PostgreSQL restarted, Redis restarted from an older snapshot (what a
//! failover to a replica that missed the last writes looks like to
//! clients), a second daemon running alongside. At the end every cached
//! entry equals the database.
//!
//! `SMARTCACHE_NEMESIS_SECS` sets how long faults are injected (CI: 20 s).

use smartcache::Dep;
use smartcache_tests::servers::{self, DaemonProcess, Rng, Stack, LIBRARY_PREFIX};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

const ROWS: i64 = 1_000;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_cached_entry_equals_the_database_after_a_schedule_of_faults() {
    let secs: u64 = std::env::var("SMARTCACHE_NEMESIS_SECS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(20);
    let mut stack = Stack::start(ROWS, "pg_timeout_ms = 3000\ncanary_interval_ms = 1000").await;
    stack.fill().await;
    let mut daemons: Vec<DaemonProcess> = vec![stack.daemon()];
    let stop = Arc::new(AtomicBool::new(false));
    let reads = Arc::new(AtomicU64::new(0));
    let mut readers = Vec::new();
    for r in 0..4u64 {
        let (cache, url, stop, reads) = (
            stack.cache.clone(),
            stack.pg.url("postgres"),
            stop.clone(),
            reads.clone(),
        );
        readers.push(tokio::spawn(async move {
            let mut rng = Rng::new(1_000 + r);
            let mut db: Option<tokio_postgres::Client> = None;
            while !stop.load(Ordering::Relaxed) {
                if db.as_ref().is_none_or(|c| c.is_closed()) {
                    db = match tokio_postgres::connect(&url, tokio_postgres::NoTls).await {
                        Ok((c, conn)) => {
                            tokio::spawn(conn);
                            Some(c)
                        }
                        Err(_) => {
                            tokio::time::sleep(Duration::from_millis(50)).await;
                            continue;
                        }
                    };
                }
                let client = db.as_ref().expect("connected");
                let id = 1 + rng.below(ROWS as u64) as i64;
                let _: Result<i64, Box<dyn std::error::Error + Send + Sync>> = cache
                    .entry(format!("{LIBRARY_PREFIX}{id}"))
                    .depends_on(Dep::row("items", [id]))
                    .get_or_compute(|| async move {
                        let row = client
                            .query_one("SELECT val FROM items WHERE id = $1", &[&id])
                            .await?;
                        Ok(row.get::<_, i64>(0))
                    })
                    .await;
                reads.fetch_add(1, Ordering::Relaxed);
            }
        }));
    }
    let writers = stack.writers(3, 1..=ROWS);
    let mut rng = Rng::new(7);
    let mut faults: Vec<&str> = Vec::new();
    let mut frozen: Option<(u32, Instant)> = None;
    let mut snapshot_at: Option<Instant> = None;
    let deadline = Instant::now() + Duration::from_secs(secs);
    while Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(500 + rng.below(1500))).await;
        if let Some((pid, since)) = frozen {
            if since.elapsed() > Duration::from_secs(4) {
                servers::signal(pid, "-CONT");
                frozen = None;
            }
        }
        match rng.below(7) {
            0 => {
                let i = rng.below(daemons.len() as u64) as usize;
                daemons[i].kill9();
                daemons.remove(i);
                daemons.push(stack.daemon());
                faults.push("daemon killed");
            }
            1 if frozen.is_none() => {
                let pid = daemons[0].pid().expect("running");
                servers::signal(pid, "-STOP");
                frozen = Some((pid, Instant::now()));
                faults.push("daemon frozen");
            }
            2 => {
                stack.pg.terminate_daemon_sessions().await;
                faults.push("daemon sessions cut");
            }
            3 => {
                stack.pg.restart().await;
                faults.push("PostgreSQL restarted");
            }
            4 if snapshot_at.is_none() => {
                stack.redis.save().await;
                snapshot_at = Some(Instant::now());
                faults.push("Redis snapshot taken");
            }
            4 => {
                stack.redis.shutdown_nosave().await;
                stack.redis.start_again().await;
                snapshot_at = None;
                faults.push("Redis restarted from its older snapshot");
            }
            5 if daemons.len() < 2 => {
                daemons.push(stack.daemon());
                faults.push("second daemon started");
            }
            5 => {
                let mut d = daemons.pop().expect("two daemons");
                d.terminate().await;
                faults.push("second daemon stopped");
            }
            _ => {}
        }
    }
    if let Some((pid, _)) = frozen {
        servers::signal(pid, "-CONT");
    }
    writers.stop().await;
    stack.wait_drained().await;
    // Readers race the last commits; once they stop and the outbox is
    // drained again, every entry must equal the database.
    tokio::time::sleep(Duration::from_secs(1)).await;
    stop.store(true, Ordering::Relaxed);
    for r in readers {
        r.await.unwrap();
    }
    stack.wait_drained().await;
    tokio::time::sleep(Duration::from_millis(1500)).await;
    println!(
        "nemesis: {secs} s, {} faults ({}), {} reads",
        faults.len(),
        summary(&faults),
        reads.load(Ordering::Relaxed)
    );
    let verdict = stack.verify(std::iter::empty()).await;
    println!("nemesis: stale entries: {}", verdict.stale.len());
    for mut d in daemons {
        if d.running() {
            d.terminate().await;
        }
    }
}

fn summary(faults: &[&str]) -> String {
    let mut counts: Vec<(&str, usize)> = Vec::new();
    for f in faults {
        match counts.iter_mut().find(|(n, _)| n == f) {
            Some((_, c)) => *c += 1,
            None => counts.push((f, 1)),
        }
    }
    counts
        .iter()
        .map(|(n, c)| format!("{c}× {n}"))
        .collect::<Vec<_>>()
        .join(", ")
}
