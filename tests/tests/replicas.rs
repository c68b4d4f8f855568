//! Applications that read from a lagging PostgreSQL replica: with
//! `replica_urls`, a key is deleted only once the replica has replayed the
//! change, so no fill caches the old row; without it, some do. Each test
//! owns a primary, a streaming replica applying commits 300 ms late, and
//! Redis.

use smartcache::Dep;
use smartcache_tests::servers::{wait_for, Postgres, Rng, Stack, LIBRARY_PREFIX, WAIT};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

const ROWS: i64 = 200;

/// Writers on the primary and library readers filling from the replica for
/// a few seconds; then everything settles. Returns the stale entries.
async fn readers_on_a_lagging_replica(with_setting: bool, settings: &str) -> Vec<String> {
    let mut stack = Stack::start(ROWS, &format!("canary_interval_ms = 0\n{settings}")).await;
    let replica = stack.pg.start_replica(Duration::from_millis(300)).await;
    let url = replica.url("postgres");
    let mut daemon = if with_setting {
        stack.daemon_with_env(&[("SMARTCACHE_REPLICA_URLS", &url)])
    } else {
        stack.daemon()
    };
    let stop = Arc::new(AtomicBool::new(false));
    let fills = Arc::new(AtomicU64::new(0));
    let mut readers = Vec::new();
    for r in 0..6u64 {
        let (cache, url, stop, fills) = (
            stack.cache.clone(),
            url.clone(),
            stop.clone(),
            fills.clone(),
        );
        readers.push(tokio::spawn(async move {
            let db = smartcache_tests::db::connect(&url).await;
            let db = &db;
            let fills = &fills;
            let mut rng = Rng::new(100 + r);
            while !stop.load(Ordering::Relaxed) {
                let id = 1 + rng.below(ROWS as u64) as i64;
                let got: Result<i64, smartcache::Error> = cache
                    .entry(format!("{LIBRARY_PREFIX}{id}"))
                    .depends_on(Dep::row("items", [id]))
                    .get_or_compute(|| async move {
                        fills.fetch_add(1, Ordering::Relaxed);
                        let row = db
                            .query_one("SELECT val FROM items WHERE id = $1", &[&id])
                            .await
                            .expect("read the replica");
                        Ok(row.get::<_, i64>(0))
                    })
                    .await;
                got.expect("library read");
            }
        }));
    }
    let writers = stack.writers(2, 1..=ROWS);
    tokio::time::sleep(Duration::from_secs(4)).await;
    writers.stop().await;
    caught_up(&stack.pg, &replica).await;
    stack.wait_drained().await;
    // Readers keep filling until the replica has replayed everything and
    // the daemon applied it.
    tokio::time::sleep(Duration::from_millis(500)).await;
    stop.store(true, Ordering::Relaxed);
    for r in readers {
        r.await.unwrap();
    }
    println!("fills from the replica: {}", fills.load(Ordering::Relaxed));
    let verdict = stack.compare(std::iter::empty()).await;
    daemon.terminate().await;
    verdict.stale
}

/// Waits until the replica has replayed everything the primary wrote.
async fn caught_up(primary: &Postgres, replica: &Postgres) {
    let lsn: String = primary
        .connect()
        .await
        .query_one("SELECT pg_current_wal_lsn()::text", &[])
        .await
        .unwrap()
        .get(0);
    let r = replica.connect().await;
    wait_for("the replica to replay everything", WAIT, || async {
        let done: bool = r
            .query_one(
                "SELECT pg_last_wal_replay_lsn() >= $1::text::pg_lsn",
                &[&lsn],
            )
            .await
            .ok()?
            .get(0);
        done.then_some(())
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_replica_urls_no_fill_from_a_lagging_replica_stays_stale() {
    let stale = readers_on_a_lagging_replica(true, "").await;
    assert!(
        stale.is_empty(),
        "{} stale entries: {:?}",
        stale.len(),
        &stale[..stale.len().min(10)]
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_replica_urls_fills_from_a_lagging_replica_stay_stale() {
    let stale = readers_on_a_lagging_replica(false, "").await;
    assert!(
        !stale.is_empty(),
        "expected stale entries without the setting: the replica lags 300 ms"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_replica_still_behind_after_the_wait_gets_the_deletions_again() {
    // The daemon waits 50 ms, the replica lags 300 ms: every batch is applied
    // early, then again once the replica has replayed it.
    let stale = readers_on_a_lagging_replica(true, "replica_wait_ms = 50").await;
    assert!(
        stale.is_empty(),
        "{} stale entries: {:?}",
        stale.len(),
        &stale[..stale.len().min(10)]
    );
}
