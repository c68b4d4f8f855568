//! Bad input gets a defined behaviour: NULLs, odd characters, non-integer
//! keys, huge values, hostile config, hand-written outbox rows and Redis
//! values that are not ours. See "Bad input" in the README.

use redis::AsyncCommands;
use smartcache::{Cache, Dep};
use smartcache_invalidator::config::{Config, ConfigError};
use smartcache_invalidator::schema;
use smartcache_tests::Env;

async fn setup(tag: &str, sql: &str, tables: &str) -> (Env, Config) {
    let mut env = Env::new(tag, sql).await;
    let config = env.config(tables);
    env.install(&config).await;
    (env, config)
}

/// The library, on this test's namespace.
async fn library(env: &Env) -> Cache {
    env.cache().await
}

/// Stores `key` through the library, registered under `dep`.
async fn cache_under(cache: &Cache, key: &str, dep: Dep) {
    let stored = cache
        .entry(key)
        .depends_on(dep)
        .set(&"cached")
        .await
        .unwrap();
    assert!(stored, "library stored {key}");
}

async fn dead_letters(env: &Env) -> Vec<String> {
    env.pg
        .query("SELECT error FROM smartcache.dead_letter ORDER BY id", &[])
        .await
        .unwrap()
        .iter()
        .map(|r| r.get(0))
        .collect()
}

const PRODUCTS: &str = "
    CREATE TABLE products (id bigint PRIMARY KEY, name text NOT NULL, category_id int);
    INSERT INTO products VALUES (1, 'a', NULL), (2, 'b', 5), (100, 'z', 9);
";

const PRODUCT_KEYS: &str = r#"
[[tables]]
name = "products"
keys = ["product_list", "product:{id}", "category:{category_id}"]
"#;

/// Keys a NULL could be mistaken for; none of them may be touched.
const NULL_LOOKALIKES: [&str; 3] = ["category:", "category:null", "category:NULL"];

#[tokio::test]
async fn insert_with_null_template_column_skips_that_template_only() {
    let (mut env, config) = setup("null_ins", PRODUCTS, PRODUCT_KEYS).await;
    let cache = library(&env).await;
    cache_under(&cache, "page:101", Dep::row("products", [101])).await;
    env.put(&["product:101", "product_list"]).await;
    env.put(&NULL_LOOKALIKES).await;
    let daemon = env.start_daemon(&config);
    env.pg
        .batch_execute("INSERT INTO products VALUES (101, 'n', NULL)")
        .await
        .unwrap();
    env.wait_gone(&["product:101", "product_list", "page:101"])
        .await;
    env.wait_drained().await;
    for k in NULL_LOOKALIKES {
        assert!(env.cached(k).await, "{k} survives a NULL");
    }
    assert!(dead_letters(&env).await.is_empty());
    daemon.stop().await;
}

#[tokio::test]
async fn update_from_null_invalidates_only_the_new_value_key() {
    let (mut env, config) = setup("null_from", PRODUCTS, PRODUCT_KEYS).await;
    env.put(&["product:1", "category:7"]).await;
    env.put(&NULL_LOOKALIKES).await;
    let daemon = env.start_daemon(&config);
    env.pg
        .batch_execute("UPDATE products SET category_id = 7 WHERE id = 1")
        .await
        .unwrap();
    env.wait_gone(&["product:1", "category:7"]).await;
    env.wait_drained().await;
    for k in NULL_LOOKALIKES {
        assert!(env.cached(k).await, "{k} survives a NULL");
    }
    daemon.stop().await;
}

#[tokio::test]
async fn update_to_null_invalidates_only_the_old_value_key() {
    let (mut env, config) = setup("null_to", PRODUCTS, PRODUCT_KEYS).await;
    env.put(&["product:2", "category:5"]).await;
    env.put(&NULL_LOOKALIKES).await;
    let daemon = env.start_daemon(&config);
    env.pg
        .batch_execute("UPDATE products SET category_id = NULL WHERE id = 2")
        .await
        .unwrap();
    env.wait_gone(&["product:2", "category:5"]).await;
    env.wait_drained().await;
    for k in NULL_LOOKALIKES {
        assert!(env.cached(k).await, "{k} survives a NULL");
    }
    daemon.stop().await;
}

