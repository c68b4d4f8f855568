//! No password ever shows: a daemon role with a password, its URL read
//! from a file, and everything the CLI and the daemon print (stdout,
//! stderr, logs, `/metrics`, `/healthz`, the admin page), including
//! their error messages, searched for it.

use smartcache_tests::pg_tls::{cli_with_env, text, Hba, TlsPostgres};
use smartcache_tests::servers::{daemon_binary, free_port, signal, wait_for, WAIT};
use std::process::{Command, Stdio};

const PASSWORD: &str = "Pw-0f-the-daemon-7f3a";

#[tokio::test]
async fn no_password_appears_in_anything_the_cli_or_the_daemon_prints() {
    let server = TlsPostgres::start(Hba::TlsPassword, &["localhost", "127.0.0.1"]).await;
    let admin = server.pg.connect().await;
    admin
        .batch_execute(&format!(
            "CREATE TABLE items (id bigint PRIMARY KEY, val bigint);
             CREATE ROLE owner LOGIN PASSWORD '{PASSWORD}';
             ALTER TABLE items OWNER TO owner;
             GRANT CREATE ON DATABASE postgres TO owner;"
        ))
        .await
        .unwrap();
    let ca = server.ca.cert().display().to_string();
    let url = format!(
        "postgres://owner:{PASSWORD}@127.0.0.1:{}/postgres?sslmode=verify-full&sslrootcert={ca}",
        server.pg.port()
    );
    let dir = tempfile::tempdir().unwrap();
    let secret = dir.path().join("database_url");
    std::fs::write(&secret, format!("{url}\n")).unwrap();
    let metrics = format!("127.0.0.1:{}", free_port());
    let ns = format!("t_{}", smartcache_tests::db::unique_name("secrets"));
    // No database_url in the file: DATABASE_URL_FILE gives it.
    let config = dir.path().join("smartcache.toml");
    std::fs::write(
        &config,
        format!(
            "redis_url = {:?}\nnamespace = {ns:?}\nmetrics_addr = {metrics:?}\n\
             replica_urls = [\"postgres://owner:{PASSWORD}@127.0.0.1:{}/postgres?connect_timeout=1\"]\n\
             [[tables]]\nname = \"items\"\nkeys = [\"item:{{id}}\"]\n",
            smartcache_tests::redis_url(),
            free_port()
        ),
    )
    .unwrap();
    let file = [("DATABASE_URL_FILE", secret.to_str().unwrap())];
    let mut printed = String::new();
    for args in [
        vec!["install"],
        vec!["check"],
        vec!["keys"],
        vec!["clear", "--all"],
    ] {
        let out = cli_with_env(&config, &args, &file);
        assert!(
            out.status.code().is_some_and(|c| c <= 1),
            "{args:?}: {}",
            text(&out)
        );
        printed.push_str(&text(&out));
    }
    assert!(printed.contains("installed schema version"), "{printed}");
    // Failures print the URL: a wrong password, a bad sslmode.
    let wrong = dir.path().join("wrong");
    std::fs::write(&wrong, url.replace(PASSWORD, "not-the-password-1234")).unwrap();
    let out = cli_with_env(
        &config,
        &["check"],
        &[("DATABASE_URL_FILE", wrong.to_str().unwrap())],
    );
    assert_eq!(out.status.code(), Some(1), "{}", text(&out));
    assert!(text(&out).contains("password"), "{}", text(&out));
    assert!(
        !text(&out).contains("not-the-password-1234"),
        "{}",
        text(&out)
    );
    let out = cli_with_env(
        &config,
        &["check"],
        &[("DATABASE_URL", &format!("{url}&sslmode=nope"))],
    );
    assert_eq!(out.status.code(), Some(2), "{}", text(&out));
    printed.push_str(&text(&out));

    // The daemon, with a replica it cannot reach (its URL has the password too).
    let log = dir.path().join("daemon.log");
    let mut daemon = Command::new(daemon_binary())
        .arg("--config")
        .arg(&config)
        .args(["run"])
        .env("DATABASE_URL_FILE", &secret)
        .env_remove("DATABASE_URL")
        .env("RUST_LOG", "debug")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(&log).unwrap())
        .spawn()
        .unwrap();
    wait_for("the daemon to listen", WAIT, || async {
        let text = std::fs::read_to_string(&log).unwrap_or_default();
        text.contains("listening").then_some(())
    })
    .await;
    admin
        .execute("INSERT INTO items VALUES (1, 1)", &[])
        .await
        .unwrap();
    wait_for("the replica to be reported unreachable", WAIT, || async {
        let text = std::fs::read_to_string(&log).unwrap_or_default();
        text.contains("replica unreachable").then_some(())
    })
    .await;
    for path in ["/metrics", "/healthz"] {
        let r = smartcache_tests::http_get(&metrics, path).await.unwrap();
        printed.push_str(&r.body);
    }
    signal(daemon.id(), "-TERM");
    tokio::task::spawn_blocking(move || daemon.wait().unwrap())
        .await
        .unwrap();
    printed.push_str(&std::fs::read_to_string(&log).unwrap());

    // The admin page.
    let addr = format!("127.0.0.1:{}", free_port());
    let admin_log = dir.path().join("admin.log");
    let mut page = Command::new(daemon_binary())
        .arg("--config")
        .arg(&config)
        .args(["admin", "--addr", &addr])
        .env("DATABASE_URL_FILE", &secret)
        .env_remove("DATABASE_URL")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(&admin_log).unwrap())
        .spawn()
        .unwrap();
    // What the page answered last: a failed wait then says why.
    let last = std::sync::Mutex::new(String::from("no connection"));
    let body = wait_for("the admin page", WAIT, || {
        let exited = page.try_wait().unwrap();
        let (addr, admin_log, last) = (&addr, &admin_log, &last);
        async move {
            let log = || std::fs::read_to_string(admin_log).unwrap_or_default();
            if let Some(status) = exited {
                panic!("the admin page exited ({status}):\n{}", log());
            }
            let now = match smartcache_tests::http_get(addr, "/").await {
                Ok(r) if r.status == 200 => return Some(r.body),
                Ok(r) => format!("{} {}", r.status, r.body),
                Err(e) => e.to_string(),
            };
            let mut last = last.lock().unwrap();
            if *last != now {
                eprintln!("admin page: {now}; its log:\n{}", log());
                *last = now;
            }
            None
        }
    })
    .await;
    printed.push_str(&body);
    signal(page.id(), "-TERM");
    tokio::task::spawn_blocking(move || page.wait().unwrap())
        .await
        .unwrap();
    printed.push_str(&std::fs::read_to_string(&admin_log).unwrap());

    assert!(
        printed.contains("owner:***@"),
        "the URL is shown redacted somewhere: {printed}"
    );
    assert!(
        !printed.contains(PASSWORD),
        "the password appears in what was printed:\n{printed}"
    );
}
