//! Consistency checker: writers change random rows with plain SQL while
//! readers read them through the library (each reader its own `Cache`, as
//! separate app processes would be) for a fixed time. Then the writers
//! stop, the daemon drains, and every cached entry is compared with the
//! database: the stale count must be 0.
//!
//! During the run every read is also checked against the commits that
//! returned before it started: a value older than such a commit is a stale
//! read. Some are expected (invalidation takes a few milliseconds), so
//! only their age is bounded.
//!
//! `SMARTCACHE_SOAK_SECS` sets the duration (default 5 s); a longer soak is
//! the same test with a bigger value.

use smartcache::{Cache, Dep};
use smartcache_tests::servers::{wait_for, RedisCluster, Rng, Stack, LIBRARY_PREFIX, WAIT};
use smartcache_tests::{Daemon, Env};
use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tokio_postgres::NoTls;

const ROWS: i64 = 200;
const WRITERS: usize = 4;
const READERS: usize = 8;
/// A read may lag a commit by this much (the daemon's invalidation
/// latency under load on a small CI machine); a lost invalidation lags
/// until the end of the run.
const MAX_STALE_READ_AGE: Duration = Duration::from_secs(5);

/// When each `(id, val)` was committed (`val` only grows by one).
type Commits = Arc<Mutex<HashMap<(i64, i64), Instant>>>;

#[derive(Debug, Default, Clone, Copy)]
struct ReaderStats {
    reads: u64,
    hits: u64,
    stale_reads: u64,
    max_stale_age: Duration,
}

fn soak_secs() -> u64 {
    std::env::var("SMARTCACHE_SOAK_SECS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(5)
}

/// Runs the writers against `pg_url` and one reader per cache for `secs`,
/// then checks the readers' view. Returns the transactions written.
async fn read_while_writing(pg_url: &str, caches: Vec<Cache>, secs: u64) -> u64 {
    let stop = Arc::new(AtomicBool::new(false));
    let commits: Commits = Arc::default();
    let writers: Vec<_> = (0..WRITERS)
        .map(|i| {
            tokio::spawn(writer(
                pg_url.to_owned(),
                stop.clone(),
                commits.clone(),
                i as u64,
            ))
        })
        .collect();
    let readers: Vec<_> = caches
        .into_iter()
        .enumerate()
        .map(|(i, cache)| {
            tokio::spawn(reader(
                cache,
                pg_url.to_owned(),
                stop.clone(),
                commits.clone(),
                100 + i as u64,
            ))
        })
        .collect();

    tokio::time::sleep(Duration::from_secs(secs)).await;
    stop.store(true, Ordering::Relaxed);
    let mut written = 0;
    for w in writers {
        written += w.await.unwrap();
    }
    let mut total = ReaderStats::default();
    for r in readers {
        let s = r.await.unwrap();
        total.reads += s.reads;
        total.hits += s.hits;
        total.stale_reads += s.stale_reads;
        total.max_stale_age = total.max_stale_age.max(s.max_stale_age);
    }
    println!(
        "{secs} s, {WRITERS} writers, {READERS} readers, {ROWS} rows: {written} transactions, \
         {} reads ({} hits, {} misses); {} reads older than a commit that preceded them, \
         the oldest by {:?}",
        total.reads,
        total.hits,
        total.reads - total.hits,
        total.stale_reads,
        total.max_stale_age
    );
    assert!(written > 0 && total.reads > 0);
    assert!(
        total.max_stale_age < MAX_STALE_READ_AGE,
        "a reader got a value {:?} older than a commit that preceded the read",
        total.max_stale_age
    );
    written
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn no_stale_entry_survives_concurrent_writes_and_reads() {
    let mut stack = Stack::start(ROWS, "").await;
    let mut daemon = stack.daemon();
    wait_for("the daemon's session", WAIT, || async {
        (stack.pg.daemon_sessions().await.0 > 0).then_some(())
    })
    .await;
    let mut caches = Vec::new();
    for _ in 0..READERS {
        let cache = Cache::builder(&stack.redis.url())
            .namespace(stack.ns.name())
            .build()
            .await
            .expect("library cache");
        caches.push(cache);
    }
    read_while_writing(&stack.pg.url("postgres"), caches, soak_secs()).await;
    stack.wait_drained().await;
    let verdict = stack.verify([]).await;
    assert!(
        verdict.cached > 0,
        "the readers cached nothing: the check proves nothing"
    );
    daemon.terminate().await;
}

/// The same on a 3-primary Redis Cluster: an entry's lease and value live
/// on one node, its row's dependency set most likely on another.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn no_stale_entry_survives_concurrent_writes_and_reads_on_a_redis_cluster() {
    let (_cluster, _, env, daemon) = on_a_cluster("cl_consistency").await;
    let mut caches = Vec::new();
    for _ in 0..READERS {
        caches.push(env.cache().await);
    }
    read_while_writing(&env.db.url, caches, soak_secs()).await;
    env.wait_drained().await;

    let db = rows(&env).await;
    let cache = env.cache().await;
    let mut cached = 0;
    for (id, val) in &db {
        if let Some(v) = cache
            .get::<i64>(&format!("{LIBRARY_PREFIX}{id}"))
            .await
            .unwrap()
        {
            assert_eq!(v, *val, "stale entry for row {id} after the daemon drained");
            cached += 1;
        }
    }
    println!("{cached} entries cached after the run, 0 stale");
    assert!(
        cached > 0,
        "the readers cached nothing: the check proves nothing"
    );
    daemon.stop().await;
}

/// Bounds of the readers' local tiers: room for every row.
const LOCAL_BYTES: u64 = 1 << 20;
const LOCAL_ENTRIES: u64 = 10_000;

/// The single-server checker with each reader's local tier on: after the
/// daemon drained, every reader's view (its local copies first) equals the
/// database.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn no_stale_copy_survives_in_the_local_tiers() {
    let mut stack = Stack::start(ROWS, "").await;
    let mut daemon = stack.daemon();
    wait_for("the daemon's session", WAIT, || async {
        (stack.pg.daemon_sessions().await.0 > 0).then_some(())
    })
    .await;
    let mut caches = Vec::new();
    for _ in 0..READERS {
        caches.push(local_cache(&stack.redis.url(), stack.ns.name(), false).await);
    }
    read_while_writing(&stack.pg.url("postgres"), caches.clone(), soak_secs()).await;
    stack.wait_drained().await;
    let verdict = stack.verify([]).await;
    assert!(
        verdict.cached > 0,
        "nothing cached: the check proves nothing"
    );
    let db: HashMap<i64, i64> = stack.rows().await.into_iter().collect();
    local_views_agree(&caches, &db).await;
    daemon.terminate().await;
}