/// Values with glob, separator, brace, space and non-ASCII characters, and
/// for each a key that only glob-matches the exact one.
const ODD_VALUES: [(&str, &str); 9] = [
    ("a:b", "a:b:c"),
    ("a*", "a-anything"),
    ("?x", "Zx"),
    ("[ab]", "a"),
    ("{x}", "x"),
    ("a b", "a  b"),
    ("caf\u{e9}", "cafe\u{301}"),
    ("\u{1f600} emoji", "\u{1f601} emoji"),
    ("back\\slash,comma%25", "backslash,comma%"),
];

fn insert_odd_values(table: &str) -> String {
    let mut sql = String::new();
    for (i, (v, _)) in ODD_VALUES.iter().enumerate() {
        let v = v.replace('\'', "''");
        sql.push_str(&format!("INSERT INTO {table} VALUES ('{v}', {i});\n"));
    }
    sql
}

#[tokio::test]
async fn odd_characters_in_a_template_column_delete_the_exact_key_only() {
    let sql = format!(
        "CREATE TABLE posts (slug text, id int PRIMARY KEY);\n{}",
        insert_odd_values("posts")
    );
    let (mut env, config) = setup(
        "odd_tpl",
        &sql,
        "[[tables]]\nname = \"posts\"\nkeys = [\"post:{slug}\"]\n",
    )
    .await;
    let exact: Vec<String> = ODD_VALUES
        .iter()
        .map(|(v, _)| format!("post:{v}"))
        .collect();
    let decoys: Vec<String> = ODD_VALUES
        .iter()
        .map(|(_, d)| format!("post:{d}"))
        .collect();
    let exact: Vec<&str> = exact.iter().map(String::as_str).collect();
    let decoys: Vec<&str> = decoys.iter().map(String::as_str).collect();
    env.put(&exact).await;
    env.put(&decoys).await;
    let daemon = env.start_daemon(&config);
    env.pg
        .batch_execute("UPDATE posts SET id = id + 100")
        .await
        .unwrap();
    env.wait_gone(&exact).await;
    env.wait_drained().await;
    let mut left = env.cached_keys().await;
    let mut want: Vec<String> = decoys.iter().map(|s| s.to_string()).collect();
    left.sort();
    want.sort();
    assert_eq!(left, want, "only the exact keys are deleted");
    daemon.stop().await;
}

#[tokio::test]
async fn odd_characters_in_a_primary_key_reach_templates_and_library_rows() {
    let sql = format!(
        "CREATE TABLE tags (name text PRIMARY KEY, n int);\n{}",
        insert_odd_values("tags")
    );
    let (mut env, config) = setup(
        "odd_pk",
        &sql,
        "[[tables]]\nname = \"tags\"\nkeys = [\"tag:{name}\"]\n",
    )
    .await;
    let cache = library(&env).await;
    let mut exact = Vec::new();
    let mut decoys = Vec::new();
    for (i, (v, d)) in ODD_VALUES.iter().enumerate() {
        exact.push(format!("tag:{v}"));
        decoys.push(format!("tag:{d}"));
        exact.push(format!("lib:{i}"));
        cache_under(&cache, &format!("lib:{i}"), Dep::row("tags", [*v])).await;
        decoys.push(format!("libdecoy:{i}"));
        cache_under(&cache, &format!("libdecoy:{i}"), Dep::row("tags", [*d])).await;
    }
    let exact: Vec<&str> = exact.iter().map(String::as_str).collect();
    let decoy_refs: Vec<&str> = decoys.iter().map(String::as_str).collect();
    let tag_decoys: Vec<&str> = decoy_refs
        .iter()
        .copied()
        .filter(|k| k.starts_with("tag:"))
        .collect();
    env.put(
        &exact
            .iter()
            .copied()
            .filter(|k| k.starts_with("tag:"))
            .collect::<Vec<_>>(),
    )
    .await;
    env.put(&tag_decoys).await;
    let daemon = env.start_daemon(&config);
    env.pg
        .batch_execute("UPDATE tags SET n = -n")
        .await
        .unwrap();
    env.wait_gone(&exact).await;
    env.wait_drained().await;
    decoys.sort();
    assert_eq!(
        env.cached_keys().await,
        decoys,
        "only the exact keys are deleted"
    );
    daemon.stop().await;
}

