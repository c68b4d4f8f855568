//! The command line against a real database: install, uninstall, check,
//! and the refusal of bad configuration with exit status 2.

#[path = "../../tests/src/db.rs"]
#[allow(dead_code, unreachable_pub)]
mod db;

#[path = "../../tests/src/ca.rs"]
#[allow(dead_code, unreachable_pub)]
mod ca;

use db::TestDb;
use std::io::Write;
use std::process::Output;

const BIN: &str = env!("CARGO_BIN_EXE_smartcache-invalidator");

fn redis_url() -> String {
    std::env::var("SMARTCACHE_TEST_REDIS_URL")
        .unwrap_or_else(|_| "redis://127.0.0.1:6379/0".to_owned())
}

struct Case {
    db: TestDb,
    dir: tempfile::TempDir,
}

impl Case {
    async fn new(tag: &str, setup: &str) -> Self {
        let db = TestDb::create(tag).await;
        db.connect().await.batch_execute(setup).await.unwrap();
        Self {
            db,
            dir: tempfile::tempdir().unwrap(),
        }
    }

    /// Writes a config with this database and `rest` appended (line 4 on).
    fn config(&self, rest: &str) -> std::path::PathBuf {
        let path = self.dir.path().join("smartcache.toml");
        let mut f = std::fs::File::create(&path).unwrap();
        write!(
            f,
            "database_url = {:?}\nredis_url = {:?}\nnamespace = {:?}\n{rest}",
            self.db.url,
            redis_url(),
            self.db.name
        )
        .unwrap();
        path
    }

    fn run(&self, config: &std::path::Path, args: &[&str]) -> Output {
        std::process::Command::new(BIN)
            .arg("--config")
            .arg(config)
            .args(args)
            .env_remove("DATABASE_URL")
            .env_remove("REDIS_URL")
            .env_remove("SMARTCACHE_NAMESPACE")
            .env_remove("SMARTCACHE_REDIS_CLUSTER")
            .output()
            .unwrap()
    }

    /// Our objects in the database: triggers, functions, the schema.
    async fn footprint(&self) -> Vec<String> {
        let c = self.db.connect().await;
        let rows = c
            .query(
                "SELECT 'trigger ' || tgname || ' ' || tgrelid::regclass || ' ' || encode(tgargs, 'escape') \
                   FROM pg_trigger WHERE tgname LIKE 'smartcache%' \
                 UNION ALL SELECT 'function ' || p.oid::regprocedure FROM pg_proc p \
                   JOIN pg_namespace n ON n.oid = p.pronamespace WHERE n.nspname = 'smartcache' \
                 UNION ALL SELECT 'schema ' || nspname FROM pg_namespace WHERE nspname = 'smartcache' \
                 ORDER BY 1",
                &[],
            )
            .await
            .unwrap();
        rows.iter().map(|r| r.get(0)).collect()
    }
}

fn text(o: &Output) -> String {
    format!(
        "status {:?}\nstdout:\n{}\nstderr:\n{}",
        o.status.code(),
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    )
}

const SETUP: &str = "CREATE TABLE products (id int PRIMARY KEY, category_id int, name text);
                     CREATE TABLE orders (id int PRIMARY KEY, product_id int);";

#[tokio::test]
async fn install_twice_is_a_no_op() {
    let case = Case::new("install_twice", SETUP).await;
    let cfg = case.config(
        "[[tables]]\nname = \"products\"\nkeys = [\"product:{id}\", \"category:{category_id}\"]\n",
    );
    let first = case.run(&cfg, &["install"]);
    assert_eq!(first.status.code(), Some(0), "{}", text(&first));
    let after_first = case.footprint().await;
    assert!(after_first
        .iter()
        .any(|l| l.starts_with("trigger smartcache_capture_update products")));
    let second = case.run(&cfg, &["install"]);
    assert_eq!(second.status.code(), Some(0), "{}", text(&second));
    assert!(
        text(&second).contains("nothing to change"),
        "{}",
        text(&second)
    );
    assert_eq!(case.footprint().await, after_first);
    let check = case.run(&cfg, &["check"]);
    assert_eq!(check.status.code(), Some(0), "{}", text(&check));
}

