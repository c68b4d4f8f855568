//! Secrets: the Redis URL with its password read from a file
//! (`redis_url_file`, `--redis-url-file`, `REDIS_URL_FILE`), and no Redis
//! password in anything the daemon and the CLI print, log or serve: `check`,
//! `keys`, errors, the daemon's log, `/metrics`, `/healthz`, the admin page.
//! Against a throwaway `redis-server --requirepass`.

use smartcache_tests::servers::{wait_for, DaemonProcess, Redis, WAIT};
use smartcache_tests::{cli, free_port, http_get, output_text, Env};

const PASSWORD: &str = "s3cret-Pa55word-XYZ";

const SETUP: &str = "
    CREATE TABLE products (id bigint PRIMARY KEY, price int NOT NULL);
    INSERT INTO products SELECT g, 100 FROM generate_series(1, 10) g;
";

const TABLES: &str = "[[tables]]\nname = \"products\"\nkeys = [\"product:{id}\"]\n";

struct Fixture {
    redis: Redis,
    env: Env,
    dir: tempfile::TempDir,
    /// The config file, without any Redis URL.
    config: std::path::PathBuf,
    /// The file holding the URL with the password, and a newline.
    url_file: std::path::PathBuf,
}

async fn fixture(tag: &str) -> Fixture {
    let redis = Redis::start_with_args(&["--requirepass", PASSWORD]).await;
    let url = format!("redis://:{PASSWORD}@127.0.0.1:{}/0", redis.port());
    let mut env = Env::on_redis_with(tag, SETUP, &url, Default::default(), "").await;
    let config = env.config(TABLES);
    env.install(&config).await;
    let dir = tempfile::tempdir().unwrap();
    let without_url = env
        .config_text(TABLES)
        .lines()
        .filter(|l| !l.starts_with("redis_url"))
        .collect::<Vec<_>>()
        .join("\n");
    let config = dir.path().join("smartcache.toml");
    std::fs::write(&config, without_url + "\n").unwrap();
    let url_file = dir.path().join("redis-url");
    std::fs::write(&url_file, format!("{url}\n")).unwrap();
    Fixture {
        redis,
        env,
        dir,
        config,
        url_file,
    }
}

fn assert_no_password(what: &str, text: &str) {
    assert!(
        !text.contains(PASSWORD),
        "{what} shows the password:\n{text}"
    );
}