/// The same on a 3-primary Redis Cluster: one tracking connection per
/// primary.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn no_stale_copy_survives_in_the_local_tiers_on_a_redis_cluster() {
    let (_cluster, seeds, env, daemon) = on_a_cluster("cl_local_consistency").await;
    let mut caches = Vec::new();
    for _ in 0..READERS {
        caches.push(local_cache(&seeds, env.ns.name(), true).await);
    }
    read_while_writing(&env.db.url, caches.clone(), soak_secs()).await;
    env.wait_drained().await;
    let db = rows(&env).await;
    local_views_agree(&caches, &db).await;
    daemon.stop().await;
}

/// A 3-primary cluster, a database with `items` and a daemon watching it.
async fn on_a_cluster(tag: &str) -> (RedisCluster, String, Env, Daemon) {
    let cluster = RedisCluster::start().await;
    let seeds = cluster.urls().join(",");
    let setup = format!(
        "CREATE TABLE items (id bigint PRIMARY KEY, val bigint NOT NULL);
         INSERT INTO items SELECT g, 0 FROM generate_series(1, {ROWS}) g;"
    );
    let mut env = Env::on_redis(tag, &setup, &seeds, true).await;
    let config = env.config("[[tables]]\nname = \"items\"\nkeys = [\"item:{id}\"]\n");
    env.install(&config).await;
    let daemon = env.start_daemon(&config);
    (cluster, seeds, env, daemon)
}

async fn rows(env: &Env) -> HashMap<i64, i64> {
    env.pg
        .query("SELECT id, val FROM items", &[])
        .await
        .unwrap()
        .iter()
        .map(|r| (r.get(0), r.get(1)))
        .collect()
}

