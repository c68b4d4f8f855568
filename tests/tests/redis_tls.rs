//! TLS to Redis: a `redis-server` with only a `--tls-port`, with and
//! without `--tls-auth-clients yes`, and a TLS Redis Cluster, each started
//! by the test with certificates from a throwaway CA. The library and the
//! daemon invalidate end to end over TLS; a wrong CA, a certificate for
//! another host, a missing client certificate, plain text to a TLS port and
//! TLS to a plain port each fail with a message naming the setting.

use smartcache::{Cache, Dep, Error};
use smartcache_core::conn::Options;
use smartcache_tests::redis_tls::{Certs, TlsRedis, TlsRedisCluster};
use smartcache_tests::servers::{wait_for, Redis, WAIT};
use smartcache_tests::{cli, output_text, Env};

const SETUP: &str = "
    CREATE TABLE products (id bigint PRIMARY KEY, price int NOT NULL);
    INSERT INTO products SELECT g, 100 FROM generate_series(1, 50) g;
";

const TABLES: &str = r#"
[[tables]]
name = "products"
keys = ["product:{id}"]
"#;

async fn price(env: &Env, id: i64) -> i32 {
    env.pg
        .query_one("SELECT price FROM products WHERE id = $1", &[&id])
        .await
        .unwrap()
        .get(0)
}

async fn fill(env: &Env, cache: &Cache, id: i64) -> i32 {
    cache
        .get_or_compute(
            &format!("price:{id}"),
            [Dep::row("products", [id])],
            || async { Ok::<_, Error>(price(env, id).await) },
        )
        .await
        .unwrap()
}

/// The library fills over TLS, the daemon (connected over TLS with the
/// same settings from its config file) deletes what a commit touches:
/// the library's row dependency and a key template.
async fn invalidates_end_to_end(mut env: Env) {
    let config = env.config(TABLES);
    env.install(&config).await;
    let daemon = env.start_daemon(&config);
    let cache = env.cache().await;
    for id in 1..=5 {
        assert_eq!(fill(&env, &cache, id).await, 100);
    }
    env.put(&["product:1", "product:2"]).await;
    env.pg
        .batch_execute("UPDATE products SET price = 200 WHERE id IN (1, 3)")
        .await
        .unwrap();
    env.wait_gone(&["price:1", "price:3", "product:1"]).await;
    assert!(env.cached("price:2").await && env.cached("product:2").await);
    assert_eq!(fill(&env, &cache, 1).await, 200);
    daemon.stop().await;
}

fn options(tls: smartcache::Tls, cluster: bool) -> Options {
    let mut options = Options::default();
    options.tls = tls;
    options.cluster = cluster;
    options
}

#[tokio::test]
async fn library_and_daemon_invalidate_over_tls_with_a_custom_ca() {
    let certs = Certs::new("tls ca");
    let redis = TlsRedis::start(&certs, false, &[]).await;
    let env = Env::on_redis_with(
        "tls_ca",
        SETUP,
        &redis.url(),
        options(certs.ca_only(), false),
        &certs.config_lines(false),
    )
    .await;
    invalidates_end_to_end(env).await;
}

#[tokio::test]
async fn library_and_daemon_invalidate_with_client_certificates() {
    let certs = Certs::new("mtls ca");
    let redis = TlsRedis::start(&certs, true, &[]).await;
    let env = Env::on_redis_with(
        "tls_mtls",
        SETUP,
        &redis.url(),
        options(certs.tls(), false),
        &certs.config_lines(true),
    )
    .await;
    invalidates_end_to_end(env).await;
}

#[tokio::test]
async fn a_tls_cluster_with_client_certificates_invalidates_end_to_end() {
    let certs = Certs::new("tls cluster ca");
    let cluster = TlsRedisCluster::start(&certs, true).await;
    let env = Env::on_redis_with(
        "tls_cluster",
        SETUP,
        &cluster.seeds(),
        options(certs.tls(), true),
        &certs.config_lines(true),
    )
    .await;
    invalidates_end_to_end(env).await;
}

/// What building the library's cache against `url` says.
async fn connect_error(
    url: &str,
    builder: impl FnOnce(smartcache::CacheBuilder) -> smartcache::CacheBuilder,
) -> String {
    let b = builder(Cache::builder(url));
    match b.build().await {
        Err(e @ Error::Connect { .. }) => e.to_string(),
        other => panic!("expected a connection error, got {other:?}"),
    }
}