#[tokio::test]
async fn uninstall_leaves_nothing_behind() {
    let case = Case::new("uninstall", SETUP).await;
    let cfg = case.config("[[tables]]\nname = \"products\"\n[[tables]]\nname = \"orders\"\n");
    assert_eq!(case.run(&cfg, &["install"]).status.code(), Some(0));
    assert!(!case.footprint().await.is_empty());
    let out = case.run(&cfg, &["uninstall"]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    assert_eq!(case.footprint().await, Vec::<String>::new());
}

#[tokio::test]
async fn install_removes_triggers_of_tables_no_longer_configured() {
    let case = Case::new("reconfigure", SETUP).await;
    let both = case.config("[[tables]]\nname = \"products\"\n[[tables]]\nname = \"orders\"\n");
    assert_eq!(case.run(&both, &["install"]).status.code(), Some(0));
    let one = case.config("[[tables]]\nname = \"products\"\n");
    let drift = case.run(&one, &["check"]);
    assert_eq!(drift.status.code(), Some(1), "{}", text(&drift));
    assert!(text(&drift).contains("orders"), "{}", text(&drift));
    let out = case.run(&one, &["install"]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    assert!(!case.footprint().await.iter().any(|l| l.contains("orders")));
    assert_eq!(case.run(&one, &["check"]).status.code(), Some(0));
}

#[tokio::test]
async fn dry_run_prints_the_sql_and_changes_nothing() {
    let case = Case::new("dry_run", SETUP).await;
    let cfg = case.config("[[tables]]\nname = \"products\"\nkeys = [\"p:{id}\"]\n");
    let out = case.run(&cfg, &["install", "--dry-run"]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(stdout.contains("CREATE TABLE IF NOT EXISTS smartcache.outbox"));
    assert!(stdout.contains(
        r#"CREATE TRIGGER "smartcache_capture_update" AFTER UPDATE ON "public"."products" REFERENCING OLD TABLE AS "smartcache_old" NEW TABLE AS "smartcache_new" FOR EACH STATEMENT"#
    ), "{stdout}");
    assert!(stdout.contains("SECURITY DEFINER"), "{stdout}");
    assert_eq!(case.footprint().await, Vec::<String>::new());
}

#[tokio::test]
async fn keys_lists_and_clear_deletes_inside_the_namespace_only() {
    let case = Case::new("keys_clear", SETUP).await;
    let cfg = case.config("[[tables]]\nname = \"products\"\nkeys = [\"product:{id}\"]\n");
    let ns = case.db.name.clone();
    let mut redis = redis::Client::open(redis_url())
        .unwrap()
        .get_multiplexed_async_connection()
        .await
        .unwrap();
    let outside = format!("{ns}x:post");
    let _: () = redis::pipe()
        .set(format!("{ns}:post"), "12345")
        .set(format!("{ns}:posts"), "1")
        .set(format!("{ns}:product:1"), "1")
        .set(format!("{ns}:product:2"), "1")
        .set(format!("{ns}:other"), "1")
        .set(&outside, "1")
        .query_async(&mut redis)
        .await
        .unwrap();
    let exists = |key: String| {
        let mut redis = redis.clone();
        async move {
            redis::AsyncCommands::exists::<_, bool>(&mut redis, key)
                .await
                .unwrap()
        }
    };

    let out = case.run(&cfg, &["keys", "post*"]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        stdout
            .lines()
            .any(|l| l.starts_with("post ") && l.contains(" 5 ")),
        "{stdout}"
    );
    assert!(stdout.contains("2 keys"), "{stdout}");

    let out = case.run(&cfg, &["clear", "post"]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    assert!(!exists(format!("{ns}:post")).await);
    assert!(
        exists(format!("{ns}:posts")).await,
        "clearing post must not touch posts"
    );

    let out = case.run(&cfg, &["clear", "--table", "products"]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    assert!(!exists(format!("{ns}:product:1")).await);
    assert!(!exists(format!("{ns}:product:2")).await);
    assert!(exists(format!("{ns}:other")).await);

    let out = case.run(&cfg, &["clear", "--all"]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    assert!(!exists(format!("{ns}:other")).await);
    assert!(
        exists(outside.clone()).await,
        "a key outside the namespace survives"
    );
    let _: () = redis::AsyncCommands::del(&mut redis, &outside)
        .await
        .unwrap();
}

/// Runs `install` with a bad config: exit 2, every needle in stderr,
/// nothing installed.
async fn refused(tag: &str, config: &str, needles: &[&str]) {
    let case = Case::new(tag, SETUP).await;
    let cfg = case.config(config);
    let out = case.run(&cfg, &["install"]);
    assert_eq!(out.status.code(), Some(2), "{}", text(&out));
    let stderr = String::from_utf8_lossy(&out.stderr);
    for n in needles {
        assert!(stderr.contains(n), "stderr lacks {n:?}: {}", text(&out));
    }
    assert_eq!(
        case.footprint().await,
        Vec::<String>::new(),
        "nothing installed"
    );
}

#[tokio::test]
async fn several_redis_urls_without_cluster_mode_are_refused_naming_the_fix() {
    let case = Case::new("redis_seeds", SETUP).await;
    let cfg = case.config("");
    let seeds = "redis://127.0.0.1:7000,redis://127.0.0.1:7001";
    let out = case.run(&cfg, &["--redis-url", seeds, "run"]);
    assert_eq!(out.status.code(), Some(2), "{}", text(&out));
    let stderr = String::from_utf8_lossy(&out.stderr);
    for needle in ["redis_url", "several URLs", "redis_cluster = true"] {
        assert!(
            stderr.contains(needle),
            "stderr lacks {needle:?}: {}",
            text(&out)
        );
    }
}

#[tokio::test]
async fn unparsable_toml_is_refused_with_file_and_line() {
    refused(
        "bad_toml",
        "\n[[tables]\nname = 1\n",
        &["smartcache.toml", "line 5"],
    )
    .await;
}

#[tokio::test]
async fn unknown_setting_is_refused_naming_it() {
    refused(
        "unknown_key",
        "bogus_setting = 1\n",
        &["smartcache.toml", "line 4", "bogus_setting"],
    )
    .await;
}

#[tokio::test]
async fn unknown_table_is_refused_naming_it() {
    refused(
        "unknown_table",
        "[[tables]]\nname = \"nope\"\n",
        &["public.nope", "does not exist"],
    )
    .await;
}

#[tokio::test]
async fn unknown_template_column_is_refused_naming_it() {
    refused(
        "unknown_column",
        "[[tables]]\nname = \"products\"\nkeys = [\"p:{nope}\"]\n",
        &["public.products", "`nope`"],
    )
    .await;
}

#[tokio::test]
async fn malformed_template_is_refused_naming_the_table() {
    refused(
        "bad_template",
        "[[tables]]\nname = \"products\"\nkeys = [\"p:{id\"]\n",
        &["public.products", "unclosed"],
    )
    .await;
}

#[tokio::test]
async fn sql_injection_through_a_table_name_is_only_a_missing_table() {
    let case = Case::new("injection", SETUP).await;
    let cfg = case.config("[[tables]]\nname = 'products\"; DROP TABLE orders; --'\n");
    let out = case.run(&cfg, &["install"]);
    assert_eq!(out.status.code(), Some(2), "{}", text(&out));
    assert!(text(&out).contains("does not exist"), "{}", text(&out));
    let orders: Option<String> = case
        .db
        .connect()
        .await
        .query_one("SELECT to_regclass('orders')::text", &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(orders.as_deref(), Some("orders"));
}

#[tokio::test]
async fn missing_config_file_is_a_usage_error() {
    let case = Case::new("missing_file", SETUP).await;
    let out = case.run(&case.dir.path().join("absent.toml"), &["check"]);
    assert_eq!(out.status.code(), Some(2), "{}", text(&out));
    assert!(text(&out).contains("absent.toml"));
}

#[tokio::test]
async fn unknown_command_line_flag_is_a_usage_error() {
    let out = std::process::Command::new(BIN)
        .args(["install", "--no-such-flag"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2), "{}", text(&out));
}

#[tokio::test]
async fn flags_beat_environment_which_beats_the_file() {
    let case = Case::new("precedence", SETUP).await;
    let cfg = case.config("");
    // The file names this database, the environment one that does not
    // exist: the environment must win over the file, the flag over both.
    let bad = db::with_database(&case.db.url, "no_such_database_xyz");
    let env_wins = std::process::Command::new(BIN)
        .args(["--config", cfg.to_str().unwrap(), "install"])
        .env("DATABASE_URL", &bad)
        .output()
        .unwrap();
    assert_eq!(env_wins.status.code(), Some(1), "{}", text(&env_wins));
    assert!(text(&env_wins).contains("no_such_database_xyz"));
    let flag_wins = std::process::Command::new(BIN)
        .args(["--config", cfg.to_str().unwrap(), "install"])
        .args(["--database-url", &case.db.url])
        .env("DATABASE_URL", &bad)
        .output()
        .unwrap();
    assert_eq!(flag_wins.status.code(), Some(0), "{}", text(&flag_wins));
}

#[tokio::test]
async fn install_by_a_role_without_the_privileges_names_what_it_lacks_and_changes_nothing() {
    let case = Case::new("install_role", SETUP).await;
    let role = format!("r_{}", db::unique_name("installer"));
    let admin = db::connect(&db::admin_url()).await;
    admin
        .batch_execute(&format!("CREATE ROLE \"{role}\" LOGIN"))
        .await
        .unwrap();
    let url = format!(
        "{}://{role}@{}",
        case.db.url.split_once("://").unwrap().0,
        case.db.url.split_once('@').unwrap().1
    );
    let cfg = case.config("[[tables]]\nname = \"products\"\nkeys = [\"p:{id}\"]\n");
    // No CREATE on the database.
    let out = case.run(&cfg, &["--database-url", &url, "install"]);
    assert_eq!(out.status.code(), Some(2), "{}", text(&out));
    assert!(text(&out).contains("CREATE privilege"), "{}", text(&out));
    // CREATE, but the table belongs to someone else.
    case.db
        .connect()
        .await
        .batch_execute(&format!(
            "GRANT CREATE ON DATABASE \"{}\" TO \"{role}\"",
            case.db.name
        ))
        .await
        .unwrap();
    let out = case.run(&cfg, &["--database-url", &url, "install"]);
    assert_eq!(out.status.code(), Some(2), "{}", text(&out));
    assert!(
        text(&out).contains("must own table public.products"),
        "{}",
        text(&out)
    );
    assert_eq!(
        case.footprint().await,
        Vec::<String>::new(),
        "nothing installed"
    );
    drop(case);
    let _ = admin
        .batch_execute(&format!("DROP ROLE IF EXISTS \"{role}\""))
        .await;
}

/// `smartcache-invalidator --config CFG ARGS…` with `env` set and the
/// environment's URLs otherwise removed.
fn run_env(cfg: &std::path::Path, args: &[&str], env: &[(&str, &str)]) -> Output {
    std::process::Command::new(BIN)
        .arg("--config")
        .arg(cfg)
        .args(args)
        .env_remove("DATABASE_URL")
        .env_remove("DATABASE_URL_FILE")
        .envs(env.iter().copied())
        .output()
        .unwrap()
}

#[tokio::test]
async fn database_url_file_is_read_like_a_mounted_secret() {
    let case = Case::new("url_file", SETUP).await;
    let secret = case.dir.path().join("database_url");
    std::fs::write(&secret, format!("{}\n", case.db.url)).unwrap();
    let secret = secret.to_str().unwrap();
    // The file names an unusable database, the secret the right one.
    let bad = db::with_database(&case.db.url, "no_such_database_xyz");
    let in_file = case.dir.path().join("in_file.toml");
    std::fs::write(
        &in_file,
        format!(
            "database_url_file = {secret:?}\nredis_url = {:?}\n",
            redis_url()
        ),
    )
    .unwrap();
    let plain = case.config("");
    for (cfg, args, env) in [
        (&in_file, vec!["install"], vec![]),
        (
            &plain,
            vec!["--database-url-file", secret, "install"],
            vec![],
        ),
        (&plain, vec!["install"], vec![("DATABASE_URL_FILE", secret)]),
        // A level above beats the file's database_url_file.
        (
            &in_file,
            vec!["install"],
            vec![("DATABASE_URL", case.db.url.as_str())],
        ),
        // The flag beats the environment, URL or file.
        (
            &plain,
            vec!["--database-url-file", secret, "install"],
            vec![("DATABASE_URL", bad.as_str())],
        ),
    ] {
        let out = run_env(cfg, &args, &env);
        assert_eq!(
            out.status.code(),
            Some(0),
            "{args:?} {env:?}: {}",
            text(&out)
        );
    }
    let out = run_env(&in_file, &["install"], &[("DATABASE_URL", bad.as_str())]);
    assert_eq!(
        out.status.code(),
        Some(1),
        "the environment beats the file: {}",
        text(&out)
    );
}

#[tokio::test]
async fn database_url_and_its_file_at_the_same_level_or_an_unreadable_file_are_refused() {
    let case = Case::new("url_file_bad", SETUP).await;
    let secret = case.dir.path().join("database_url");
    std::fs::write(&secret, &case.db.url).unwrap();
    let secret = secret.to_str().unwrap();
    let missing = case.dir.path().join("absent").display().to_string();
    let empty = case.dir.path().join("empty");
    std::fs::write(&empty, "\n").unwrap();
    let empty = empty.to_str().unwrap();
    let both_in_file = case.config(&format!("database_url_file = {secret:?}\n"));
    let plain = case.dir.path().join("plain.toml");
    std::fs::write(&plain, format!("redis_url = {:?}\n", redis_url())).unwrap();
    for (cfg, args, env, wants) in [
        (
            &both_in_file,
            vec!["check"],
            vec![],
            "settings `database_url` and `database_url_file`",
        ),
        (
            &plain,
            vec![
                "--database-url",
                &case.db.url,
                "--database-url-file",
                secret,
                "check",
            ],
            vec![],
            "flags --database-url and --database-url-file",
        ),
        (
            &plain,
            vec!["check"],
            vec![
                ("DATABASE_URL", case.db.url.as_str()),
                ("DATABASE_URL_FILE", secret),
            ],
            "environment variables DATABASE_URL and DATABASE_URL_FILE",
        ),
        (
            &plain,
            vec!["--database-url-file", &missing, "install"],
            vec![],
            "cannot read",
        ),
        (
            &plain,
            vec!["--database-url-file", empty, "run"],
            vec![],
            "is empty",
        ),
    ] {
        let out = run_env(cfg, &args, &env);
        let all = text(&out);
        assert_eq!(out.status.code(), Some(2), "{args:?}: {all}");
        assert!(
            all.contains(wants) && all.contains("database_url"),
            "{args:?}: {all}"
        );
    }
}

#[tokio::test]
async fn an_unknown_sslmode_is_a_configuration_error_for_every_command() {
    let case = Case::new("sslmode_bad", SETUP).await;
    let cfg = case.config("");
    let url = format!(
        "{}?sslmode=verify_full",
        case.db.url.replace("postgres@", "postgres:s3cret@")
    );
    for args in [
        vec!["check"],
        vec!["install"],
        vec!["run"],
        vec!["keys"],
        vec!["clear", "--all"],
    ] {
        let out = run_env(&cfg, &args, &[("DATABASE_URL", url.as_str())]);
        let all = text(&out);
        assert_eq!(out.status.code(), Some(2), "{args:?}: {all}");
        assert!(
            all.contains("sslmode=verify_full") && all.contains("verify-full"),
            "{all}"
        );
        assert!(!all.contains("s3cret"), "the password is hidden: {all}");
    }
}

#[tokio::test]
async fn unusable_redis_tls_files_are_configuration_errors_naming_the_setting() {
    let case = Case::new("redis_tls_files", SETUP).await;
    let junk = case.dir.path().join("junk.pem");
    std::fs::write(&junk, "not a certificate\n").unwrap();
    let junk = junk.to_str().unwrap().to_owned();
    let tls_url = "rediss://127.0.0.1:6380/0";
    let cases: Vec<(Vec<&str>, &[&str])> = vec![
        (
            vec![
                "--redis-url",
                tls_url,
                "--redis-ca-file",
                "/nonexistent/ca.pem",
            ],
            &["redis_ca_file", "/nonexistent/ca.pem", "cannot read"],
        ),
        (
            vec!["--redis-url", tls_url, "--redis-ca-file", &junk],
            &["redis_ca_file", "junk.pem", "PEM"],
        ),
        (
            vec!["--redis-url", tls_url, "--redis-client-cert-file", &junk],
            &["redis_client_cert_file", "redis_client_key_file"],
        ),
        (
            vec!["--redis-ca-file", &junk],
            &["redis_ca_file", "junk.pem"],
        ),
    ];
    let cfg = case.config("");
    for (args, needles) in cases {
        for command in ["check", "keys", "clear", "run"] {
            let mut full = args.clone();
            full.push(command);
            if command == "clear" {
                full.push("--all");
            }
            let out = case.run(&cfg, &full);
            assert_eq!(out.status.code(), Some(2), "{full:?}: {}", text(&out));
            for n in needles {
                assert!(
                    text(&out).contains(n),
                    "{full:?} lacks {n:?}: {}",
                    text(&out)
                );
            }
        }
    }
}

#[tokio::test]
async fn help_never_prints_the_database_url() {
    let out = std::process::Command::new(BIN)
        .arg("--help")
        .env("DATABASE_URL", "postgres://u:s3cret@h/db")
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    assert!(text(&out).contains("--database-url-file"), "{}", text(&out));
    assert!(!text(&out).contains("s3cret"), "{}", text(&out));
}

#[tokio::test]
async fn a_ca_file_with_a_plain_redis_url_is_refused_naming_rediss() {
    let case = Case::new("redis_ca_plain", SETUP).await;
    let ca = ca::Ca::new("plain url test");
    let ca = ca.cert().to_owned();
    let cfg = case.config(&format!("redis_ca_file = {:?}\n", ca.to_str().unwrap()));
    let out = case.run(&cfg, &["check"]);
    assert_eq!(out.status.code(), Some(2), "{}", text(&out));
    assert!(text(&out).contains("rediss://"), "{}", text(&out));
}