/// Starts the daemon, runs `change`, and waits for the library entry
/// registered under `dep` to be invalidated.
async fn library_entry_is_invalidated(env: &mut Env, config: &Config, dep: Dep, change: &str) {
    let cache = library(env).await;
    cache_under(&cache, "entry", dep).await;
    env.put(&["untouched"]).await;
    let daemon = env.start_daemon(config);
    env.pg.batch_execute(change).await.unwrap();
    env.wait_gone(&["entry"]).await;
    env.wait_drained().await;
    assert!(env.cached("untouched").await);
    daemon.stop().await;
}

#[tokio::test]
async fn numeric_key_is_matched_with_the_column_scale() {
    let (mut env, config) = setup(
        "numeric",
        "CREATE TABLE prices (p numeric(10,2) PRIMARY KEY, label text);
         INSERT INTO prices VALUES (1.5, 'x'), (2, 'y');",
        "[[tables]]\nname = \"prices\"\n",
    )
    .await;
    let cache = library(&env).await;
    // f64 1.5 displays as "1.5", but PostgreSQL renders 1.50 for numeric(10,2).
    cache_under(&cache, "as_f64", Dep::row("prices", [1.5_f64])).await;
    cache_under(&cache, "two", Dep::row("prices", ["2.00"])).await;
    library_entry_is_invalidated(
        &mut env,
        &config,
        Dep::row("prices", ["1.50"]),
        "UPDATE prices SET label = 'z' WHERE p = 1.5; UPDATE prices SET label = 'z' WHERE p = 2;",
    )
    .await;
    env.wait_gone(&["two"]).await;
    assert!(
        env.cached("as_f64").await,
        "1.5 is not 1.50: pass numerics as PostgreSQL prints them"
    );
}

#[tokio::test]
async fn uuid_key_is_matched_in_lower_case() {
    let (mut env, config) = setup(
        "uuid",
        "CREATE TABLE docs (id uuid PRIMARY KEY, body text);
         INSERT INTO docs VALUES ('550E8400-E29B-41D4-A716-446655440000', 'x');",
        "[[tables]]\nname = \"docs\"\n",
    )
    .await;
    library_entry_is_invalidated(
        &mut env,
        &config,
        Dep::row("docs", ["550e8400-e29b-41d4-a716-446655440000"]),
        "UPDATE docs SET body = 'y'",
    )
    .await;
}

#[tokio::test]
async fn timestamp_key_is_matched_in_iso_form_with_a_t() {
    let (mut env, config) = setup(
        "ts",
        "CREATE TABLE readings (at timestamp PRIMARY KEY, v int);
         INSERT INTO readings VALUES ('2024-05-01 10:00:00', 1), ('2024-05-01 10:00:00.25', 2);",
        "[[tables]]\nname = \"readings\"\n",
    )
    .await;
    let cache = library(&env).await;
    cache_under(
        &cache,
        "fraction",
        Dep::row("readings", ["2024-05-01T10:00:00.25"]),
    )
    .await;
    library_entry_is_invalidated(
        &mut env,
        &config,
        Dep::row("readings", ["2024-05-01T10:00:00"]),
        "UPDATE readings SET v = v + 1",
    )
    .await;
    env.wait_gone(&["fraction"]).await;
}

#[tokio::test]
async fn timestamptz_key_is_rendered_in_utc_whatever_the_writers_time_zone() {
    let (mut env, config) = setup(
        "tstz",
        "CREATE TABLE slots (at timestamptz PRIMARY KEY, v int);
         INSERT INTO slots VALUES ('2024-05-01 10:00:00+00', 1);",
        "[[tables]]\nname = \"slots\"\nkeys = [\"slot:{at}\"]\n",
    )
    .await;
    env.put(&["slot:2024-05-01T10:00:00+00:00"]).await;
    library_entry_is_invalidated(
        &mut env,
        &config,
        Dep::row("slots", ["2024-05-01T10:00:00+00:00"]),
        "SET TimeZone = 'Asia/Kolkata'; UPDATE slots SET v = 2; RESET TimeZone;",
    )
    .await;
    assert!(!env.cached("slot:2024-05-01T10:00:00+00:00").await);
}

