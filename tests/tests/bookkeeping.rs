//! Bookkeeping stays proportional to the live entries: registrations of
//! entries whose value expired (or was evicted) are swept away, not kept
//! until the row happens to change.

use redis::AsyncCommands;
use smartcache::{Cache, Dep};
use smartcache_core::keys::{Bookkeeping, TableName};
use smartcache_tests::{Env, PATIENCE};
use std::time::{Duration, Instant};

const SETUP: &str = "CREATE TABLE items (id int PRIMARY KEY, v int);
                     INSERT INTO items SELECT g, 0 FROM generate_series(1, 1000) g;";

async fn cache(env: &Env) -> Cache {
    env.cache().await
}

async fn is_member(env: &mut Env, id: i32, key: &str) -> bool {
    let dep = TableName::parse("items")
        .unwrap()
        .row_dep(&[id.to_string()]);
    let ns = env.ns.clone();
    smartcache_core::registry::registrants(&mut env.redis, &ns, &dep)
        .await
        .unwrap()
        .iter()
        .any(|k| k == key)
}

#[tokio::test]
async fn expired_entries_are_swept_from_dependency_sets() {
    let mut env = Env::new("sweep_expired", SETUP).await;
    let config = env.config("sweep_interval_ms = 100\n[[tables]]\nname = \"items\"\n");
    env.install(&config).await;
    let cache = cache(&env).await;
    cache
        .entry("short")
        .depends_on(Dep::row("items", [1]))
        .ttl(Duration::from_millis(200))
        .set(&1)
        .await
        .unwrap();
    cache
        .entry("long")
        .depends_on(Dep::row("items", [1]))
        .set(&2)
        .await
        .unwrap();
    assert!(is_member(&mut env, 1, "short").await);
    let daemon = env.start_daemon(&config);
    let start = Instant::now();
    while is_member(&mut env, 1, "short").await {
        assert!(start.elapsed() < PATIENCE, "expired entry still registered");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(
        is_member(&mut env, 1, "long").await,
        "a live entry stays registered"
    );
    let stamp_left: bool = env
        .redis
        .hexists(env.ns.stamps_key("short"), "short")
        .await
        .unwrap();
    assert!(!stamp_left);
    // And the live entry is still invalidated by its row.
    env.pg
        .batch_execute("UPDATE items SET v = 1 WHERE id = 1")
        .await
        .unwrap();
    env.wait_gone(&["long"]).await;
    daemon.stop().await;
}

#[tokio::test]
async fn a_fill_in_flight_is_not_swept() {
    let mut env = Env::new("sweep_lease", SETUP).await;
    let dep = TableName::parse("items").unwrap().row_dep(&["2"]);
    // What the library's acquire step leaves while the fill computes: a
    // lease and the registrations, no value yet.
    let _: () = env
        .redis
        .set(env.ns.lease_key("filling"), "token")
        .await
        .unwrap();
    let ns = env.ns.clone();
    smartcache_core::registry::register(&mut env.redis, &ns, "filling", &[dep])
        .await
        .unwrap();
    smartcache_core::sweep::sweep(&mut env.redis, &ns)
        .await
        .unwrap();
    assert!(
        is_member(&mut env, 2, "filling").await,
        "swept a fill in flight"
    );
    let _: () = env.redis.del(env.ns.lease_key("filling")).await.unwrap();
    let removed = smartcache_core::sweep::sweep(&mut env.redis, &ns)
        .await
        .unwrap();
    assert_eq!(removed, 1);
    assert!(!is_member(&mut env, 2, "filling").await);
}

#[tokio::test]
async fn after_many_entries_expire_nothing_of_them_is_left() {
    let mut env = Env::new("sweep_bounded", SETUP).await;
    let cache = cache(&env).await;
    for id in 1..=500 {
        cache
            .entry(format!("page:{id}"))
            .depends_on(Dep::row("items", [id]))
            .depends_on(Dep::table("items"))
            .ttl(Duration::from_millis(100))
            .set(&id)
            .await
            .unwrap();
    }
    tokio::time::sleep(Duration::from_millis(300)).await;
    let ns = env.ns.clone();
    let removed = smartcache_core::sweep::sweep(&mut env.redis, &ns)
        .await
        .unwrap();
    assert!(removed >= 500, "removed {removed}");
    let left = env.redis.scan_all(&env.ns.match_all()).await.unwrap();
    assert!(
        left.is_empty(),
        "bookkeeping left behind: {:?}",
        &left[..left.len().min(10)]
    );
}

#[tokio::test]
async fn entries_of_the_per_entry_layout_are_invalidated_and_folded_in_by_the_daemon() {
    let mut env = Env::new("upgrade_layout", SETUP).await;
    let config = env.config("[[tables]]\nname = \"items\"\n");
    env.install(&config).await;
    let items = TableName::parse("items").unwrap();
    let regs = [
        ("page:1", items.row_dep(&["1"])),
        ("page:2", items.row_dep(&["2"])),
        ("list", items.table_dep()),
    ];
    // What the library wrote before the compact layout, by raw commands
    // (one per key: on a cluster they live on different slots).
    for (key, dep) in &regs {
        let ns = env.ns.clone();
        let _: () = env.redis.set(ns.value_key(key), "old").await.unwrap();
        let _: () = env
            .redis
            .set(ns.legacy_born_key(key), "1700000000000")
            .await
            .unwrap();
        let _: () = env
            .redis
            .sadd(ns.legacy_deps_key(key), dep.as_str())
            .await
            .unwrap();
        let _: () = env.redis.sadd(ns.dep_set_key(dep), key).await.unwrap();
    }
    let daemon = env.start_daemon(&config);
    let start = Instant::now();
    let legacy = |env: &Env| {
        let (mut con, ns) = (env.redis.clone(), env.ns.clone());
        async move {
            let all = con.scan_all(&ns.match_bookkeeping()).await.unwrap();
            all.iter()
                .filter(|k| {
                    matches!(
                        ns.bookkeeping(k),
                        Some(Bookkeeping::LegacyBorn(_) | Bookkeeping::LegacyDeps(_))
                    )
                })
                .count()
        }
    };
    while legacy(&env).await > 0 {
        assert!(start.elapsed() < PATIENCE, "old per-entry keys left");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let born: Option<String> = env
        .redis
        .hget(env.ns.stamps_key("page:2"), "page:2")
        .await
        .unwrap();
    assert_eq!(born.as_deref(), Some("1700000000000"), "birth time kept");
    // A change to row 1 invalidates the old entry of row 1 and of the table.
    env.pg
        .batch_execute("UPDATE items SET v = 1 WHERE id = 1")
        .await
        .unwrap();
    env.wait_gone(&["page:1", "list"]).await;
    assert!(env.cached("page:2").await, "another row's entry survives");
    daemon.stop().await;
}