#[tokio::test]
async fn a_wrong_ca_is_named() {
    let certs = Certs::new("right ca");
    let other = Certs::new("other ca");
    let redis = TlsRedis::start(&certs, false, &[]).await;
    let e = connect_error(&redis.url(), |b| b.ca_file(other.ca.cert())).await;
    assert!(
        e.contains("not signed by the CA in CacheBuilder::ca_file"),
        "{e}"
    );
    let e = connect_error(&redis.url(), |b| b).await;
    assert!(
        e.contains("not signed by a CA the system trusts") && e.contains("CacheBuilder::ca_file"),
        "{e}"
    );
}

#[tokio::test]
async fn a_certificate_for_another_host_is_named() {
    let certs = Certs::for_server_names("hostname ca", &["localhost"]);
    let redis = TlsRedis::start(&certs, false, &[]).await;
    let e = connect_error(&redis.url(), |b| b.ca_file(certs.ca.cert())).await;
    assert!(e.contains("hostname mismatch"), "{e}");
    let by_name = format!("rediss://localhost:{}/0", redis.port());
    Cache::builder(&by_name)
        .ca_file(certs.ca.cert())
        .build()
        .await
        .expect("the name the certificate lists works");
}

#[tokio::test]
async fn a_missing_or_refused_client_certificate_is_named() {
    let certs = Certs::new("mtls ca");
    let stranger = Certs::new("stranger ca");
    let redis = TlsRedis::start(&certs, true, &[]).await;
    let e = connect_error(&redis.url(), |b| b.ca_file(certs.ca.cert())).await;
    assert!(
        e.contains("requires a client certificate") && e.contains("CacheBuilder::client_cert"),
        "{e}"
    );
    let e = connect_error(&redis.url(), |b| {
        b.ca_file(certs.ca.cert())
            .client_cert(&stranger.client.cert, &stranger.client.key)
    })
    .await;
    assert!(e.contains("refused the client certificate"), "{e}");
}

#[tokio::test]
async fn plain_text_to_a_tls_port_and_tls_to_a_plain_port_are_named() {
    let certs = Certs::new("mixup ca");
    let tls = TlsRedis::start(&certs, false, &[]).await;
    let plain = Redis::start().await;
    let plain_to_tls = format!("redis://127.0.0.1:{}/0", tls.port());
    let e = connect_error(&plain_to_tls, |b| b).await;
    assert!(e.contains("requires TLS") && e.contains("rediss://"), "{e}");
    let tls_to_plain = plain.url().replace("redis://", "rediss://");
    let e = connect_error(&tls_to_plain, |b| b.ca_file(certs.ca.cert())).await;
    assert!(e.contains("does not speak TLS on this port"), "{e}");
}

#[tokio::test]
async fn an_unreadable_or_non_pem_file_fails_the_build() {
    let dir = tempfile::tempdir().unwrap();
    let junk = dir.path().join("ca.pem");
    std::fs::write(&junk, "not a certificate").unwrap();
    for (path, what) in [
        (junk.clone(), "holds no PEM"),
        (dir.path().join("missing.pem"), "cannot read"),
    ] {
        let e = Cache::builder("rediss://127.0.0.1:1/0")
            .ca_file(&path)
            .build_lazy()
            .await
            .unwrap_err();
        assert!(matches!(e, Error::TlsFile { .. }), "{e:?}");
        let text = e.to_string();
        assert!(
            text.contains("CacheBuilder::ca_file") && text.contains(what),
            "{text}"
        );
    }
    let e = Cache::builder("redis://127.0.0.1:1/0")
        .ca_file(dir.path().join("missing.pem"))
        .build_lazy()
        .await
        .unwrap_err();
    assert!(matches!(e, Error::TlsFile { .. }), "{e:?}");
}

/// Writes the config of `env` (its TLS lines included) and installs.
async fn config_file(env: &mut Env, dir: &std::path::Path) -> std::path::PathBuf {
    let config = env.config(TABLES);
    env.install(&config).await;
    let path = dir.join("smartcache.toml");
    std::fs::write(&path, env.config_text(TABLES)).unwrap();
    path
}

