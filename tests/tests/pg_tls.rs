//! TLS to PostgreSQL, end to end: throwaway servers with a certificate
//! from a throwaway CA (TLS optional, TLS only, client certificates) or
//! with `ssl = off`; the real binary (daemon and CLI) with each `sslmode`;
//! and the one-line errors that name the setting to change.

use redis::AsyncCommands;
use smartcache_core::keys::Namespace;
use smartcache_tests::pg_tls::{
    cli, client_params, plain_postgres, text, write_config, Hba, TlsPostgres,
};
use smartcache_tests::servers::{wait_for, DaemonProcess, WAIT};

const TABLES: &str = "[[tables]]\nname = \"items\"\nkeys = [\"item:{id}\"]\n";

async fn create_items(client: &tokio_postgres::Client) {
    client
        .batch_execute(
            "CREATE TABLE items (id bigint PRIMARY KEY, val bigint NOT NULL);
             INSERT INTO items SELECT g, 0 FROM generate_series(1, 10) g;",
        )
        .await
        .expect("create items");
}

fn namespace(tag: &str) -> Namespace {
    Namespace::new(&format!("t_{}", smartcache_tests::db::unique_name(tag))).unwrap()
}

/// Whether every session of the daemon (main, canary) is encrypted, and
/// how many there are.
async fn daemon_sessions_encrypted(pg: &tokio_postgres::Client) -> (i64, bool) {
    let row = pg
        .query_one(
            "SELECT count(*), coalesce(bool_and(s.ssl), false) FROM pg_stat_activity a \
             JOIN pg_stat_ssl s USING (pid) WHERE a.application_name LIKE 'smartcache-invalidator%'",
            &[],
        )
        .await
        .unwrap();
    (row.get(0), row.get(1))
}

#[tokio::test]
async fn the_daemon_invalidates_over_verify_full_and_every_session_is_encrypted() {
    let server = TlsPostgres::start(Hba::TlsOnly, &["localhost", "127.0.0.1"]).await;
    let admin = server.pg.connect().await;
    create_items(&admin).await;
    let ns = namespace("tls_daemon");
    let url = server.url(
        "postgres",
        "postgres",
        &format!(
            "sslmode=verify-full&sslrootcert={}",
            server.ca.cert().display()
        ),
    );
    let dir = tempfile::tempdir().unwrap();
    let config = write_config(dir.path(), &url, ns.name(), TABLES);
    let install = cli(&config, &["install"]);
    assert_eq!(install.status.code(), Some(0), "{}", text(&install));
    let check = cli(&config, &["check"]);
    assert_eq!(check.status.code(), Some(0), "{}", text(&check));

    let mut redis = smartcache_tests::redis_conn(&smartcache_tests::redis_url(), false);
    let _: () = redis.set(ns.value_key("item:1"), "cached").await.unwrap();
    let _: () = redis.set(ns.value_key("item:2"), "cached").await.unwrap();
    let daemon = DaemonProcess::start(
        &config,
        &url,
        &smartcache_tests::redis_url(),
        ns.name(),
        dir.path().join("daemon.log"),
    );
    wait_for("the daemon's two sessions", WAIT, || async {
        let (n, _) = daemon_sessions_encrypted(&admin).await;
        (n >= 2).then_some(())
    })
    .await;
    admin
        .execute("UPDATE items SET val = 1 WHERE id = 1", &[])
        .await
        .unwrap();
    wait_for("item:1 to be invalidated", WAIT, || {
        let mut redis = redis.clone();
        let key = ns.value_key("item:1");
        async move { (!redis.exists::<_, bool>(&key).await.unwrap()).then_some(()) }
    })
    .await;
    assert!(
        redis
            .exists::<_, bool>(ns.value_key("item:2"))
            .await
            .unwrap(),
        "an untouched key survives"
    );
    let (n, encrypted) = daemon_sessions_encrypted(&admin).await;
    assert!(
        n >= 2 && encrypted,
        "{n} daemon sessions, all encrypted: {encrypted}"
    );
    drop(daemon);
}

#[tokio::test]
async fn each_sslmode_against_a_tls_only_server() {
    let server = TlsPostgres::start(Hba::TlsOnly, &["localhost", "127.0.0.1"]).await;
    let admin = server.pg.connect().await;
    create_items(&admin).await;
    let ns = namespace("tls_modes");
    let dir = tempfile::tempdir().unwrap();
    let ca = server.ca.cert().display().to_string();
    for params in [
        "sslmode=prefer".to_owned(),
        "sslmode=require".to_owned(),
        format!("sslmode=require&sslrootcert={ca}"),
        format!("sslmode=verify-ca&sslrootcert={ca}"),
        format!("sslmode=verify-full&sslrootcert={ca}"),
        // No sslmode: libpq's default, prefer, which takes TLS when offered.
        String::new(),
    ] {
        let url = server.url("postgres", "postgres", &params);
        let config = write_config(dir.path(), &url, ns.name(), TABLES);
        let out = cli(&config, &["install"]);
        assert_eq!(out.status.code(), Some(0), "{params}: {}", text(&out));
    }
    // Plain is refused by pg_hba.conf: the message says which setting to change.
    let url = server.url("postgres", "postgres", "sslmode=disable");
    let config = write_config(dir.path(), &url, ns.name(), TABLES);
    for command in ["check", "install", "uninstall"] {
        let out = cli(&config, &[command]);
        let all = text(&out);
        assert_eq!(out.status.code(), Some(1), "{command}: {all}");
        assert!(
            all.contains("accepts only TLS") && all.contains("set sslmode=require"),
            "{command}: {all}"
        );
        assert!(!all.contains("smartcache-invalidator install"), "{all}");
    }
}