#[tokio::test]
async fn redis_url_file_gives_the_url_by_file_flag_and_environment() {
    let fx = fixture("url_file").await;
    let file = fx.url_file.to_str().unwrap();
    let by_setting = fx.dir.path().join("with-setting.toml");
    std::fs::write(
        &by_setting,
        format!(
            "redis_url_file = {file:?}\n{}",
            std::fs::read_to_string(&fx.config).unwrap()
        ),
    )
    .unwrap();
    for (name, mut cmd) in [
        ("the file setting", cli(&by_setting)),
        ("the flag", {
            let mut c = cli(&fx.config);
            c.args(["--redis-url-file", file]);
            c
        }),
        ("the environment", {
            let mut c = cli(&fx.config);
            c.env("REDIS_URL_FILE", file);
            c
        }),
    ] {
        let out = cmd.arg("check").output().unwrap();
        assert_eq!(out.status.code(), Some(0), "{name}: {}", output_text(&out));
        assert_no_password(name, &output_text(&out));
    }
    // A flag beats the environment: the flag's URL file is read, the
    // environment's URL is not.
    let out = cli(&fx.config)
        .env("REDIS_URL", "redis://127.0.0.1:1/0")
        .args(["--redis-url-file", file, "check"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(0), "{}", output_text(&out));
}

#[tokio::test]
async fn a_url_and_its_file_at_one_level_or_a_missing_file_are_configuration_errors() {
    let fx = fixture("url_file_conflict").await;
    let file = fx.url_file.to_str().unwrap();
    let url = fx.env.redis_url.clone();
    let both_flags = cli(&fx.config)
        .args(["--redis-url", &url, "--redis-url-file", file, "check"])
        .output()
        .unwrap();
    let both_env = cli(&fx.config)
        .env("REDIS_URL", &url)
        .env("REDIS_URL_FILE", file)
        .arg("check")
        .output()
        .unwrap();
    let both_in_file = fx.dir.path().join("both.toml");
    std::fs::write(
        &both_in_file,
        format!(
            "redis_url_file = {file:?}\nredis_url = {url:?}\n{}",
            std::fs::read_to_string(&fx.config).unwrap()
        ),
    )
    .unwrap();
    let both_file = cli(&both_in_file).arg("check").output().unwrap();
    for (out, names) in [
        (both_flags, ["--redis-url", "--redis-url-file"]),
        (both_env, ["REDIS_URL", "REDIS_URL_FILE"]),
        (both_file, ["redis_url", "redis_url_file"]),
    ] {
        let shown = output_text(&out);
        assert_eq!(out.status.code(), Some(2), "{shown}");
        assert!(names.iter().all(|n| shown.contains(n)), "{shown}");
        assert_no_password("the error", &shown);
    }
    let missing = cli(&fx.config)
        .args(["--redis-url-file", "/nonexistent/redis-url", "keys"])
        .output()
        .unwrap();
    let shown = output_text(&missing);
    assert_eq!(missing.status.code(), Some(2), "{shown}");
    assert!(
        shown.contains("redis_url_file") && shown.contains("/nonexistent/redis-url"),
        "{shown}"
    );
}

#[tokio::test]
async fn a_wrong_or_missing_password_is_named_and_never_printed() {
    let fx = fixture("wrong_password").await;
    let port = fx.redis.port();
    for (url, needle) in [
        (
            format!("redis://:wrong-{PASSWORD}@127.0.0.1:{port}/0"),
            "refused the user name or password",
        ),
        (format!("redis://127.0.0.1:{port}/0"), "requires a password"),
    ] {
        let out = cli(&fx.config)
            .args(["--redis-url", &url, "check"])
            .output()
            .unwrap();
        let shown = output_text(&out);
        assert_eq!(out.status.code(), Some(1), "{shown}");
        assert!(
            shown.contains(needle) && shown.contains("redis_url"),
            "{shown}"
        );
        assert!(!shown.contains("install"), "{shown}");
        assert_no_password("check", &shown);
        let out = cli(&fx.config)
            .args(["--redis-url", &url, "keys"])
            .output()
            .unwrap();
        let shown = output_text(&out);
        assert_eq!(out.status.code(), Some(1), "{shown}");
        assert!(shown.contains(needle), "{shown}");
        assert_no_password("keys", &shown);
    }
}

#[tokio::test]
async fn the_password_is_in_no_log_metrics_health_or_admin_page() {
    let mut fx = fixture("no_password_shown").await;
    let metrics = format!("127.0.0.1:{}", free_port());
    let log = fx.dir.path().join("daemon.log");
    let mut daemon = DaemonProcess::start_with_env(
        &fx.config,
        &fx.env.db.url,
        &fx.env.redis_url,
        fx.env.ns.name(),
        log,
        &[],
    );
    // The daemon of `DaemonProcess` gets the URL as a flag; the same with
    // metrics on, from the file, as a second daemon.
    let second = cli(&fx.config)
        .args(["--redis-url-file", fx.url_file.to_str().unwrap()])
        .args(["--namespace", fx.env.ns.name(), "--log-format", "json"])
        .args(["run", "--metrics-addr", &metrics])
        .env("RUST_LOG", "debug")
        .stderr(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    fx.env.put(&["product:1"]).await;
    fx.env
        .pg
        .batch_execute("UPDATE products SET price = 1 WHERE id = 1")
        .await
        .unwrap();
    fx.env.wait_gone(&["product:1"]).await;
    let served = wait_for("/metrics to be served", WAIT, || {
        let metrics = metrics.clone();
        async move {
            let m = http_get(&metrics, "/metrics").await.ok()?;
            let h = http_get(&metrics, "/healthz").await.ok()?;
            Some(format!("{}\n{}", m.body, h.body))
        }
    })
    .await;
    assert_no_password("/metrics and /healthz", &served);

    let admin = format!("127.0.0.1:{}", free_port());
    let admin_process = cli(&fx.config)
        .args(["--redis-url-file", fx.url_file.to_str().unwrap()])
        .args(["--namespace", fx.env.ns.name(), "admin", "--addr", &admin])
        .stderr(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let page = wait_for("the admin page", WAIT, || {
        let admin = admin.clone();
        async move { http_get(&admin, "/").await.ok().map(|r| r.body) }
    })
    .await;
    assert!(page.contains("smartcache"), "{page}");
    assert_no_password("the admin page", &page);

    // Redis goes away and comes back: the errors logged meanwhile too.
    fx.redis.kill9();
    fx.env
        .pg
        .batch_execute("UPDATE products SET price = 2 WHERE id = 2")
        .await
        .unwrap();
    tokio::time::sleep(std::time::Duration::from_millis(1500)).await;
    fx.redis.start_again().await;
    fx.env.wait_drained().await;

    daemon.terminate().await;
    assert_no_password("the daemon's log", &daemon.log());
    for child in [second, admin_process] {
        smartcache_tests::servers::signal(child.id(), "-TERM");
        let out = child.wait_with_output().unwrap();
        assert_no_password("a process's output", &output_text(&out));
    }
}
