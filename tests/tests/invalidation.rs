//! A committed change deletes exactly the affected keys; nothing else.

use redis::AsyncCommands;
use smartcache_core::keys::{DepId, TableName};
use smartcache_tests::Env;

const PRODUCTS: &str = "
    CREATE TABLE products (id bigint PRIMARY KEY, name text NOT NULL, category_id int);
    INSERT INTO products SELECT g, 'p' || g, g % 10 FROM generate_series(1, 100) g;
";

const TABLES: &str = r#"
[[tables]]
name = "products"
keys = ["product_list", "product:{id}", "category:{category_id}"]
"#;

async fn setup(tag: &str) -> (Env, smartcache_invalidator::config::Config) {
    let mut env = Env::new(tag, PRODUCTS).await;
    let config = env.config(TABLES);
    env.install(&config).await;
    (env, config)
}

/// Registers `key` under `dep` as another program following the documented
/// layout would (one command per key: they may live on different slots).
async fn register(env: &mut Env, key: &str, dep: &DepId) {
    let _: () = env.redis.sadd(env.ns.dep_set_key(dep), key).await.unwrap();
}

/// A change to another row, committed after `sql`; once its key is gone
/// the daemon has applied everything committed before it.
async fn barrier(env: &mut Env) {
    env.put(&["product:100"]).await;
    env.pg
        .batch_execute("UPDATE products SET name = name || '!' WHERE id = 100")
        .await
        .unwrap();
    env.wait_gone(&["product:100"]).await;
}

#[tokio::test]
async fn insert_invalidates_keys_of_the_new_row() {
    let (mut env, config) = setup("insert").await;
    env.put(&[
        "product:101",
        "product_list",
        "category:7",
        "category:8",
        "product:1",
    ])
    .await;
    let daemon = env.start_daemon(&config);
    env.pg
        .batch_execute("INSERT INTO products VALUES (101, 'new', 7)")
        .await
        .unwrap();
    env.wait_gone(&["product:101", "product_list", "category:7"])
        .await;
    assert!(env.cached("category:8").await);
    assert!(env.cached("product:1").await);
    daemon.stop().await;
}

#[tokio::test]
async fn update_invalidates_old_and_new_category() {
    let (mut env, config) = setup("update").await;
    // product 3 is in category 3
    env.put(&[
        "product:3",
        "category:3",
        "category:4",
        "category:5",
        "product:4",
    ])
    .await;
    let daemon = env.start_daemon(&config);
    env.pg
        .batch_execute("UPDATE products SET category_id = 4 WHERE id = 3")
        .await
        .unwrap();
    env.wait_gone(&["product:3", "category:3", "category:4"])
        .await;
    assert!(env.cached("category:5").await);
    assert!(env.cached("product:4").await);
    daemon.stop().await;
}

#[tokio::test]
async fn delete_invalidates_keys_of_the_old_row() {
    let (mut env, config) = setup("delete").await;
    env.put(&["product:5", "category:5", "product:6", "category:6"])
        .await;
    let daemon = env.start_daemon(&config);
    env.pg
        .batch_execute("DELETE FROM products WHERE id = 5")
        .await
        .unwrap();
    env.wait_gone(&["product:5", "category:5"]).await;
    assert!(env.cached("product:6").await);
    assert!(env.cached("category:6").await);
    daemon.stop().await;
}

#[tokio::test]
async fn truncate_invalidates_every_key_the_templates_can_produce() {
    let (mut env, config) = setup("truncate").await;
    env.put(&[
        "product:1",
        "product:999",
        "category:3",
        "product_list",
        "orders:1",
        "productlist",
    ])
    .await;
    let daemon = env.start_daemon(&config);
    env.pg.batch_execute("TRUNCATE products").await.unwrap();
    env.wait_gone(&["product:1", "product:999", "category:3", "product_list"])
        .await;
    env.wait_drained().await;
    assert_eq!(env.cached_keys().await, ["orders:1", "productlist"]);
    daemon.stop().await;
}

#[tokio::test]
async fn rolled_back_transaction_deletes_nothing() {
    let (mut env, config) = setup("rollback").await;
    env.put(&["product:7", "category:7"]).await;
    let daemon = env.start_daemon(&config);
    env.pg
        .batch_execute(
            "BEGIN; UPDATE products SET category_id = 1 WHERE id = 7; DELETE FROM products WHERE id = 7; ROLLBACK;",
        )
        .await
        .unwrap();
    barrier(&mut env).await;
    assert!(env.cached("product:7").await);
    assert!(env.cached("category:7").await);
    daemon.stop().await;
}