fn assert_one_line_error(out: &std::process::Output, status: i32, wants: &[&str]) {
    let all = text(out);
    assert_eq!(out.status.code(), Some(status), "{all}");
    let stderr = String::from_utf8_lossy(&out.stderr);
    let errors: Vec<&str> = stderr.lines().filter(|l| l.starts_with("error:")).collect();
    assert_eq!(errors.len(), 1, "one error line: {all}");
    for want in wants {
        assert!(errors[0].contains(want), "{want:?} missing: {all}");
    }
    assert!(
        !all.contains("run `smartcache-invalidator install`"),
        "no trigger-drift advice for a connection problem: {all}"
    );
}

#[tokio::test]
async fn a_certificate_from_another_ca_is_refused_naming_sslrootcert() {
    let server = TlsPostgres::start(Hba::Any, &["localhost", "127.0.0.1"]).await;
    let other = smartcache_tests::ca::Ca::new("not the server's CA");
    let dir = tempfile::tempdir().unwrap();
    for mode in ["verify-ca", "verify-full", "require"] {
        let url = server.url(
            "postgres",
            "postgres",
            &format!("sslmode={mode}&sslrootcert={}", other.cert().display()),
        );
        let config = write_config(dir.path(), &url, "t_other_ca", "");
        let out = cli(&config, &["check"]);
        assert_one_line_error(
            &out,
            1,
            &["not signed by the CA in sslrootcert", "set sslrootcert"],
        );
    }
}