async fn local_cache(url: &str, ns: &str, cluster: bool) -> Cache {
    let cache = Cache::builder(url)
        .namespace(ns)
        .cluster(cluster)
        .local(LOCAL_BYTES, LOCAL_ENTRIES)
        .build()
        .await
        .expect("library cache");
    wait_for("the local tier to serve", WAIT, || async {
        cache.local_stats().unwrap().serving.then_some(())
    })
    .await;
    cache
}

/// Every reader's view of every row equals the database once the
/// invalidations in flight have arrived (they take microseconds; the
/// patience is for a loaded machine, and a lost one never arrives).
async fn local_views_agree(caches: &[Cache], db: &HashMap<i64, i64>) {
    let (held, hits) = caches.iter().fold((0, 0), |(e, h), c| {
        let s = c.local_stats().unwrap();
        (e + s.entries, h + s.hits)
    });
    assert!(
        held > 0 && hits > 0,
        "the local tiers held {held} copies and served {hits} hits: the check proves nothing"
    );
    let first = AtomicU64::new(u64::MAX);
    wait_for(
        "every local tier to agree with the database",
        WAIT,
        || async {
            let mut stale = 0;
            for cache in caches {
                for (id, val) in db {
                    let key = format!("{LIBRARY_PREFIX}{id}");
                    if let Some(v) = cache.get::<i64>(&key).await.unwrap() {
                        stale += u64::from(v != *val);
                    }
                }
            }
            let _ = first.compare_exchange(u64::MAX, stale, Ordering::Relaxed, Ordering::Relaxed);
            (stale == 0).then_some(())
        },
    )
    .await;
    println!(
        "{held} local copies, {hits} local hits; {} stale copies at the first look after \
         the daemon drained, 0 after",
        first.load(Ordering::Relaxed)
    );
}

/// Updates 1 to 3 random rows per transaction (in key order), recording
/// when each new value was committed. Returns the transactions committed.
async fn writer(url: String, stop: Arc<AtomicBool>, commits: Commits, seed: u64) -> u64 {
    let (mut client, conn) = tokio_postgres::connect(&url, NoTls).await.unwrap();
    tokio::spawn(conn);
    let mut rng = Rng::new(seed);
    let mut done = 0;
    while !stop.load(Ordering::Relaxed) {
        let mut ids: Vec<i64> = (0..1 + rng.below(3))
            .map(|_| rng.pick(&(1..=ROWS)))
            .collect();
        ids.sort_unstable();
        ids.dedup();
        let tx = client.transaction().await.unwrap();
        let mut vals = Vec::new();
        for id in &ids {
            let row = tx
                .query_one(
                    "UPDATE items SET val = val + 1 WHERE id = $1 RETURNING val",
                    &[id],
                )
                .await
                .unwrap();
            vals.push((*id, row.get::<_, i64>(0)));
        }
        tx.commit().await.unwrap();
        let at = Instant::now();
        let mut c = commits.lock().unwrap();
        for v in vals {
            c.insert(v, at);
        }
        done += 1;
    }
    done
}

/// Reads random rows through the library; the computation reads the row
/// from PostgreSQL.
async fn reader(
    cache: Cache,
    url: String,
    stop: Arc<AtomicBool>,
    commits: Commits,
    seed: u64,
) -> ReaderStats {
    let (client, conn) = tokio_postgres::connect(&url, NoTls).await.unwrap();
    tokio::spawn(conn);
    let client = &client;
    let mut rng = Rng::new(seed);
    let mut stats = ReaderStats::default();
    while !stop.load(Ordering::Relaxed) {
        let id = rng.pick(&(1..=ROWS));
        let started = Instant::now();
        let fetched = cache
            .entry(format!("{LIBRARY_PREFIX}{id}"))
            .depends_on(Dep::row("items", [id]))
            .fetch(|| async move {
                let row = client
                    .query_one("SELECT val FROM items WHERE id = $1", &[&id])
                    .await?;
                Ok::<i64, anyhow::Error>(row.get(0))
            })
            .await
            .expect("read through the cache");
        stats.reads += 1;
        if fetched.status.is_hit() {
            stats.hits += 1;
        }
        // The commit that made this value old, if it returned before the
        // read began.
        let newer = commits
            .lock()
            .unwrap()
            .get(&(id, fetched.value + 1))
            .copied();
        if let Some(at) = newer.filter(|at| *at < started) {
            stats.stale_reads += 1;
            stats.max_stale_age = stats.max_stale_age.max(started - at);
        }
    }
    stats
}
