//! Installing smartcache never harms the database: writes never fail,
//! whatever the writer's role, a migration or the daemon's state, and
//! capture that is switched off is reported.

use smartcache::Dep;
use smartcache_invalidator::config::{Config, Overrides};
use smartcache_invalidator::pg::chain;
use smartcache_tests::db::{self, with_user};
use smartcache_tests::{free_port, http_get, sample, Daemon, Env, PATIENCE};
use std::path::Path;
use std::time::{Duration, Instant};

const PRODUCTS: &str = "
    CREATE TABLE products (id int PRIMARY KEY, name text NOT NULL, category_id int);
    INSERT INTO products SELECT g, 'p' || g, g % 10 FROM generate_series(1, 100) g;
";

const TABLES: &str = r#"
[[tables]]
name = "products"
keys = ["product:{id}", "category:{category_id}"]
"#;

/// A login role unique to this test, dropped (with what it owns) at the end.
struct Role {
    name: String,
}

impl Role {
    async fn create(env: &Env, tag: &str, grants: &str) -> Self {
        let name = format!("r_{}", db::unique_name(tag));
        let admin = db::connect(&db::admin_url()).await;
        admin
            .batch_execute(&format!("CREATE ROLE \"{name}\" LOGIN"))
            .await
            .unwrap();
        let sql = grants.replace("{role}", &format!("\"{name}\""));
        env.pg.batch_execute(&sql).await.unwrap();
        Self { name }
    }

    fn url(&self, env: &Env) -> String {
        with_user(&env.db.url, &self.name)
    }
}