#[tokio::test]
async fn every_command_honours_the_tls_settings_from_the_file_flags_and_environment() {
    let certs = Certs::new("cli mtls ca");
    let redis = TlsRedis::start(&certs, true, &[]).await;
    let mut env = Env::on_redis_with(
        "tls_cli",
        SETUP,
        &redis.url(),
        options(certs.tls(), false),
        &certs.config_lines(true),
    )
    .await;
    let dir = tempfile::tempdir().unwrap();
    let file = config_file(&mut env, dir.path()).await;
    env.put(&["product:1", "product:2", "other"]).await;
    let run = |args: &[&str]| {
        let out = cli(&file).args(args).output().unwrap();
        assert_eq!(
            out.status.code(),
            Some(0),
            "{args:?}: {}",
            output_text(&out)
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    };
    assert!(run(&["check"]).contains("redis: connected"));
    assert!(run(&["keys"]).contains("3 keys"));
    run(&["clear", "product:1"]);
    run(&["clear", "--table", "products"]);
    assert!(!env.cached("product:2").await && env.cached("other").await);

    let addr = format!("127.0.0.1:{}", smartcache_tests::free_port());
    let mut admin = cli(&file)
        .args(["admin", "--addr", &addr])
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let page = wait_for("the admin page over TLS", WAIT, || {
        let addr = addr.clone();
        async move { smartcache_tests::http_get(&addr, "/").await.ok() }
    })
    .await;
    let _ = admin.kill();
    let _ = admin.wait();
    assert!(
        page.status == 200 && page.body.contains("other"),
        "{page:?}"
    );

    // The same settings as flags, then as environment variables.
    let bare = dir.path().join("bare.toml");
    std::fs::write(
        &bare,
        env.config_text(TABLES)
            .replace(&certs.config_lines(true), ""),
    )
    .unwrap();
    let ca = certs.ca.cert().to_str().unwrap();
    let (cert, key) = (
        certs.client.cert.to_str().unwrap(),
        certs.client.key.to_str().unwrap(),
    );
    let out = cli(&bare)
        .args(["--redis-ca-file", ca, "--redis-client-cert-file", cert])
        .args(["--redis-client-key-file", key, "check"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(0), "{}", output_text(&out));
    let out = cli(&bare)
        .env("SMARTCACHE_REDIS_CA_FILE", ca)
        .env("SMARTCACHE_REDIS_CLIENT_CERT_FILE", cert)
        .env("SMARTCACHE_REDIS_CLIENT_KEY_FILE", key)
        .args(["clear", "--all"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(0), "{}", output_text(&out));
    assert!(!env.cached("other").await);
}

/// `check` on the config of `env` with `settings` in place of its TLS
/// lines: exit 1, the Redis problem named with `needles`, and no advice to
/// run `install` (the installed objects match).
async fn check_names(
    env: &mut Env,
    dir: &std::path::Path,
    url: &str,
    settings: &str,
    needles: &[&str],
) {
    let text = env
        .config_text(TABLES)
        .replace(&env.redis_settings, settings)
        .replace(
            &format!("redis_url = {:?}", env.redis_url),
            &format!("redis_url = {url:?}"),
        );
    let path = dir.join("check.toml");
    std::fs::write(&path, text).unwrap();
    let out = cli(&path).arg("check").output().unwrap();
    let shown = output_text(&out);
    assert_eq!(out.status.code(), Some(1), "{shown}");
    let problem = String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter(|l| l.starts_with("problem:"))
        .collect::<Vec<_>>()
        .join("\n");
    assert_eq!(problem.lines().count(), 1, "one problem line: {shown}");
    for needle in needles {
        assert!(problem.contains(needle), "lacks {needle:?}: {shown}");
    }
    assert!(
        !shown.contains("install"),
        "no install advice for a Redis problem: {shown}"
    );
}

#[tokio::test]
async fn check_names_each_redis_connection_problem_and_the_setting_to_change() {
    let certs = Certs::new("check ca");
    let other = Certs::new("check other ca");
    let mtls = TlsRedis::start(&certs, true, &[]).await;
    let plain = Redis::start().await;
    let mut env = Env::on_redis_with(
        "tls_check",
        SETUP,
        &mtls.url(),
        options(certs.tls(), false),
        &certs.config_lines(true),
    )
    .await;
    let dir = tempfile::tempdir().unwrap();
    config_file(&mut env, dir.path()).await;
    let url = mtls.url();
    check_names(
        &mut env,
        dir.path(),
        &url,
        &other.config_lines(true),
        &["redis_ca_file", "not signed"],
    )
    .await;
    check_names(
        &mut env,
        dir.path(),
        &url,
        &certs.config_lines(false),
        &["client certificate", "redis_client_cert_file"],
    )
    .await;
    let plain_to_tls = format!("redis://127.0.0.1:{}/0", mtls.port());
    check_names(
        &mut env,
        dir.path(),
        &plain_to_tls,
        "",
        &["requires TLS", "redis_url", "rediss://"],
    )
    .await;
    let tls_to_plain = plain.url().replace("redis://", "rediss://");
    check_names(
        &mut env,
        dir.path(),
        &tls_to_plain,
        &certs.config_lines(false),
        &["does not speak TLS", "redis_url"],
    )
    .await;
}
