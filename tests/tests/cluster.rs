//! The library, the daemon and the CLI on a real 3-master Redis Cluster,
//! started by each test on free ports and stopped by PID.

use std::process::Command;
use std::time::Duration;

use redis::AsyncCommands;
use smartcache::{Cache, CacheStatus, Dep};
use smartcache_core::keys::{slot, TableName};
use smartcache_core::markers::Markers;
use smartcache_tests::servers::{daemon_binary, RedisCluster};
use smartcache_tests::Env;

const SETUP: &str = "
    CREATE TABLE products (id bigint PRIMARY KEY, price int NOT NULL, category_id int);
    INSERT INTO products SELECT g, 100, g % 10 FROM generate_series(1, 300) g;
";

const TABLES: &str = r#"
[[tables]]
name = "products"
keys = ["product_list", "product:{id}", "category:{category_id}"]
"#;

async fn setup(cluster: &RedisCluster, tag: &str) -> (Env, Cache) {
    let seeds = cluster.urls().join(",");
    let env = Env::on_redis(tag, SETUP, &seeds, true).await;
    let cache = Cache::builder(&seeds)
        .namespace(env.ns.name())
        .cluster(true)
        .build()
        .await
        .expect("connect to the cluster");
    (env, cache)
}

async fn price(env: &Env, id: i64) -> i32 {
    env.pg
        .query_one("SELECT price FROM products WHERE id = $1", &[&id])
        .await
        .unwrap()
        .get(0)
}

/// Fills `price:{id}` for `ids` from the database, registered under the row.
async fn fill(env: &Env, cache: &Cache, ids: impl IntoIterator<Item = i64>) -> Vec<i32> {
    let mut out = Vec::new();
    for id in ids {
        let p: i32 = cache
            .get_or_compute(
                &format!("price:{id}"),
                [Dep::row("products", [id])],
                || async { Ok::<_, smartcache::Error>(price(env, id).await) },
            )
            .await
            .unwrap();
        out.push(p);
    }
    out
}

/// Waits until no `price:{id}` of `ids` is cached.
async fn wait_prices_gone(env: &mut Env, ids: impl IntoIterator<Item = i64>) {
    let keys: Vec<String> = ids.into_iter().map(|id| format!("price:{id}")).collect();
    let keys: Vec<&str> = keys.iter().map(String::as_str).collect();
    env.wait_gone(&keys).await;
}

/// How many keys each node holds.
async fn keys_per_node(cluster: &RedisCluster) -> Vec<u64> {
    let mut out = Vec::new();
    for url in cluster.urls() {
        let mut con = redis::Client::open(url)
            .unwrap()
            .get_multiplexed_async_connection()
            .await
            .unwrap();
        out.push(redis::cmd("DBSIZE").query_async(&mut con).await.unwrap());
    }
    out
}

#[tokio::test]
async fn commits_invalidate_entries_spread_over_every_node() {
    let cluster = RedisCluster::start().await;
    let (mut env, cache) = setup(&cluster, "cl_commits").await;
    let config = env.config(TABLES);
    env.install(&config).await;
    let daemon = env.start_daemon(&config);

    assert_eq!(fill(&env, &cache, 1..=60).await, vec![100; 60]);
    let total: i64 = cache
        .get_or_compute("total", [Dep::table("products")], || async {
            let row = env
                .pg
                .query_one("SELECT sum(price)::bigint FROM products", &[])
                .await
                .unwrap();
            Ok::<_, smartcache::Error>(row.get::<_, i64>(0))
        })
        .await
        .unwrap();
    assert_eq!(total, 30_000);
    let spread = keys_per_node(&cluster).await;
    assert!(spread.iter().all(|&n| n > 0), "keys per node: {spread:?}");

    // Row dependencies: exactly the changed rows' entries go.
    env.pg
        .batch_execute("UPDATE products SET price = 200 WHERE id <= 10")
        .await
        .unwrap();
    wait_prices_gone(&mut env, 1..=10).await;
    env.wait_gone(&["total"]).await;
    for id in 11..=60 {
        assert!(env.cached(&format!("price:{id}")).await, "price:{id}");
    }
    assert_eq!(fill(&env, &cache, 1..=3).await, vec![200; 3]);

    // Key templates, on keys of other slots.
    env.put(&["product:7", "category:7", "category:8", "product_list"])
        .await;
    env.pg
        .batch_execute("UPDATE products SET price = 300 WHERE id = 7")
        .await
        .unwrap();
    env.wait_gone(&["product:7", "category:7", "product_list", "price:7"])
        .await;
    assert!(env.cached("category:8").await);

    // TRUNCATE finds template keys and row registrations on every node.
    env.put(&["product:250", "category:3"]).await;
    env.pg.batch_execute("TRUNCATE products").await.unwrap();
    env.wait_gone(&["product:250", "category:3", "category:8", "price:60"])
        .await;
    assert!(cache.keys("*").await.unwrap().is_empty());
    daemon.stop().await;
}