impl Drop for Role {
    fn drop(&mut self) {
        let name = self.name.clone();
        db::block_on_side(async move {
            if let Ok((c, conn)) =
                tokio_postgres::connect(&db::admin_url(), tokio_postgres::NoTls).await
            {
                tokio::spawn(conn);
                // The test database (and the role's grants in it) may still
                // exist: retry until it is dropped by its own guard.
                for _ in 0..50 {
                    if c.batch_execute(&format!("DROP ROLE IF EXISTS \"{name}\""))
                        .await
                        .is_ok()
                    {
                        return;
                    }
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
            }
        });
    }
}

fn config(env: &Env, settings: &str, tables: &str) -> Config {
    let poll = if settings.contains("poll_interval_ms") {
        ""
    } else {
        "poll_interval_ms = 100\n"
    };
    let text = format!(
        "database_url = {:?}\nredis_url = {:?}\nredis_cluster = {}\nnamespace = {:?}\n{poll}{settings}\n{tables}",
        env.db.url,
        env.redis_url,
        env.redis_cluster,
        env.ns.name()
    );
    Config::from_toml(&text, Path::new("test.toml"), &Overrides::default()).expect("valid config")
}

async fn healthz(addr: &str) -> (u16, String) {
    match http_get(addr, "/healthz").await {
        Ok(r) => (r.status, r.body),
        Err(e) => (0, e.to_string()),
    }
}

/// Waits until `/healthz` answers with `status` and a body containing
/// every one of `needles`; returns the body.
async fn wait_health(addr: &str, status: u16, needles: &[&str]) -> String {
    let start = Instant::now();
    loop {
        let (s, body) = healthz(addr).await;
        if s == status && needles.iter().all(|n| body.contains(n)) {
            return body;
        }
        assert!(
            start.elapsed() < PATIENCE,
            "/healthz did not become {status} with {needles:?}: {s} {body}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// `smartcache-invalidator check` as a process: (exit status, output).
fn check(config: &Config) -> (i32, String) {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("smartcache.toml");
    let tables: String = config
        .tables
        .iter()
        .map(|t| {
            let keys: Vec<String> = t
                .keys
                .iter()
                .map(|k| format!("{:?}", k.to_string()))
                .collect();
            format!(
                "[[tables]]\nname = {:?}\nkeys = [{}]\n",
                t.name.to_string(),
                keys.join(", ")
            )
        })
        .collect();
    let settings = format!("doorbell_payload = {}\n", config.doorbell_payload);
    std::fs::write(&path, settings + &tables).unwrap();
    let out = std::process::Command::new(smartcache_tests::servers::daemon_binary())
        .arg("--config")
        .arg(&path)
        .args(["--database-url", config.database_url.expose()])
        .args(["--redis-url", &config.redis_url])
        .args(["--namespace", config.namespace.name()])
        .arg("check")
        .env_remove("REDIS_URL")
        .env_remove("DATABASE_URL")
        .output()
        .expect("run check");
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    (out.status.code().unwrap_or(-1), text)
}

/// Installs [`TABLES`], starts the daemon, caches `product:1`,
/// `category:1` and `product:2`, and connects as `app`.
async fn install_and_connect(env: &mut Env, app: &Role) -> (Daemon, tokio_postgres::Client) {
    let config = env.config(TABLES);
    env.install(&config).await;
    let daemon = env.start_daemon(&config);
    env.put(&["product:1", "category:1", "product:2"]).await;
    let as_app = db::connect(&app.url(env)).await;
    (daemon, as_app)
}

#[tokio::test]
async fn an_application_role_keeps_writing_after_install_and_cannot_touch_the_outbox() {
    let mut env = Env::new("approle", PRODUCTS).await;
    let app = Role::create(&env, "app", "GRANT ALL ON products TO {role}").await;
    let (daemon, as_app) = install_and_connect(&mut env, &app).await;
    as_app
        .batch_execute("UPDATE products SET name = 'x' WHERE id = 1")
        .await
        .expect("the application role writes a watched table");
    as_app
        .batch_execute(
            "INSERT INTO products VALUES (500, 'n', 3); DELETE FROM products WHERE id = 500",
        )
        .await
        .expect("insert and delete too");
    env.wait_gone(&["product:1", "category:1"]).await;
    assert!(env.cached("product:2").await);
    for sql in [
        "SELECT count(*) FROM smartcache.outbox",
        "DELETE FROM smartcache.outbox",
        "INSERT INTO smartcache.outbox (table_schema, table_name, op) VALUES ('public', 'products', 'T')",
        "SELECT setval('smartcache.doorbell', 0)",
    ] {
        let e = as_app
            .batch_execute(sql)
            .await
            .expect_err("smartcache's objects are not the application's");
        assert_eq!(
            e.code(),
            Some(&tokio_postgres::error::SqlState::INSUFFICIENT_PRIVILEGE),
            "{sql}: {e:?}"
        );
    }
    daemon.stop().await;
}

/// Capture runs with the installer's rights but, to spare every write a
/// GUC save and restore, under the writer's `search_path`: a writer that
/// puts its own schema first must not get its functions or operators run.
#[tokio::test]
async fn a_writers_search_path_cannot_make_capture_run_its_code() {
    let mut env = Env::new("hostilepath", PRODUCTS).await;
    let db_name = env.db.url.rsplit('/').next().unwrap().to_owned();
    let app = Role::create(
        &env,
        "evil",
        &format!(
            "GRANT ALL ON products TO {{role}}; GRANT CREATE ON DATABASE \"{db_name}\" TO {{role}}"
        ),
    )
    .await;
    let (daemon, as_app) = install_and_connect(&mut env, &app).await;
    // Each trap fails the statement that calls it, naming the role it ran as.
    as_app
        .batch_execute(
            "CREATE SCHEMA evil;
             CREATE FUNCTION evil.trap() RETURNS bool LANGUAGE plpgsql AS
                 $$BEGIN RAISE EXCEPTION 'hijacked, running as %', current_user; END$$;
             CREATE FUNCTION evil.texteq(text, text) RETURNS bool LANGUAGE sql AS 'SELECT evil.trap()';
             CREATE OPERATOR evil.= (LEFTARG = text, RIGHTARG = text, FUNCTION = evil.texteq);
             CREATE FUNCTION evil.jsonb_build_array(int, int) RETURNS jsonb LANGUAGE sql
                 AS 'SELECT evil.trap()::text::jsonb';
             CREATE FUNCTION evil.clock_timestamp() RETURNS timestamptz LANGUAGE sql
                 AS 'SELECT evil.trap()::text::timestamptz';
             CREATE FUNCTION evil.pg_notify(text, text) RETURNS void LANGUAGE sql AS 'SELECT evil.trap()';
             SET search_path = evil, pg_catalog, public;",
        )
        .await
        .unwrap();
    let armed = as_app
        .batch_execute("SELECT 'a'::text = 'a'::text")
        .await
        .expect_err("the trap is armed for unqualified names");
    assert!(chain(&armed).contains("hijacked"), "{armed:?}");
    for sql in [
        "UPDATE products SET name = 'x' WHERE id = 1",
        "INSERT INTO products VALUES (500, 'n', 3)",
        "DELETE FROM products WHERE id = 500",
    ] {
        as_app
            .batch_execute(sql)
            .await
            .unwrap_or_else(|e| panic!("{sql} under a hostile search_path: {}", chain(&e)));
    }
    env.wait_gone(&["product:1", "category:1"]).await;
    assert!(env.cached("product:2").await);
    daemon.stop().await;
}

#[tokio::test]
async fn the_daemon_runs_as_a_least_privilege_role() {
    let mut env = Env::new("daemonrole", PRODUCTS).await;
    let role = Role::create(&env, "daemon", "").await;
    let settings = format!(
        "daemon_role = {:?}\ncanary_interval_ms = 200\nmetrics_addr = \"127.0.0.1:{}\"",
        role.name,
        free_port()
    );
    let installer = config(&env, &settings, TABLES);
    env.install(&installer).await;
    let mut daemon_config = installer.clone();
    daemon_config.database_url = role.url(&env).into();
    let addr = daemon_config.metrics_addr.unwrap().to_string();
    let daemon = env.start_daemon(&daemon_config);
    env.put(&["product:3", "category:3"]).await;
    env.pg
        .batch_execute("UPDATE products SET name = 'y' WHERE id = 3")
        .await
        .unwrap();
    env.wait_gone(&["product:3", "category:3"]).await;
    // The canary beats through its own table as that role.
    let start = Instant::now();
    loop {
        let m = http_get(&addr, "/metrics")
            .await
            .map(|r| r.body)
            .unwrap_or_default();
        if m.contains("smartcache_canary_beats_total 1")
            || m.contains("smartcache_canary_beats_total 2")
        {
            break;
        }
        assert!(
            start.elapsed() < PATIENCE,
            "no canary beat as the daemon role:\n{m}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    wait_health(&addr, 200, &["ok"]).await;
    // It cannot change the user's tables.
    let as_daemon = db::connect(&role.url(&env)).await;
    let e = as_daemon
        .batch_execute("UPDATE products SET name = 'z'")
        .await
        .expect_err("the daemon role has no business with products");
    assert_eq!(
        e.code(),
        Some(&tokio_postgres::error::SqlState::INSUFFICIENT_PRIVILEGE)
    );
    daemon.stop().await;
}

#[tokio::test]
async fn renaming_a_template_column_never_fails_writes_and_invalidates_what_the_template_can_produce(
) {
    let mut env = Env::new("rename_col", PRODUCTS).await;
    let addr = format!("127.0.0.1:{}", free_port());
    let config = config(&env, &format!("metrics_addr = {addr:?}"), TABLES);
    env.install(&config).await;
    let app = Role::create(&env, "app", "GRANT ALL ON products TO {role}").await;
    let daemon = env.start_daemon(&config);
    wait_health(&addr, 200, &["ok"]).await;
    env.put(&[
        "product:1",
        "product:2",
        "category:1",
        "category:2",
        "category:9",
    ])
    .await;
    env.pg
        .batch_execute("ALTER TABLE products RENAME COLUMN category_id TO cat_id")
        .await
        .unwrap();
    let as_app = db::connect(&app.url(&env)).await;
    as_app
        .batch_execute("UPDATE products SET name = 'renamed' WHERE id = 1")
        .await
        .expect("a write after the rename succeeds");
    // The template can no longer be rendered: every key it can produce goes.
    env.wait_gone(&["product:1", "category:1", "category:2", "category:9"])
        .await;
    assert!(
        env.cached("product:2").await,
        "the key template still renders exactly"
    );
    let body = wait_health(&addr, 503, &["products", "category_id"]).await;
    assert!(body.contains("install"), "{body}");
    let metrics = http_get(&addr, "/metrics").await.unwrap().body;
    assert!(
        metrics.contains("smartcache_capture_problems 1"),
        "{metrics}"
    );
    let (status, out) = check(&config);
    assert_ne!(status, 0, "{out}");
    assert!(out.contains("category_id"), "{out}");
    assert!(!out.contains("trigger drift"), "{out}");
    daemon.stop().await;
}

#[tokio::test]
async fn dropping_and_retyping_columns_never_fail_writes() {
    let mut env = Env::new("retype", PRODUCTS).await;
    let config = env.config(TABLES);
    env.install(&config).await;
    let daemon = env.start_daemon(&config);
    env.put(&["product:4", "category:4", "category:5"]).await;
    env.pg
        .batch_execute(
            "BEGIN;
             ALTER TABLE products DROP COLUMN category_id;
             UPDATE products SET name = 'dropped' WHERE id = 4;
             COMMIT;",
        )
        .await
        .expect("a write in the same transaction as the drop succeeds");
    env.wait_gone(&["product:4", "category:4", "category:5"])
        .await;
    env.put(&["product:6"]).await;
    env.pg
        .batch_execute(
            "ALTER TABLE products ALTER COLUMN id TYPE numeric(10,2);
             UPDATE products SET name = 'numeric' WHERE id = 6;
             ALTER TABLE products ADD COLUMN extra text;
             INSERT INTO products (id, name, extra) VALUES (700, 'x', 'y');",
        )
        .await
        .expect("writes after retyping the primary key succeed");
    // The key now renders as 6.00: the old key cannot be produced any more,
    // so the template's keys go wholesale.
    env.wait_gone(&["product:6"]).await;
    let (status, out) = check(&config);
    assert_ne!(status, 0, "{out}");
    assert!(out.contains("id") && out.contains("numeric"), "{out}");
    daemon.stop().await;
}

const PRODUCTS_AND_TAGS: &str = r#"
[[tables]]
name = "products"
keys = ["product:{id}", "category:{category_id}"]

[[tables]]
name = "tags"
keys = ["tag:{id}"]
"#;

/// Capture checks its columns once per session and again after a schema
/// change: a session that wrote before a migration must see it at once,
/// or its next write fails (a renamed column) or renders keys nobody
/// caches (a retyped one) and leaves stale values.
#[tokio::test]
async fn a_session_that_wrote_before_a_migration_sees_it_at_its_next_write() {
    let mut env = Env::new(
        "session_ddl",
        &format!(
            "{PRODUCTS}
             CREATE TABLE tags (id int PRIMARY KEY, label text);
             INSERT INTO tags SELECT g, 't' || g FROM generate_series(1, 10) g;"
        ),
    )
    .await;
    let config = env.config(PRODUCTS_AND_TAGS);
    env.install(&config).await;
    let app = Role::create(&env, "app", "GRANT ALL ON products, tags TO {role}").await;
    let daemon = env.start_daemon(&config);
    let as_app = db::connect(&app.url(&env)).await;
    env.put(&["product:1", "tag:1"]).await;
    as_app
        .batch_execute(
            "UPDATE products SET name = 'a' WHERE id = 1; UPDATE tags SET label = 'a' WHERE id = 1",
        )
        .await
        .unwrap();
    env.wait_gone(&["product:1", "tag:1"]).await;
    env.put(&["product:2", "product:3", "category:3", "tag:2", "tag:3"])
        .await;
    env.pg
        .batch_execute(
            "ALTER TABLE products RENAME COLUMN category_id TO cat_id;
             ALTER TABLE tags ALTER COLUMN id TYPE numeric(10,2);",
        )
        .await
        .unwrap();
    as_app
        .batch_execute("UPDATE products SET name = 'b' WHERE id = 2")
        .await
        .expect("the same session writes after a rename");
    as_app
        .batch_execute("UPDATE tags SET label = 'b' WHERE id = 2")
        .await
        .unwrap();
    // category:{category_id} cannot be rendered and tag:2 would render as
    // tag:2.00: every key those templates can produce goes.
    env.wait_gone(&["product:2", "category:3", "tag:2", "tag:3"])
        .await;
    assert!(
        env.cached("product:3").await,
        "product:{{id}} still renders exactly"
    );
    let (status, out) = check(&config);
    assert_ne!(status, 0, "{out}");
    assert!(
        out.contains("category_id") && out.contains("numeric"),
        "{out}"
    );
    daemon.stop().await;
}

/// Without the event triggers that count schema changes, a once-per-session
/// check would miss a migration: `check` says so, and `install` repairs it.
#[tokio::test]
async fn the_schema_change_counter_switched_off_is_reported_and_install_repairs_it() {
    let mut env = Env::new("ddl_watch", PRODUCTS).await;
    let config = env.config(TABLES);
    env.install(&config).await;
    let (status, out) = check(&config);
    assert_eq!(status, 0, "{out}");
    for sql in [
        "ALTER EVENT TRIGGER smartcache_ddl DISABLE",
        "DROP EVENT TRIGGER smartcache_ddl_drop",
    ] {
        env.pg.batch_execute(sql).await.unwrap();
        let (status, out) = check(&config);
        assert_ne!(status, 0, "{sql}: {out}");
        assert!(out.contains("smartcache_ddl"), "{sql}: {out}");
        env.install(&config).await;
        let (status, out) = check(&config);
        assert_eq!(status, 0, "after install: {out}");
    }
    let n: i64 = env
        .pg
        .query_one(
            "SELECT count(*) FROM pg_event_trigger WHERE evtenabled = 'A'",
            &[],
        )
        .await
        .unwrap()
        .get(0);
    assert_eq!(n, 2);
}

/// PostgreSQL lets only superusers create event triggers. Installed by a
/// table owner that is not one, capture checks its columns on every
/// statement, so a session that wrote before a migration still writes.
#[tokio::test]
async fn installed_without_superuser_capture_checks_every_statement() {
    let mut env = Env::new("owner_install", PRODUCTS).await;
    let owner = Role::create(
        &env,
        "owner",
        &format!(
            "ALTER TABLE products OWNER TO {{role}}; GRANT CREATE ON DATABASE \"{}\" TO {{role}}",
            env.db.name
        ),
    )
    .await;
    let mut config = env.config(TABLES);
    config.database_url = owner.url(&env).into();
    let mut as_owner = db::connect(&owner.url(&env)).await;
    smartcache_tests::install_with(&mut as_owner, &config).await;
    let n: i64 = env
        .pg
        .query_one("SELECT count(*) FROM pg_event_trigger", &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(n, 0, "a non-superuser cannot create event triggers");
    let (status, out) = check(&config);
    assert_eq!(status, 0, "{out}");
    let daemon = env.start_daemon(&config);
    as_owner
        .batch_execute("UPDATE products SET name = 'a' WHERE id = 1")
        .await
        .unwrap();
    env.put(&["product:2", "category:2"]).await;
    as_owner
        .batch_execute(
            "ALTER TABLE products RENAME COLUMN category_id TO cat_id;
             UPDATE products SET name = 'b' WHERE id = 2;",
        )
        .await
        .expect("the same session writes after its own rename");
    env.wait_gone(&["product:2", "category:2"]).await;
    daemon.stop().await;
}

#[tokio::test]
async fn renaming_the_watched_table_keeps_capturing_under_the_configured_name() {
    let mut env = Env::new("rename_table", PRODUCTS).await;
    let addr = format!("127.0.0.1:{}", free_port());
    let config = config(&env, &format!("metrics_addr = {addr:?}"), TABLES);
    env.install(&config).await;
    let daemon = env.start_daemon(&config);
    env.put(&["product:7", "category:7"]).await;
    env.pg
        .batch_execute(
            "ALTER TABLE products RENAME TO products_old;
             UPDATE products_old SET name = 'moved' WHERE id = 7;",
        )
        .await
        .unwrap();
    env.wait_gone(&["product:7", "category:7"]).await;
    wait_health(&addr, 503, &["products"]).await;
    let (status, out) = check(&config);
    assert_ne!(status, 0, "{out}");
    daemon.stop().await;
}

#[tokio::test]
async fn a_watched_table_dropped_while_the_daemon_runs_is_reported_and_the_rest_goes_on() {
    let setup = format!(
        "{PRODUCTS} CREATE TABLE other (id int PRIMARY KEY); INSERT INTO other VALUES (1);"
    );
    let mut env = Env::new("drop_table", &setup).await;
    let addr = format!("127.0.0.1:{}", free_port());
    let tables = format!("{TABLES}\n[[tables]]\nname = \"other\"\nkeys = [\"other:{{id}}\"]\n");
    let config = config(&env, &format!("metrics_addr = {addr:?}"), &tables);
    env.install(&config).await;
    let daemon = env.start_daemon(&config);
    env.pg.batch_execute("DROP TABLE products").await.unwrap();
    wait_health(&addr, 503, &["products"]).await;
    env.put(&["other:1"]).await;
    env.pg
        .batch_execute("UPDATE other SET id = 1 WHERE id = 1")
        .await
        .unwrap();
    env.wait_gone(&["other:1"]).await;
    daemon.stop().await;
}

#[tokio::test]
async fn disabled_capture_and_the_replica_role_are_reported() {
    let mut env = Env::new("disabled", PRODUCTS).await;
    let addr = format!("127.0.0.1:{}", free_port());
    let config = config(&env, &format!("metrics_addr = {addr:?}"), TABLES);
    env.install(&config).await;
    assert_eq!(check(&config).0, 0, "{}", check(&config).1);
    let daemon = env.start_daemon(&config);
    wait_health(&addr, 200, &["ok"]).await;
    env.pg
        .batch_execute("ALTER TABLE products DISABLE TRIGGER USER")
        .await
        .unwrap();
    wait_health(&addr, 503, &["products", "disabled"]).await;
    let (status, out) = check(&config);
    assert_ne!(status, 0, "{out}");
    assert!(out.contains("disabled"), "{out}");
    env.pg
        .batch_execute(&format!(
            "ALTER TABLE products ENABLE TRIGGER USER;
             ALTER DATABASE \"{}\" SET session_replication_role = replica;",
            env.db.name
        ))
        .await
        .unwrap();
    let (status, out) = check(&config);
    assert_ne!(status, 0, "{out}");
    assert!(out.contains("session_replication_role"), "{out}");
    daemon.stop().await;
}

#[tokio::test]
async fn capture_in_replica_mode_fires_for_replica_role_sessions() {
    let mut env = Env::new("replica_mode", PRODUCTS).await;
    let config = config(&env, "capture_in_replica_mode = true", TABLES);
    env.install(&config).await;
    let daemon = env.start_daemon(&config);
    env.put(&["product:8"]).await;
    env.pg
        .batch_execute(
            "SET session_replication_role = replica;
             UPDATE products SET name = 'applied' WHERE id = 8;
             RESET session_replication_role;",
        )
        .await
        .unwrap();
    env.wait_gone(&["product:8"]).await;
    daemon.stop().await;
}

/// Stores `key` through the library, registered under `dep`.
async fn cached_under(cache: &smartcache::Cache, key: &str, dep: Dep) {
    let stored = cache
        .entry(key)
        .depends_on(dep)
        .set(&"cached")
        .await
        .unwrap();
    assert!(stored, "library stored {key}");
}

const MEASUREMENTS: &str = "
    CREATE TABLE readings (id int, region text, v int, PRIMARY KEY (region, id)) PARTITION BY LIST (region);
    CREATE TABLE readings_eu PARTITION OF readings FOR VALUES IN ('eu');
    INSERT INTO readings VALUES (1, 'eu', 0), (2, 'eu', 0);
";

#[tokio::test]
async fn a_partitioned_parent_captures_every_current_and_future_partition() {
    let mut env = Env::new("partitioned", MEASUREMENTS).await;
    let tables = "[[tables]]\nname = \"readings\"\nkeys = [\"reading:{region}:{id}\"]\n";
    let config = config(&env, "", tables);
    env.install(&config).await;
    let daemon = env.start_daemon(&config);
    let cache = env.cache().await;
    cached_under(&cache, "all_readings", Dep::table("readings")).await;
    env.put(&["reading:eu:1", "reading:us:5"]).await;
    // Written through the partition, not the parent.
    env.pg
        .batch_execute("UPDATE readings_eu SET v = 1 WHERE id = 1")
        .await
        .unwrap();
    env.wait_gone(&["reading:eu:1", "all_readings"]).await;
    // A partition created after install.
    env.pg
        .batch_execute(
            "CREATE TABLE readings_us PARTITION OF readings FOR VALUES IN ('us');
             INSERT INTO readings VALUES (5, 'us', 0);",
        )
        .await
        .unwrap();
    env.wait_gone(&["reading:us:5"]).await;
    cached_under(&cache, "reading_us_5", Dep::row("readings", ["us", "5"])).await;
    env.pg
        .batch_execute("UPDATE readings_us SET v = 2 WHERE id = 5")
        .await
        .unwrap();
    env.wait_gone(&["reading_us_5"]).await;
    daemon.stop().await;
}

#[tokio::test]
async fn a_partition_attached_with_rows_invalidates_the_parents_keys() {
    let mut env = Env::new("attach", MEASUREMENTS).await;
    let tables = "[[tables]]\nname = \"readings\"\nkeys = [\"readings_list\"]\n";
    let config = config(&env, "", tables);
    env.install(&config).await;
    let daemon = env.start_daemon(&config);
    env.put(&["readings_list"]).await;
    env.pg
        .batch_execute(
            "CREATE TABLE readings_asia (id int, region text, v int, PRIMARY KEY (region, id));
             INSERT INTO readings_asia VALUES (9, 'asia', 0);
             ALTER TABLE readings ATTACH PARTITION readings_asia FOR VALUES IN ('asia');",
        )
        .await
        .unwrap();
    env.wait_gone(&["readings_list"]).await;
    daemon.stop().await;
}

/// Notifications on the doorbell channel seen by a separate listener
/// while `load` runs.
async fn notifications_during<F: std::future::Future<Output = ()>>(env: &Env, load: F) -> usize {
    payloads_during(env, load).await.len()
}

/// The payloads of [`notifications_during`].
async fn payloads_during<F: std::future::Future<Output = ()>>(env: &Env, load: F) -> Vec<String> {
    use futures_util::StreamExt;
    let (client, mut conn) = tokio_postgres::connect(&env.db.url, tokio_postgres::NoTls)
        .await
        .unwrap();
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
    let stream = futures_util::stream::poll_fn(move |cx| conn.poll_message(cx));
    let driver = tokio::spawn(async move {
        let mut stream = std::pin::pin!(stream);
        while let Some(Ok(m)) = stream.next().await {
            if let tokio_postgres::AsyncMessage::Notification(n) = m {
                let _ = tx.send(n.payload().to_owned());
            }
        }
    });
    client.batch_execute("LISTEN smartcache").await.unwrap();
    load.await;
    tokio::time::sleep(Duration::from_millis(200)).await;
    drop(client);
    let _ = driver.await;
    let mut payloads = Vec::new();
    while let Ok(p) = rx.try_recv() {
        payloads.push(p);
    }
    payloads
}

async fn single_row_writes(env: &Env, n: i32) {
    for i in 0..n {
        env.pg
            .batch_execute(&format!(
                "UPDATE products SET name = name WHERE id = {}",
                i % 100 + 1
            ))
            .await
            .unwrap();
    }
}

#[tokio::test]
async fn nobody_rings_the_doorbell_while_no_daemon_runs() {
    let mut env = Env::new("no_daemon", PRODUCTS).await;
    let config = env.config(TABLES);
    env.install(&config).await;
    let rung = notifications_during(&env, single_row_writes(&env, 50)).await;
    assert_eq!(rung, 0, "writers rang a doorbell nobody listens to");
    // A daemon that ran and was killed without a clean stop (its task
    // aborted: the connection drops, nothing runs on the way out).
    let daemon = env.start_daemon(&config);
    env.put(&["product:1"]).await;
    env.pg
        .batch_execute("UPDATE products SET name = 'a' WHERE id = 1")
        .await
        .unwrap();
    env.wait_gone(&["product:1"]).await;
    drop(daemon);
    tokio::time::sleep(Duration::from_secs(6)).await;
    let rung = notifications_during(&env, single_row_writes(&env, 50)).await;
    assert_eq!(rung, 0, "writers still ring after the daemon was killed");
}

#[tokio::test]
async fn writers_under_sustained_load_almost_never_ring() {
    let mut env = Env::new("load_ring", PRODUCTS).await;
    let config = env.config(TABLES);
    env.install(&config).await;
    let daemon = env.start_daemon(&config);
    // Warm up: the daemon sees the load before we count.
    single_row_writes(&env, 200).await;
    let writers = async {
        let mut tasks = Vec::new();
        for w in 0..4 {
            let url = env.db.url.clone();
            tasks.push(tokio::spawn(async move {
                let c = db::connect(&url).await;
                for i in 0..500 {
                    c.batch_execute(&format!(
                        "UPDATE products SET name = name WHERE id = {}",
                        (w * 500 + i) % 100 + 1
                    ))
                    .await
                    .unwrap();
                    // A steady rate the daemon keeps up with: it empties
                    // the outbox between commits.
                    tokio::time::sleep(Duration::from_millis(2)).await;
                }
            }));
        }
        for t in tasks {
            t.await.unwrap();
        }
    };
    let rung = notifications_during(&env, writers).await;
    assert!(
        rung <= 20,
        "{rung} of 2000 writing transactions rang the doorbell under load"
    );
    daemon.stop().await;
}

#[tokio::test]
async fn a_single_commit_after_a_daemon_restart_is_delivered_by_the_doorbell() {
    let mut env = Env::new("restart_ring", PRODUCTS).await;
    // A poll this slow would show: only the doorbell can be fast.
    let config = config(&env, "poll_interval_ms = 20000", TABLES);
    env.install(&config).await;
    for round in 0..2 {
        let daemon = env.start_daemon(&config);
        // A burst, then rest.
        single_row_writes(&env, 100).await;
        tokio::time::sleep(Duration::from_millis(1500)).await;
        for id in [11, 12, 13] {
            env.put(&[&format!("product:{id}")]).await;
            let start = Instant::now();
            env.pg
                .batch_execute(&format!("UPDATE products SET name = 'r' WHERE id = {id}"))
                .await
                .unwrap();
            env.wait_gone(&[&format!("product:{id}")]).await;
            assert!(
                start.elapsed() < Duration::from_secs(5),
                "round {round}: a single commit at rest waited for the poll ({:?})",
                start.elapsed()
            );
            tokio::time::sleep(Duration::from_millis(300)).await;
        }
        if round == 0 {
            daemon.stop().await;
        } else {
            drop(daemon);
        }
    }
}

#[tokio::test]
async fn one_statement_over_many_rows_is_one_outbox_row() {
    let mut env = Env::new("bulk_row", PRODUCTS).await;
    let config = env.config(TABLES);
    env.install(&config).await;
    env.pg
        .batch_execute("UPDATE products SET name = name || '!'")
        .await
        .unwrap();
    let n: i64 = env
        .pg
        .query_one("SELECT count(*) FROM smartcache.outbox", &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(n, 1, "one statement, one outbox row");
    env.put(&["product:1", "product:100", "category:0", "category:9"])
        .await;
    let daemon = env.start_daemon(&config);
    env.wait_gone(&["product:1", "product:100", "category:0", "category:9"])
        .await;
    daemon.stop().await;
}

/// The value of counter `name` on the daemon's `/metrics`, 0 while absent.
async fn counter(addr: &str, name: &str) -> f64 {
    let body = http_get(addr, "/metrics")
        .await
        .map(|r| r.body)
        .unwrap_or_default();
    sample(&body, name).unwrap_or(0.0)
}

#[tokio::test]
async fn a_commit_at_rest_is_applied_from_the_doorbell_before_its_claim() {
    let mut env = Env::new("bell_payload", PRODUCTS).await;
    let addr = format!("127.0.0.1:{}", free_port());
    // No poll to race the doorbell to the rows.
    let settings =
        format!("metrics_addr = {addr:?}\npoll_interval_ms = 20000\ndoorbell_payload = true");
    let config = config(&env, &settings, TABLES);
    env.install(&config).await;
    let daemon = env.start_daemon(&config);
    wait_health(&addr, 200, &[]).await;
    tokio::time::sleep(Duration::from_millis(1000)).await;
    const EARLY: &str = "smartcache_doorbell_events_total";
    for id in [21, 22, 23, 24] {
        env.put(&[&format!("product:{id}"), "category:1"]).await;
        let before = counter(&addr, EARLY).await;
        env.pg
            .batch_execute(&format!(
                "UPDATE products SET category_id = 1 WHERE id = {id}"
            ))
            .await
            .unwrap();
        env.wait_gone(&[&format!("product:{id}"), "category:1"])
            .await;
        // The daemon applied it from the notification itself.
        let start = Instant::now();
        while counter(&addr, EARLY).await <= before {
            assert!(
                start.elapsed() < PATIENCE,
                "commit {id} was not applied from the doorbell"
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        tokio::time::sleep(Duration::from_millis(400)).await;
    }
    env.wait_drained().await;
    daemon.stop().await;
}

#[tokio::test]
async fn a_statement_too_big_for_a_notification_and_junk_on_the_channel_change_nothing() {
    let mut env = Env::new("bell_junk", PRODUCTS).await;
    let config = config(&env, "doorbell_payload = true", TABLES);
    env.install(&config).await;
    let daemon = env.start_daemon(&config);
    tokio::time::sleep(Duration::from_millis(1000)).await;
    // Anyone may NOTIFY the channel: junk is ignored, nothing is deleted.
    env.put(&["product:1"]).await;
    env.pg
        .batch_execute(
            "NOTIFY smartcache, 'not json'; NOTIFY smartcache, '{\"id\": 1}'; \
             NOTIFY smartcache, '{\"id\": 1, \"table_schema\": \"public\", \"table_name\": \"products\", \"op\": \"X\"}'",
        )
        .await
        .unwrap();
    // 2,001 rows: the captured keys alone are far over a notification's
    // 8,000 bytes; the write succeeds and the outbox carries it.
    env.put(&["product:1500", "product:3000"]).await;
    env.pg
        .batch_execute(
            "INSERT INTO products SELECT g, 'n', g % 10 FROM generate_series(1000, 3000) g",
        )
        .await
        .unwrap();
    env.wait_gone(&["product:1500", "product:3000"]).await;
    assert!(
        env.cached("product:1").await,
        "junk on the channel deleted a key"
    );
    // And a single commit at rest still goes through.
    tokio::time::sleep(Duration::from_millis(1000)).await;
    env.pg
        .batch_execute("UPDATE products SET name = 'j' WHERE id = 1")
        .await
        .unwrap();
    env.wait_gone(&["product:1"]).await;
    daemon.stop().await;
}

#[tokio::test]
async fn by_default_the_doorbell_carries_no_row_data() {
    let mut env = Env::new("bell_quiet", PRODUCTS).await;
    // Any role may LISTEN: by default it learns that something changed,
    // never what.
    for (settings, carries) in [("", false), ("doorbell_payload = true", true)] {
        let config = config(&env, settings, TABLES);
        if carries {
            let (code, text) = check(&config);
            assert!(
                code != 0 && text.contains("installed with doorbell_payload = false"),
                "check did not name the setting the install lacks: {code} {text}"
            );
        }
        env.install(&config).await;
        let daemon = env.start_daemon(&config);
        tokio::time::sleep(Duration::from_millis(1000)).await;
        let payloads = payloads_during(&env, async {
            env.pg
                .batch_execute("UPDATE products SET category_id = 7 WHERE id = 31")
                .await
                .unwrap();
        })
        .await;
        assert!(
            !payloads.is_empty(),
            "{settings:?}: the doorbell did not ring at rest"
        );
        let with_rows = payloads.iter().filter(|p| p.contains("products")).count();
        assert_eq!(
            with_rows > 0,
            carries,
            "{settings:?}: payloads {payloads:?}"
        );
        daemon.stop().await;
    }
}
