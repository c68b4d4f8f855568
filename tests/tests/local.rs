//! The local tier (`CacheBuilder::local`): copies served from the process
//! only while Redis client tracking vouches for them. Each test has a
//! reader `Cache` with the local tier on and changes the value as another
//! process would (another `Cache`, or a plain Redis connection).

use redis::AsyncCommands;
use smartcache::Cache;
use smartcache_core::conn::Conn;
use smartcache_core::keys::Namespace;
use smartcache_tests::servers::{wait_for, Redis, RedisCluster, WAIT};
use smartcache_tests::{redis_conn, redis_url};
use std::time::{Duration, Instant};

fn namespace(tag: &str) -> Namespace {
    Namespace::new(&format!(
        "t_local_{tag}_{}_{}",
        std::process::id(),
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_nanos()
            % 1_000_000_007
    ))
    .unwrap()
}

async fn reader(url: &str, ns: &Namespace, cluster: bool, bytes: u64, entries: u64) -> Cache {
    let cache = Cache::builder(url)
        .namespace(ns.name())
        .cluster(cluster)
        .local(bytes, entries)
        .build()
        .await
        .expect("connect the library to Redis");
    wait_serving(&cache).await;
    cache
}

async fn wait_serving(cache: &Cache) {
    wait_for("the local tier to serve", WAIT, || async {
        cache.local_stats().unwrap().serving.then_some(())
    })
    .await;
}

async fn other(url: &str, ns: &Namespace, cluster: bool) -> Cache {
    Cache::builder(url)
        .namespace(ns.name())
        .cluster(cluster)
        .build()
        .await
        .expect("connect the library to Redis")
}

/// Reads `key` until a read is served locally; returns the value.
async fn read_locally(cache: &Cache, key: &str) -> i64 {
    let before = cache.local_stats().unwrap().hits;
    wait_for("a local hit", WAIT, || async {
        let v = cache.get::<i64>(key).await.unwrap();
        (cache.local_stats().unwrap().hits > before).then_some(v)
    })
    .await
    .expect("the key is cached")
}