#[tokio::test]
async fn a_fill_that_read_before_an_invalidation_is_refused() {
    let cluster = RedisCluster::start().await;
    let (mut env, cache) = setup(&cluster, "cl_race").await;
    let (read_tx, read_rx) = tokio::sync::oneshot::channel::<()>();
    let (go_tx, go_rx) = tokio::sync::oneshot::channel::<()>();
    let filler = cache.clone();
    let task = tokio::spawn(async move {
        filler
            .entry("price:5")
            .depends_on(Dep::row("products", [5]))
            .fetch(|| async move {
                read_tx.send(()).unwrap();
                go_rx.await.unwrap();
                Ok::<_, smartcache::Error>(100)
            })
            .await
            .unwrap()
    });
    read_rx.await.unwrap();
    // The lease and the registration live on different slots.
    let dep = TableName::parse("products").unwrap().row_dep(&["5"]);
    let ns = env.ns.clone();
    assert_ne!(slot(&ns.lease_key("price:5")), slot(&ns.dep_set_key(&dep)));
    let n = smartcache_core::invalidate::invalidate(&mut env.redis, &ns, &[], &[dep])
        .await
        .unwrap();
    assert_eq!(n, 0, "nothing was cached yet");
    go_tx.send(()).unwrap();
    let fetched = task.await.unwrap();
    assert_eq!(fetched.status, CacheStatus::Uncached);
    assert!(!env.cached("price:5").await);
    // The next fill caches, and its registration holds.
    assert_eq!(fill(&env, &cache, [5]).await, [100]);
    assert!(env.cached("price:5").await);
}

#[tokio::test]
async fn listing_clearing_and_sweeping_span_the_cluster() {
    let cluster = RedisCluster::start().await;
    let (mut env, cache) = setup(&cluster, "cl_admin").await;
    fill(&env, &cache, 1..=40).await;
    let listed = cache.keys("price:*").await.unwrap();
    assert_eq!(listed.len(), 40);
    assert_eq!(listed[0].deps, ["r:public.products:1"]);

    // Entries that expire leave registrations; the sweeper removes them.
    for id in 41..=50 {
        cache
            .entry(format!("price:{id}"))
            .depends_on(Dep::row("products", [id]))
            .ttl(Duration::from_millis(50))
            .set(&1)
            .await
            .unwrap();
    }
    tokio::time::sleep(Duration::from_millis(120)).await;
    let removed = smartcache_core::sweep::sweep(&mut env.redis, &env.ns)
        .await
        .unwrap();
    assert_eq!(removed, 10);
    let registered = smartcache_core::registry::dependencies(&mut env.redis, &env.ns)
        .await
        .unwrap();
    assert_eq!(registered.len(), 40, "{registered:?}");
    assert!(!registered.contains_key("price:41"));

    assert!(cache.clear("price:1").await.unwrap());
    assert_eq!(cache.clear_table("products").await.unwrap(), 39);
    fill(&env, &cache, 1..=5).await;
    assert_eq!(cache.clear_all().await.unwrap(), 5);
    assert!(env
        .redis
        .scan_all(&env.ns.match_all())
        .await
        .unwrap()
        .is_empty());

    // Keys with braces would split an entry over slots: the library refuses
    // them; one written by another program is listed and invalidated.
    let err = cache.set("user:{1}", &1, []).await.unwrap_err();
    assert!(err.to_string().contains("brace"), "{err}");
    let _: () = env
        .redis
        .set(env.ns.value_key("user:{1}"), "x")
        .await
        .unwrap();
    let listed = cache.keys("user:*").await.unwrap();
    assert_eq!(listed.len(), 1);
    assert!(listed[0].size_bytes > 0 && listed[0].deps.is_empty());
    assert_eq!(cache.get::<String>("user:{1}").await.unwrap(), None);
    assert!(cache.clear("user:{1}").await.unwrap());
    let _: () = env
        .redis
        .set(env.ns.value_key("user:{1}"), "x")
        .await
        .unwrap();
    let n =
        smartcache_core::invalidate::invalidate(&mut env.redis, &env.ns, &["user:{1}".into()], &[])
            .await
            .unwrap();
    assert_eq!(n, 1);
}

