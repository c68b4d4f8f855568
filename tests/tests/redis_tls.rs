//! TLS to Redis: a `redis-server` with only a `--tls-port`, with and
//! without `--tls-auth-clients yes`, and a TLS Redis Cluster, each started
//! by the test with certificates from a throwaway CA. The library and the
//! daemon invalidate end to end over TLS; a wrong CA, a certificate for
//! another host, a missing client certificate, plain text to a TLS port and
//! TLS to a plain port each fail with a message naming the setting.

use smartcache::{Cache, Dep, Error};
use smartcache_core::conn::Options;
use smartcache_tests::redis_tls::{Certs, TlsRedis, TlsRedisCluster};
use smartcache_tests::servers::Redis;
use smartcache_tests::Env;

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