#[tokio::test]
async fn composite_key_is_matched_value_by_value_in_key_order() {
    let (mut env, config) = setup(
        "composite",
        "CREATE TABLE lines (order_id bigint, line text, qty int, PRIMARY KEY (order_id, line));
         INSERT INTO lines VALUES (1001, 'a,b:c', 1), (1001, 'a', 1);",
        "[[tables]]\nname = \"lines\"\n",
    )
    .await;
    let cache = library(&env).await;
    cache_under(&cache, "other_line", Dep::row("lines", ["1001", "a"])).await;
    library_entry_is_invalidated(
        &mut env,
        &config,
        Dep::row("lines", ["1001", "a,b:c"]),
        "UPDATE lines SET qty = 2 WHERE line = 'a,b:c'",
    )
    .await;
    assert!(
        env.cached("other_line").await,
        "another row of the order survives"
    );
}

#[tokio::test]
async fn multi_megabyte_non_key_column_stays_out_of_the_outbox() {
    let (mut env, config) = setup(
        "wide",
        "CREATE TABLE pages (id int PRIMARY KEY, body text);
         INSERT INTO pages VALUES (1, '');",
        "[[tables]]\nname = \"pages\"\nkeys = [\"page:{id}\"]\n",
    )
    .await;
    env.put(&["page:1", "page:2"]).await;
    env.pg
        .batch_execute("UPDATE pages SET body = repeat('x', 8 * 1024 * 1024) WHERE id = 1")
        .await
        .unwrap();
    let size: i64 = env
        .pg
        .query_one(
            "SELECT sum(pg_column_size(smartcache.outbox.*))::bigint FROM smartcache.outbox",
            &[],
        )
        .await
        .unwrap()
        .get(0);
    assert!(size < 1024, "outbox row is {size} bytes");
    let daemon = env.start_daemon(&config);
    env.wait_gone(&["page:1"]).await;
    env.wait_drained().await;
    assert!(env.cached("page:2").await);
    daemon.stop().await;
}

#[tokio::test]
async fn multi_megabyte_template_value_makes_a_multi_megabyte_key_that_is_deleted() {
    let (mut env, config) = setup(
        "wide_key",
        "CREATE TABLE blobs (id int PRIMARY KEY, tag text, v int);
         INSERT INTO blobs VALUES (1, repeat('k', 4 * 1024 * 1024), 0);",
        "[[tables]]\nname = \"blobs\"\nkeys = [\"blob:{tag}\"]\n",
    )
    .await;
    let huge = format!("blob:{}", "k".repeat(4 * 1024 * 1024));
    let shorter = format!("blob:{}", "k".repeat(4 * 1024 * 1024 - 1));
    env.put(&[&huge, &shorter]).await;
    let daemon = env.start_daemon(&config);
    env.pg
        .batch_execute("UPDATE blobs SET v = 1")
        .await
        .unwrap();
    env.wait_gone(&[&huge]).await;
    env.wait_drained().await;
    assert!(env.cached(&shorter).await);
    // The daemon is still healthy: a later change is applied too.
    env.put(&[&huge]).await;
    env.pg
        .batch_execute("UPDATE blobs SET v = 2")
        .await
        .unwrap();
    env.wait_gone(&[&huge]).await;
    daemon.stop().await;
}

#[tokio::test]
async fn schema_qualified_mixed_case_table_works_for_templates_and_library() {
    let (mut env, config) = setup(
        "mixed_case",
        r#"CREATE SCHEMA "Shop";
           CREATE TABLE "Shop"."Products" ("Id" int PRIMARY KEY, "Name" text);
           INSERT INTO "Shop"."Products" VALUES (1, 'a'), (2, 'b');"#,
        "[[tables]]\nname = \"Shop.Products\"\nkeys = [\"p:{Id}:{Name}\"]\n",
    )
    .await;
    env.put(&["p:1:a", "p:1:b", "p:2:b"]).await;
    library_entry_is_invalidated(
        &mut env,
        &config,
        Dep::row("Shop.Products", [1]),
        r#"UPDATE "Shop"."Products" SET "Name" = 'b' WHERE "Id" = 1"#,
    )
    .await;
    assert!(!env.cached("p:1:a").await);
    assert!(!env.cached("p:1:b").await);
    assert!(env.cached("p:2:b").await);
}