#[tokio::test]
async fn update_of_10000_rows_in_one_statement_clears_all_10000_keys() {
    let mut env = Env::new(
        "bulk",
        "CREATE TABLE items (id bigint PRIMARY KEY, v int);
         INSERT INTO items SELECT g, 0 FROM generate_series(1, 10000) g;",
    )
    .await;
    let config = env.config("[[tables]]\nname = \"items\"\nkeys = [\"item:{id}\"]\n");
    env.install(&config).await;
    let keys: Vec<String> = (1..=10_000).map(|i| format!("item:{i}")).collect();
    let key_refs: Vec<&str> = keys.iter().map(String::as_str).collect();
    env.put(&key_refs).await;
    env.put(&["unrelated"]).await;
    let daemon = env.start_daemon(&config);
    env.pg
        .batch_execute("UPDATE items SET v = 1")
        .await
        .unwrap();
    env.wait_drained().await;
    assert_eq!(env.cached_keys().await, ["unrelated"]);
    daemon.stop().await;
}

#[tokio::test]
async fn changes_made_while_the_daemon_is_stopped_are_applied_when_it_starts() {
    let (mut env, config) = setup("offline").await;
    let daemon = env.start_daemon(&config);
    daemon.stop().await;
    env.put(&[
        "product:8",
        "product:9",
        "category:8",
        "category:9",
        "product:10",
    ])
    .await;
    env.pg
        .batch_execute(
            "UPDATE products SET name = 'x' WHERE id = 8; DELETE FROM products WHERE id = 9;",
        )
        .await
        .unwrap();
    // Nothing listens: the change waits in the outbox.
    tokio::time::sleep(std::time::Duration::from_millis(300)).await;
    assert!(
        env.cached("product:8").await,
        "nothing runs, nothing is deleted"
    );
    let daemon = env.start_daemon(&config);
    env.wait_gone(&["product:8", "product:9", "category:8", "category:9"])
        .await;
    assert!(env.cached("product:10").await, "untouched keys survive");
    daemon.stop().await;
}

#[tokio::test]
async fn library_dependency_sets_are_invalidated_by_row_and_table() {
    let (mut env, config) = setup("deps").await;
    let table = TableName::parse("products").unwrap();
    env.put(&["page:a", "page:b", "summary", "page:c"]).await;
    // What the library registers for entries that depend on row 11, row 12
    // and the whole table.
    let regs = [
        ("page:a", table.row_dep(&["11"])),
        ("page:b", table.row_dep(&["12"])),
        ("summary", table.table_dep()),
    ];
    for (key, dep) in &regs {
        register(&mut env, key, dep).await;
    }
    let daemon = env.start_daemon(&config);
    env.pg
        .batch_execute("UPDATE products SET name = 'y' WHERE id = 11")
        .await
        .unwrap();
    env.wait_gone(&["page:a", "summary"]).await;
    env.wait_drained().await;
    assert!(
        env.cached("page:b").await,
        "another row's dependents survive"
    );
    assert!(env.cached("page:c").await);
    // Bookkeeping of the deleted entries is gone too.
    let ns = env.ns.clone();
    let leftover = smartcache_core::registry::registrants(&mut env.redis, &ns, &regs[0].1)
        .await
        .unwrap();
    assert!(leftover.is_empty(), "registration of page:a left behind");
    daemon.stop().await;
}

#[tokio::test]
async fn garbled_outbox_row_is_moved_aside_and_does_not_block_the_queue() {
    let (mut env, config) = setup("garbled").await;
    env.put(&["product:12"]).await;
    env.pg
        .batch_execute(
            "INSERT INTO smartcache.outbox (table_schema, table_name, op, new_row) \
             VALUES ('public', 'products', 'X', '[1,2]');
             UPDATE products SET name = 'z' WHERE id = 12;",
        )
        .await
        .unwrap();
    let daemon = env.start_daemon(&config);
    env.wait_gone(&["product:12"]).await;
    env.wait_drained().await;
    let row = env
        .pg
        .query_one(
            "SELECT event->>'op', error FROM smartcache.dead_letter",
            &[],
        )
        .await
        .unwrap();
    assert_eq!(row.get::<_, String>(0), "X");
    assert!(row.get::<_, String>(1).contains("unknown op"));
    daemon.stop().await;
}