/// The CLI with `file` as its only source of settings: the environment of
/// `scripts/test.sh` (DATABASE_URL, REDIS_URL) would override the file.
fn cli_command(file: &std::path::Path) -> Command {
    let mut cmd = Command::new(daemon_binary());
    for var in [
        "DATABASE_URL",
        "REDIS_URL",
        "SMARTCACHE_NAMESPACE",
        "SMARTCACHE_REDIS_CLUSTER",
    ] {
        cmd.env_remove(var);
    }
    cmd.arg("--config").arg(file);
    cmd
}

#[tokio::test]
async fn the_cli_speaks_to_the_cluster_and_spots_a_missing_cluster_flag() {
    let cluster = RedisCluster::start().await;
    let (mut env, cache) = setup(&cluster, "cl_cli").await;
    let config = env.config(TABLES);
    env.install(&config).await;
    fill(&env, &cache, 1..=20).await;
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("smartcache.toml");
    std::fs::write(
        &file,
        format!(
            "database_url = {:?}\nnamespace = {:?}\n{TABLES}",
            env.db.url,
            env.ns.name()
        ),
    )
    .unwrap();
    let seeds = cluster.urls().join(",");
    let cli = |args: &[&str]| {
        let out = cli_command(&file)
            .args(["--redis-url", &seeds])
            .args(args)
            .output()
            .unwrap();
        let text = format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        (out.status.code(), text)
    };
    let (code, out) = cli(&["--redis-cluster", "check"]);
    assert_eq!(code, Some(0), "{out}");
    assert!(out.contains("connected to the cluster"), "{out}");
    let (code, out) = cli(&["--redis-cluster", "keys", "price:1*"]);
    assert_eq!(code, Some(0), "{out}");
    assert_eq!(out.matches("price:1").count(), 11, "{out}");
    let (code, out) = cli(&["--redis-cluster", "clear", "--all"]);
    assert_eq!(code, Some(0), "{out}");
    assert!(cache.keys("*").await.unwrap().is_empty());

    // One seed without the flag: `check` names the fix.
    let single = cluster.seed_url();
    let out = cli_command(&file)
        .args(["--redis-url", &single, "check"])
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert_eq!(out.status.code(), Some(1), "{text}");
    assert!(text.contains("set redis_cluster = true"), "{text}");
}

#[tokio::test]
async fn a_primary_that_restarts_empty_costs_the_cache_not_freshness() {
    let mut cluster = RedisCluster::start().await;
    let (mut env, cache) = setup(&cluster, "cl_loss").await;
    let config = env.config(TABLES);
    env.install(&config).await;
    let daemon = env.start_daemon(&config);
    let ns = env.ns.clone();
    let start = std::time::Instant::now();
    while smartcache_core::markers::check_markers(&mut env.redis, &ns)
        .await
        .unwrap()
        != Markers::Intact
    {
        assert!(
            start.elapsed() < Duration::from_secs(10),
            "markers never set"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(fill(&env, &cache, 1..=60).await, vec![100; 60]);

    // The first primary loses its keys, dependency sets among them; values
    // on the other primaries survive. Then every row changes.
    cluster.restart_empty(0).await;
    env.pg
        .batch_execute("UPDATE products SET price = 200 WHERE id <= 60")
        .await
        .unwrap();
    wait_prices_gone(&mut env, 1..=60).await;
    assert_eq!(fill(&env, &cache, 1..=60).await, vec![200; 60]);
    daemon.stop().await;
}

#[tokio::test]
async fn a_primary_restarted_from_an_older_snapshot_brings_no_invalidated_value_back() {
    let mut cluster = RedisCluster::start().await;
    let (mut env, cache) = setup(&cluster, "cl_travel").await;
    let config = env.config(TABLES);
    env.install(&config).await;
    let daemon = env.start_daemon(&config);
    assert_eq!(fill(&env, &cache, 1..=60).await, vec![100; 60]);
    // A batch records the generations before the snapshot.
    env.pg
        .batch_execute("UPDATE products SET price = 100 WHERE id = 61")
        .await
        .unwrap();
    tokio::time::sleep(Duration::from_millis(500)).await;
    cluster.save(0).await;
    env.pg
        .batch_execute("UPDATE products SET price = 200 WHERE id <= 60")
        .await
        .unwrap();
    wait_prices_gone(&mut env, 1..=60).await;
    tokio::time::sleep(Duration::from_millis(1500)).await;
    // The first primary comes back with the values it held before.
    cluster.restart_empty(0).await;
    wait_prices_gone(&mut env, 1..=60).await;
    assert_eq!(fill(&env, &cache, 1..=60).await, vec![200; 60]);
    daemon.stop().await;
}