/// The ids of the tracking connections of namespace `ns` (single server).
async fn trackers(con: &mut Conn, ns: &Namespace) -> Vec<String> {
    let list: String = redis::cmd("CLIENT")
        .arg("LIST")
        .query_async(con)
        .await
        .unwrap();
    let name = format!("name=smartcache-tracking.{}", ns.name());
    list.lines()
        .filter(|l| l.split(' ').any(|f| f == name))
        .filter_map(|l| l.split(' ').find_map(|f| f.strip_prefix("id=")))
        .map(str::to_owned)
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_clear_or_delete_by_another_process_reaches_the_local_tier() {
    let url = redis_url();
    let ns = namespace("clear");
    let reader = reader(&url, &ns, false, 1 << 20, 1000).await;
    let writer = other(&url, &ns, false).await;
    let mut raw = redis_conn(&url, false);

    for k in ["a", "b", "c"] {
        writer.set(k, &1, []).await.unwrap();
        assert_eq!(read_locally(&reader, k).await, 1);
    }

    writer.clear("a").await.unwrap();
    let _: () = raw.unlink(ns.value_key("b")).await.unwrap();
    writer.clear_all().await.unwrap();
    for k in ["a", "b", "c"] {
        wait_for("the local copy to go", WAIT, || async {
            reader.get::<i64>(k).await.unwrap().is_none().then_some(())
        })
        .await;
    }
    assert!(reader.local_stats().unwrap().invalidations >= 3);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_value_set_by_another_process_replaces_the_local_copy() {
    let url = redis_url();
    let ns = namespace("set");
    let reader = reader(&url, &ns, false, 1 << 20, 1000).await;
    let writer = other(&url, &ns, false).await;
    writer.set("k", &1, []).await.unwrap();
    assert_eq!(read_locally(&reader, "k").await, 1);
    writer.set("k", &2, []).await.unwrap();
    wait_for("the new value", WAIT, || async {
        (reader.get::<i64>("k").await.unwrap() == Some(2)).then_some(())
    })
    .await;
    assert_eq!(read_locally(&reader, "k").await, 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reader_whose_tracking_connection_is_cut_never_serves_a_value_changed_meanwhile() {
    let url = redis_url();
    let ns = namespace("cut");
    let reader = reader(&url, &ns, false, 1 << 20, 1000).await;
    let mut raw = redis_conn(&url, false);
    let _: () = raw.set(ns.value_key("k"), "1").await.unwrap();
    assert_eq!(read_locally(&reader, "k").await, 1);

    let cut = trackers(&mut raw, &ns).await;
    assert_eq!(cut.len(), 1, "one tracking connection");
    let flushes = reader.local_stats().unwrap().flushes;
    let _: () = redis::cmd("CLIENT")
        .arg("KILL")
        .arg("ID")
        .arg(&cut[0])
        .query_async(&mut raw)
        .await
        .unwrap();
    wait_for("the reader to notice", WAIT, || async {
        (reader.local_stats().unwrap().flushes > flushes).then_some(())
    })
    .await;
    // Changed while no tracking connection would report it.
    let _: () = raw.set(ns.value_key("k"), "2").await.unwrap();

    wait_for("a new tracking connection", WAIT, || {
        let mut raw = raw.clone();
        let (ns, reader, cut) = (&ns, &reader, &cut);
        async move {
            let v = reader.get::<i64>("k").await.unwrap();
            assert_eq!(
                v,
                Some(2),
                "served the value changed while tracking was cut"
            );
            let now = trackers(&mut raw, ns).await;
            (now.len() == 1 && now != *cut).then_some(())
        }
    })
    .await;
    wait_serving(&reader).await;
    assert_eq!(read_locally(&reader, "k").await, 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_redis_restart_flushes_the_local_tier() {
    let mut redis = Redis::start().await;
    let url = redis.url();
    let ns = namespace("restart");
    let reader = reader(&url, &ns, false, 1 << 20, 1000).await;
    let mut raw = redis_conn(&url, false);
    let _: () = raw.set(ns.value_key("k"), "1").await.unwrap();
    assert_eq!(read_locally(&reader, "k").await, 1);

    let flushes = reader.local_stats().unwrap().flushes;
    redis.kill9();
    redis.start_again().await;
    wait_for("the reader to notice", WAIT, || async {
        (reader.local_stats().unwrap().flushes > flushes).then_some(())
    })
    .await;
    wait_serving(&reader).await;
    assert_eq!(
        reader.get::<i64>("k").await.unwrap(),
        None,
        "served a value the restarted Redis does not have"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_flushall_flushes_the_local_tier() {
    let redis = Redis::start().await;
    let url = redis.url();
    let ns = namespace("flushall");
    let reader = reader(&url, &ns, false, 1 << 20, 1000).await;
    let mut raw = redis_conn(&url, false);
    let _: () = raw.set(ns.value_key("k"), "1").await.unwrap();
    assert_eq!(read_locally(&reader, "k").await, 1);
    // Another program flushes this throwaway server.
    let _: () = redis::cmd("FLUSHALL").query_async(&mut raw).await.unwrap();
    wait_for("the local copy to go", WAIT, || async {
        reader
            .get::<i64>("k")
            .await
            .unwrap()
            .is_none()
            .then_some(())
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_local_tier_stays_within_its_bounds() {
    let url = redis_url();
    let ns = namespace("bound");
    let (max_bytes, max_entries) = (64 * 1024, 50);
    let reader = reader(&url, &ns, false, max_bytes, max_entries).await;
    let writer = other(&url, &ns, false).await;
    let big = "x".repeat(4000);
    for i in 0..200 {
        writer.set(&format!("small:{i}"), &i, []).await.unwrap();
        writer.set(&format!("big:{i}"), &big, []).await.unwrap();
    }
    for round in 0..3 {
        for i in 0..200 {
            assert_eq!(
                reader.get::<i64>(&format!("small:{i}")).await.unwrap(),
                Some(i)
            );
        }
        let s = reader.local_stats().unwrap();
        assert!(s.entries <= max_entries, "round {round}: {s:?}");
        assert!(s.bytes <= max_bytes, "round {round}: {s:?}");
        for i in 0..200 {
            let v = reader.get::<String>(&format!("big:{i}")).await.unwrap();
            assert_eq!(v.as_deref(), Some(big.as_str()));
        }
        let s = reader.local_stats().unwrap();
        assert!(s.entries <= max_entries, "round {round}: {s:?}");
        assert!(s.bytes <= max_bytes, "round {round}: {s:?}");
    }
    let s = reader.local_stats().unwrap();
    assert!(
        s.fills > max_entries,
        "fewer fills than the bound: the check proves nothing ({s:?})"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_delete_reaches_the_local_tier_on_a_redis_cluster() {
    let cluster = RedisCluster::start().await;
    let seeds = cluster.urls().join(",");
    let ns = namespace("cluster");
    let reader = reader(&seeds, &ns, true, 1 << 20, 1000).await;
    let writer = other(&seeds, &ns, true).await;
    // Enough keys that every primary holds some.
    let keys: Vec<String> = (0..30).map(|i| format!("k{i}")).collect();
    for k in &keys {
        writer.set(k, &1, []).await.unwrap();
        assert_eq!(read_locally(&reader, k).await, 1);
    }
    for k in &keys {
        writer.clear(k).await.unwrap();
    }
    for k in &keys {
        wait_for("the local copy to go", WAIT, || async {
            reader.get::<i64>(k).await.unwrap().is_none().then_some(())
        })
        .await;
    }
    let s = reader.local_stats().unwrap();
    assert!(s.invalidations >= keys.len() as u64, "{s:?}");
}

/// How a failover test fails the master holding its keys.
#[derive(Clone, Copy, Debug)]
enum Failover {
    /// `CLUSTER FAILOVER` on its replica: the old master becomes a replica
    /// and the reader's tracking connection to it stays open.
    Graceful,
    /// [`Failover::Graceful`], then the new master refuses its replica (the
    /// old master) replication: no invalidation can reach the reader
    /// through the old master.
    GracefulUnreplicated,
    /// SIGKILL; its replica is elected in its place.
    Killed,
}

/// The first of `{prefix}0`, `{prefix}1`, … whose slot is on node `master`.
async fn key_on(cluster: &RedisCluster, ns: &Namespace, master: usize, prefix: &str) -> String {
    for i in 0.. {
        let key = format!("{prefix}{i}");
        if cluster.master_of(&ns.value_key(&key)).await == master {
            return key;
        }
    }
    unreachable!()
}

/// The reader's `local_max_lag` (the default): how long a copy may outlive
/// a change whose invalidation is on its way (an invalidation races the
/// writer's reply).
const MAX_LAG: Duration = Duration::from_millis(250);

/// How long a failover test keeps reading after a change: past the
/// reader's slot map check (every second) and a rebuild of tracking.
const WATCH: Duration = Duration::from_secs(4);

/// Reads `key` for [`WATCH`] after it was changed from `old` to `new` (the
/// change acknowledged at `changed`): no read may return `old` once
/// `grace` has passed since, and the reads must end on `new`. Returns how
/// many reads within the grace still returned `old`.
async fn sees_only_the_change(
    cache: &Cache,
    key: &str,
    old: Option<i64>,
    new: Option<i64>,
    changed: Instant,
    grace: Duration,
) -> usize {
    let mut early = 0;
    let mut last = old;
    while changed.elapsed() < WATCH {
        let started = changed.elapsed();
        last = cache.get::<i64>(key).await.unwrap();
        if last == old && old != new {
            assert!(
                started < grace,
                "{key}: read {started:?} after the change to {new:?} returned the old value {old:?} \
                 ({:?})",
                cache.local_stats()
            );
            early += 1;
        }
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
    assert_eq!(last, new, "{key}: the change never reached the reader");
    early
}

/// A reader holds local copies of two keys on the master that fails; after
/// the failover another `Cache` changes one and a raw client deletes the
/// other on the new master. The reader never serves the old values, serves
/// locally again once tracking is rebuilt, and stays coherent for values
/// set after the failover.
async fn the_local_tier_follows(failover: Failover) {
    let mut cluster = RedisCluster::start_with_replicas().await;
    let seeds = cluster.urls().join(",");
    let ns = namespace(&format!("{failover:?}").to_lowercase());
    let reader = reader(&seeds, &ns, true, 1 << 20, 1000).await;
    let writer = other(&seeds, &ns, true).await;
    let changed = "changed".to_owned();
    let master = cluster.master_of(&ns.value_key(&changed)).await;
    let replica = cluster.replica_of(&ns.value_key(&changed)).await;
    let deleted = key_on(&cluster, &ns, master, "deleted").await;
    let later = key_on(&cluster, &ns, master, "later").await;
    for k in [&changed, &deleted] {
        assert!(writer.set(k, &1, []).await.unwrap());
        assert_eq!(read_locally(&reader, k).await, 1);
    }
    let before = reader.local_stats().unwrap();

    let started = Instant::now();
    match failover {
        Failover::Graceful | Failover::GracefulUnreplicated => cluster.failover(replica).await,
        Failover::Killed => cluster.kill9(master).await,
    }
    assert_eq!(
        cluster.master_of(&ns.value_key(&changed)).await,
        replica,
        "the replica took over the slot"
    );
    let mut raw = redis_conn(&cluster.urls()[replica], false);
    if let Failover::GracefulUnreplicated = failover {
        // Replication refused to every user, then the old master's link cut.
        let _: () = redis::cmd("ACL")
            .arg("SETUSER")
            .arg("default")
            .arg("-psync")
            .arg("-sync")
            .query_async(&mut raw)
            .await
            .unwrap();
        let cut: u64 = redis::cmd("CLIENT")
            .arg("KILL")
            .arg("TYPE")
            .arg("replica")
            .query_async(&mut raw)
            .await
            .unwrap();
        assert_eq!(cut, 1, "the old master was the new one's replica");
    }
    // Whether the change below races the reader's slot map check (it
    // usually does: a graceful failover takes less than its second).
    println!(
        "{failover:?} took {:?}; the reader still holds its copies: {}",
        started.elapsed(),
        reader.holds_locally(&changed) && reader.holds_locally(&deleted)
    );

    // A plain connection to the new master: a `MOVED` would fail the call.
    let n: u64 = raw.del(ns.value_key(&deleted)).await.unwrap();
    assert_eq!(n, 1, "the new master had the value");
    let deleted_at = Instant::now();
    assert!(writer.set(&changed, &2, []).await.unwrap());
    let changed_at = Instant::now();
    // A killed master's connection closed, which flushed the tier before
    // the change. A graceful failover leaves the reader's tracking
    // connection on the old master, which learns of the change by
    // replication: allow the documented bound.
    let grace = match failover {
        Failover::Graceful | Failover::GracefulUnreplicated => MAX_LAG,
        Failover::Killed => Duration::ZERO,
    };
    let (early_changed, early_deleted) = tokio::join!(
        sees_only_the_change(&reader, &changed, Some(1), Some(2), changed_at, grace),
        sees_only_the_change(&reader, &deleted, Some(1), None, deleted_at, grace),
    );
    println!("{failover:?}: old values read within the grace: {early_changed} + {early_deleted}");

    wait_serving(&reader).await;
    let after = reader.local_stats().unwrap();
    assert!(
        after.flushes > before.flushes,
        "the failover flushed the tier: {after:?}"
    );
    assert_eq!(read_locally(&reader, &changed).await, 2);

    // Values set after the failover are tracked on the new master.
    assert!(writer.set(&changed, &3, []).await.unwrap());
    sees_only_the_change(&reader, &changed, Some(2), Some(3), Instant::now(), MAX_LAG).await;
    assert_eq!(read_locally(&reader, &changed).await, 3);
    assert!(writer.set(&later, &1, []).await.unwrap());
    assert_eq!(read_locally(&reader, &later).await, 1);
    assert!(writer.clear(&later).await.unwrap());
    sees_only_the_change(&reader, &later, Some(1), None, Instant::now(), MAX_LAG).await;
    let s = reader.local_stats().unwrap();
    assert!(s.hits > after.hits, "local hits after the rebuild: {s:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_graceful_cluster_failover_leaves_no_stale_copy_in_the_local_tier() {
    the_local_tier_follows(Failover::Graceful).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_graceful_cluster_failover_leaves_no_stale_copy_even_if_the_old_master_gets_no_replication(
) {
    the_local_tier_follows(Failover::GracefulUnreplicated).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_killed_master_replaced_by_its_replica_leaves_no_stale_copy_in_the_local_tier() {
    the_local_tier_follows(Failover::Killed).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_local_tier_serves_and_learns_of_a_delete_over_mutual_tls() {
    use smartcache_tests::redis_tls::{Certs, TlsRedis};
    let certs = Certs::new("local tier over TLS");
    let server = TlsRedis::start(&certs, true, &[]).await;
    let url = server.url();
    let ns = namespace("tls");
    let builder = |local: bool| {
        let b = Cache::builder(&url)
            .namespace(ns.name())
            .ca_file(certs.ca.cert())
            .client_cert(&certs.client.cert, &certs.client.key);
        if local {
            b.local(1 << 20, 1000)
        } else {
            b
        }
    };
    let reader = builder(true).build().await.expect("connect over TLS");
    wait_serving(&reader).await;
    let writer = builder(false).build().await.expect("connect over TLS");
    writer.set("k", &1, []).await.unwrap();
    assert_eq!(read_locally(&reader, "k").await, 1);
    writer.clear("k").await.unwrap();
    wait_for("the local copy to go", WAIT, || async {
        reader
            .get::<i64>("k")
            .await
            .unwrap()
            .is_none()
            .then_some(())
    })
    .await;
    assert!(reader.local_stats().unwrap().invalidations >= 1);
}

#[tokio::test]
async fn the_local_tier_refuses_a_sentinel_url_at_build() {
    let Err(err) = Cache::builder("redis+sentinel://127.0.0.1:26379/mymaster")
        .local(1 << 20, 1000)
        .build_lazy()
        .await
    else {
        panic!("a Sentinel URL with the local tier must be refused");
    };
    assert!(err.to_string().contains("Sentinel"), "{err}");
}