#[tokio::test]
async fn quoted_table_and_column_names_work() {
    let mut env = Env::new(
        "quoted",
        r#"CREATE SCHEMA "My Shop";
           CREATE TABLE "My Shop"."Odd ""Name""" ("Id" int PRIMARY KEY, "key:part" text);
           INSERT INTO "My Shop"."Odd ""Name""" VALUES (1, 'a*b');"#,
    )
    .await;
    let config = env.config(
        "[[tables]]\nname = 'My Shop.Odd \"Name\"'\nkeys = [\"odd:{Id}\", \"part:{key:part}\"]\n",
    );
    env.install(&config).await;
    env.put(&["odd:1", "part:a*b", "part:ab"]).await;
    let daemon = env.start_daemon(&config);
    env.pg
        .batch_execute(r#"UPDATE "My Shop"."Odd ""Name""" SET "key:part" = 'c' WHERE "Id" = 1"#)
        .await
        .unwrap();
    env.wait_gone(&["odd:1", "part:a*b"]).await;
    assert!(
        env.cached("part:ab").await,
        "a glob character in a value is not a glob"
    );
    daemon.stop().await;
}

#[tokio::test]
async fn table_without_primary_key_invalidates_its_table_dependents() {
    let mut env = Env::new(
        "no_pk",
        "CREATE TABLE log (msg text); INSERT INTO log VALUES ('a');",
    )
    .await;
    let config = env.config("[[tables]]\nname = \"log\"\n");
    env.install(&config).await;
    let dep = TableName::parse("log").unwrap().table_dep();
    env.put(&["log_page", "other"]).await;
    register(&mut env, "log_page", &dep).await;
    let daemon = env.start_daemon(&config);
    env.pg
        .batch_execute("INSERT INTO log VALUES ('b'); UPDATE log SET msg = 'c'; DELETE FROM log;")
        .await
        .unwrap();
    env.wait_gone(&["log_page"]).await;
    env.wait_drained().await;
    assert!(env.cached("other").await);
    let dead: i64 = env
        .pg
        .query_one("SELECT count(*) FROM smartcache.dead_letter", &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(dead, 0, "events of a table without key are valid");
    daemon.stop().await;
}

/// Issue 11, item 6: a template-only fill (no dependency registered) that
/// read before a TRUNCATE and stores while the daemon's scans run. Its own
/// Redis and one template, so each `SCAN` is one page and the store lands
/// exactly between the template's two scans.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_template_fill_storing_between_the_truncate_scans_is_deleted() {
    use smartcache_core::conn::{Conn, Options};
    use smartcache_core::fill::{acquire, fill, new_token, Acquired};
    use std::sync::atomic::{AtomicBool, Ordering};
    use std::time::Duration;

    let redis = smartcache_tests::servers::Redis::start().await;
    let config = smartcache_invalidator::config::Config::from_toml(
        &format!(
            "database_url = \"postgres://127.0.0.1/unused\"\nredis_url = {:?}\n\
             namespace = \"t6\"\n[[tables]]\nname = \"products\"\nkeys = [\"product:{{id}}\"]\n",
            redis.url()
        ),
        std::path::Path::new("test.toml"),
        &smartcache_invalidator::config::Overrides::default(),
    )
    .unwrap();
    let ns = config.namespace.clone();
    let mut con = Conn::open(&redis.url(), &Options::default()).unwrap();
    // The fill takes its lease and reads the table; then the TRUNCATE commits.
    let token = new_token();
    let got = acquire(
        &mut con,
        &ns,
        "product:1",
        &token,
        Duration::from_secs(30),
        &[],
    )
    .await
    .unwrap();
    assert!(matches!(got, Acquired::Lease));

    let stored = AtomicBool::new(false);
    let handle = tokio::runtime::Handle::current();
    let store_once = || {
        if !stored.swap(true, Ordering::SeqCst) {
            let mut con = con.clone();
            let ok = tokio::task::block_in_place(|| {
                handle.block_on(fill(
                    &mut con,
                    &ns,
                    "product:1",
                    &token,
                    b"before",
                    None,
                    &[],
                ))
            })
            .unwrap();
            assert!(ok, "the fill's lease still held when it stored");
        }
    };
    let products = TableName::parse("products").unwrap();
    let (keys, deps) = smartcache_invalidator::mapping::truncation_targets(
        &mut con.clone(),
        &config,
        &products,
        &store_once,
    )
    .await
    .unwrap();
    assert!(stored.load(Ordering::SeqCst));
    smartcache_core::invalidate::invalidate(&mut con, &ns, &keys, &deps)
        .await
        .unwrap();
    let left: Option<Vec<u8>> = con.get(ns.value_key("product:1")).await.unwrap();
    assert_eq!(
        left, None,
        "the value read before the TRUNCATE survived it (targets: {keys:?})"
    );
}