#[tokio::test]
async fn a_host_name_the_certificate_does_not_list_is_refused_under_verify_full_only() {
    // Valid for "localhost" only; we connect to 127.0.0.1.
    let server = TlsPostgres::start(Hba::TlsOnly, &["localhost"]).await;
    let ca = server.ca.cert().display().to_string();
    let dir = tempfile::tempdir().unwrap();
    let full = write_config(
        dir.path(),
        &server.url(
            "postgres",
            "postgres",
            &format!("sslmode=verify-full&sslrootcert={ca}"),
        ),
        "t_hostname",
        "",
    );
    let out = cli(&full, &["install"]);
    assert_one_line_error(
        &out,
        1,
        &["not valid for host 127.0.0.1", "sslmode=verify-ca"],
    );
    let by_name = write_config(
        dir.path(),
        &format!(
            "postgres://postgres@localhost:{}/postgres?sslmode=verify-full&sslrootcert={ca}",
            server.pg.port()
        ),
        "t_hostname",
        "",
    );
    let out = cli(&by_name, &["install"]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    let ca_only = write_config(
        dir.path(),
        &server.url(
            "postgres",
            "postgres",
            &format!("sslmode=verify-ca&sslrootcert={ca}"),
        ),
        "t_hostname",
        "",
    );
    let out = cli(&ca_only, &["install"]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
}

#[tokio::test]
async fn sslmode_require_against_a_server_without_tls_names_sslmode() {
    let pg = plain_postgres().await;
    let dir = tempfile::tempdir().unwrap();
    let url = |params: &str| {
        format!(
            "postgres://postgres@127.0.0.1:{}/postgres?{params}",
            pg.port()
        )
    };
    for mode in ["require", "verify-ca", "verify-full"] {
        let config = write_config(dir.path(), &url(&format!("sslmode={mode}")), "t_no_tls", "");
        let out = cli(&config, &["check"]);
        assert_one_line_error(
            &out,
            1,
            &["does not accept TLS", "set sslmode=disable or prefer"],
        );
    }
    for params in ["sslmode=disable", "sslmode=prefer", ""] {
        let config = write_config(dir.path(), &url(params), "t_no_tls", "");
        let out = cli(&config, &["install"]);
        assert_eq!(out.status.code(), Some(0), "{params}: {}", text(&out));
    }
}

#[tokio::test]
async fn client_certificates_log_in_a_least_privilege_daemon_role() {
    let server = TlsPostgres::start(Hba::ClientCert, &["localhost", "127.0.0.1"]).await;
    let admin = server.pg.connect().await;
    create_items(&admin).await;
    admin
        .batch_execute("CREATE ROLE smartcache_daemon LOGIN")
        .await
        .unwrap();
    let ca = server.ca.cert().display().to_string();
    let owner = server.client_cert("postgres");
    let daemon_cert = server.client_cert("smartcache_daemon");
    let ns = namespace("tls_cert");
    let dir = tempfile::tempdir().unwrap();
    let rest = format!("daemon_role = \"smartcache_daemon\"\n{TABLES}");

    let without = server.url(
        "postgres",
        "postgres",
        &format!("sslmode=verify-full&sslrootcert={ca}"),
    );
    let config = write_config(dir.path(), &without, ns.name(), &rest);
    assert_one_line_error(
        &cli(&config, &["install"]),
        1,
        &["asks for a client certificate", "set sslcert and sslkey"],
    );
    let someone_else = server.url(
        "smartcache_daemon",
        "postgres",
        &format!(
            "sslmode=verify-full&sslrootcert={ca}&{}",
            client_params(&owner)
        ),
    );
    let config = write_config(dir.path(), &someone_else, ns.name(), &rest);
    assert_one_line_error(
        &cli(&config, &["check"]),
        1,
        &["not for this role", "common name"],
    );

    let as_owner = server.url(
        "postgres",
        "postgres",
        &format!(
            "sslmode=verify-full&sslrootcert={ca}&{}",
            client_params(&owner)
        ),
    );
    let config = write_config(dir.path(), &as_owner, ns.name(), &rest);
    let out = cli(&config, &["install"]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));

    let as_daemon = server.url(
        "smartcache_daemon",
        "postgres",
        &format!(
            "sslmode=verify-full&sslrootcert={ca}&{}",
            client_params(&daemon_cert)
        ),
    );
    let config = write_config(dir.path(), &as_daemon, ns.name(), &rest);
    let out = cli(&config, &["check"]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    let mut redis = smartcache_tests::redis_conn(&smartcache_tests::redis_url(), false);
    let _: () = redis.set(ns.value_key("item:3"), "cached").await.unwrap();
    let daemon = DaemonProcess::start(
        &config,
        &as_daemon,
        &smartcache_tests::redis_url(),
        ns.name(),
        dir.path().join("daemon.log"),
    );
    wait_for("the daemon to connect", WAIT, || async {
        (daemon_sessions_encrypted(&admin).await.0 >= 2).then_some(())
    })
    .await;
    admin
        .execute("DELETE FROM items WHERE id = 3", &[])
        .await
        .unwrap();
    wait_for("item:3 to be invalidated", WAIT, || {
        let mut redis = redis.clone();
        let key = ns.value_key("item:3");
        async move { (!redis.exists::<_, bool>(&key).await.unwrap()).then_some(()) }
    })
    .await;
    let user: String = admin
        .query_one(
            "SELECT usename::text FROM pg_stat_activity WHERE application_name = 'smartcache-invalidator'",
            &[],
        )
        .await
        .unwrap()
        .get(0);
    assert_eq!(user, "smartcache_daemon");
    drop(daemon);
}

#[tokio::test]
async fn the_daemon_exits_1_at_start_when_the_certificate_is_refused() {
    let server = TlsPostgres::start(Hba::TlsOnly, &["localhost", "127.0.0.1"]).await;
    let other = smartcache_tests::ca::Ca::new("not the server's CA");
    let url = server.url(
        "postgres",
        "postgres",
        &format!("sslmode=verify-full&sslrootcert={}", other.cert().display()),
    );
    let dir = tempfile::tempdir().unwrap();
    let config = write_config(dir.path(), &url, "t_daemon_ca", "");
    let out = std::process::Command::new(smartcache_tests::servers::daemon_binary())
        .arg("--config")
        .arg(&config)
        .arg("run")
        .env_remove("DATABASE_URL")
        .output()
        .unwrap();
    assert_one_line_error(&out, 1, &["not signed by the CA in sslrootcert"]);
}

#[tokio::test]
async fn missing_certificate_files_are_configuration_errors() {
    let server = TlsPostgres::start(Hba::Any, &["localhost", "127.0.0.1"]).await;
    let dir = tempfile::tempdir().unwrap();
    let missing = dir.path().join("nope.pem");
    let missing = missing.display();
    for (params, wants) in [
        (
            format!("sslmode=verify-full&sslrootcert={missing}"),
            "sslrootcert",
        ),
        (
            format!("sslmode=require&sslcert={missing}&sslkey={missing}"),
            "sslcert",
        ),
        ("sslmode=verify_full".to_owned(), "sslmode=verify_full"),
    ] {
        let config = write_config(
            dir.path(),
            &server.url("postgres", "postgres", &params),
            "t_files",
            "",
        );
        for command in ["check", "install", "run"] {
            assert_one_line_error(&cli(&config, &[command]), 2, &[wants, "database_url"]);
        }
    }
}