#[tokio::test]
async fn sql_injection_through_a_template_column_is_an_unknown_column() {
    let env = Env::new(
        "inject_col",
        "CREATE TABLE t (id int PRIMARY KEY); INSERT INTO t VALUES (1);",
    )
    .await;
    let config = env.config(
        "[[tables]]\nname = \"t\"\nkeys = ['x:{id\"); DROP TABLE t; --}', \"y:{id')); DROP TABLE t; --}\"]\n",
    );
    let err = schema::install_plan(&env.pg, &config).await.unwrap_err();
    assert!(
        err.downcast_ref::<ConfigError>().is_some(),
        "a configuration error (exit status 2): {err:#}"
    );
    assert!(err.to_string().contains("does not have"), "{err:#}");
    let rows: i64 = env
        .pg
        .query_one("SELECT count(*) FROM t", &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(rows, 1, "table intact");
}

/// Inserts outbox rows by hand, then a real change; the real change must
/// be applied and the daemon must keep running.
async fn hand_inserted_then_real_change(env: &mut Env, config: &Config, rows_sql: &str) {
    env.put(&["product:100"]).await;
    env.pg.batch_execute(rows_sql).await.unwrap();
    env.pg
        .batch_execute("UPDATE products SET name = 'after' WHERE id = 100")
        .await
        .unwrap();
    let daemon = env.start_daemon(config);
    env.wait_gone(&["product:100"]).await;
    env.wait_drained().await;
    daemon.stop().await;
}

#[tokio::test]
async fn outbox_row_for_an_unconfigured_table_invalidates_its_library_dependencies() {
    let (mut env, config) = setup("unconfigured", PRODUCTS, PRODUCT_KEYS).await;
    let cache = library(&env).await;
    cache_under(&cache, "elsewhere", Dep::row("other.things", ["7"])).await;
    cache_under(&cache, "whole", Dep::table("other.things")).await;
    cache_under(&cache, "row8", Dep::row("other.things", ["8"])).await;
    hand_inserted_then_real_change(
        &mut env,
        &config,
        "INSERT INTO smartcache.outbox (table_schema, table_name, op, old_key, old_row) \
         VALUES ('other', 'things', 'D', ARRAY['7'], '{\"id\": \"7\"}')",
    )
    .await;
    assert!(!env.cached("elsewhere").await);
    assert!(!env.cached("whole").await);
    assert!(env.cached("row8").await);
    assert!(
        dead_letters(&env).await.is_empty(),
        "a valid row is no dead letter"
    );
}

#[tokio::test]
async fn outbox_row_whose_row_json_is_an_array_is_moved_aside() {
    let (mut env, config) = setup("array_row", PRODUCTS, PRODUCT_KEYS).await;
    hand_inserted_then_real_change(
        &mut env,
        &config,
        "INSERT INTO smartcache.outbox (table_schema, table_name, op, new_key, new_row) \
         VALUES ('public', 'products', 'I', ARRAY['1'], '[\"1\"]')",
    )
    .await;
    let dead = dead_letters(&env).await;
    assert_eq!(dead.len(), 1, "{dead:?}");
    assert!(dead[0].contains("not a JSON object"), "{dead:?}");
}

#[tokio::test]
async fn update_outbox_row_without_old_image_is_moved_aside() {
    let (mut env, config) = setup("no_old", PRODUCTS, PRODUCT_KEYS).await;
    hand_inserted_then_real_change(
        &mut env,
        &config,
        "INSERT INTO smartcache.outbox (table_schema, table_name, op, new_key, new_row) \
         VALUES ('public', 'products', 'U', ARRAY['1'], '{\"id\": \"1\"}');
         INSERT INTO smartcache.outbox (table_schema, table_name, op) \
         VALUES ('', 'products', 'T');",
    )
    .await;
    let dead = dead_letters(&env).await;
    assert_eq!(dead.len(), 2, "{dead:?}");
    assert!(dead[0].contains("without old"), "{dead:?}");
    assert!(dead[1].contains("empty table_schema"), "{dead:?}");
}

#[tokio::test]
async fn numbers_in_outbox_row_json_are_taken_as_their_text() {
    let (mut env, config) = setup("numbers", PRODUCTS, PRODUCT_KEYS).await;
    env.put(&["product:42", "category:3", "category:"]).await;
    hand_inserted_then_real_change(
        &mut env,
        &config,
        "INSERT INTO smartcache.outbox (table_schema, table_name, op, new_key, new_row) \
         VALUES ('public', 'products', 'I', ARRAY['42'], '{\"id\": 42, \"category_id\": 3}')",
    )
    .await;
    assert!(!env.cached("product:42").await);
    assert!(!env.cached("category:3").await);
    assert!(env.cached("category:").await);
    assert!(dead_letters(&env).await.is_empty());
}

#[tokio::test]
async fn foreign_values_under_our_keys_are_deleted_by_invalidation() {
    let (mut env, config) = setup("foreign", PRODUCTS, PRODUCT_KEYS).await;
    let hash = env.ns.value_key("product:1");
    let list = env.ns.value_key("category:5");
    let _: () = env.redis.hset(&hash, "f", "v").await.unwrap();
    let _: () = env.redis.rpush(&list, "v").await.unwrap();
    env.put(&["product:100"]).await;
    let daemon = env.start_daemon(&config);
    env.pg
        .batch_execute("UPDATE products SET name = 'c' WHERE id IN (1, 2)")
        .await
        .unwrap();
    env.wait_gone(&["product:1", "category:5"]).await;
    env.wait_drained().await;
    // The daemon is still applying changes.
    env.pg
        .batch_execute("UPDATE products SET name = 'd' WHERE id = 100")
        .await
        .unwrap();
    env.wait_gone(&["product:100"]).await;
    daemon.stop().await;
}

#[tokio::test]
async fn foreign_values_under_bookkeeping_keys_do_not_block_the_queue() {
    let (mut env, config) = setup("foreign_bk", PRODUCTS, PRODUCT_KEYS).await;
    let table = smartcache_core::keys::TableName::parse("products").unwrap();
    // Not a set or hash where the daemon expects one.
    let _: () = env
        .redis
        .set(env.ns.stamps_key("product:1"), "junk")
        .await
        .unwrap();
    let (bucket, _) = env.ns.dep_keys(&table.row_dep(&["1"])).bucket.unwrap();
    let _: () = env.redis.set(bucket, "junk").await.unwrap();
    let _: () = env
        .redis
        .set(env.ns.dep_set_key(&table.row_dep(&["2"])), "junk")
        .await
        .unwrap();
    env.put(&["product:1", "product:2", "product:100"]).await;
    let daemon = env.start_daemon(&config);
    env.pg
        .batch_execute(
            "UPDATE products SET name = 'c' WHERE id IN (1, 2); \
             UPDATE products SET name = 'd' WHERE id = 100;",
        )
        .await
        .unwrap();
    env.wait_gone(&["product:1", "product:2", "product:100"])
        .await;
    env.wait_drained().await;
    daemon.stop().await;
}

#[tokio::test]
async fn library_treats_a_non_string_value_as_a_miss() {
    let mut env = Env::new("foreign_read", "SELECT 1").await;
    let mut redis = env.redis.clone();
    let _: () = redis
        .hset(env.ns.value_key("product:1"), "f", "v")
        .await
        .unwrap();
    let cache = library(&env).await;
    let got: Option<String> = cache.get("product:1").await.unwrap();
    assert_eq!(got, None);
    let computed: String = cache
        .get_or_compute("product:1", [Dep::row("products", [1])], || async {
            Ok::<_, smartcache::Error>("fresh".to_owned())
        })
        .await
        .unwrap();
    assert_eq!(computed, "fresh");
    assert!(
        env.cached("product:1").await,
        "the foreign value is left alone"
    );
    // Caching of other keys is not disturbed (no circuit breaker trip).
    for i in 0..20 {
        let _: Option<String> = cache.get("product:1").await.unwrap();
        let v: String = cache
            .get_or_compute(&format!("ok:{i}"), [], || async {
                Ok::<_, smartcache::Error>("v".to_owned())
            })
            .await
            .unwrap();
        assert_eq!(v, "v");
    }
    let v: Option<String> = cache.get("ok:19").await.unwrap();
    assert_eq!(v.as_deref(), Some("v"), "other keys are still cached");
}
