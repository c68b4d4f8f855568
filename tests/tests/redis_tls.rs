use smartcache_core::conn::{Conn, Options};
use smartcache_core::diagnose::{explain, Settings};
use smartcache_core::tls::Tls;
use smartcache_tests::redis_tls::{Certs, TlsRedis};
use smartcache_tests::servers::Redis;

async fn try_ping(url: &str, options: &Options) {
    let mut con = Conn::open(url, options).unwrap();
    let r = redis::cmd("PING").query_async::<String>(&mut con).await;
    match r {
        Ok(s) => println!("{url}: OK {s}"),
        Err(e) => println!(
            "{url}: ERR {e:?} kind={:?}\n  => {}",
            e.kind(),
            explain(&e, url, options, &Settings::CONFIG).await
        ),
    }
}

#[tokio::test]
async fn explore() {
    let certs = Certs::new("explore");
    let other = Certs::new("other");
    let tls = TlsRedis::start(&certs, false, &[]).await;
    let mtls = TlsRedis::start(&certs, true, &[]).await;
    let plain = Redis::start().await;
    let mut good = Options::default();
    good.tls = certs.tls();
    let mut ca_only = Options::default();
    ca_only.tls = Tls::from_files(Some(certs.ca.cert()), None).unwrap();
    let mut wrong = Options::default();
    wrong.tls = Tls::from_files(Some(other.ca.cert()), None).unwrap();
    let mut wrong_client = Options::default();
    wrong_client.tls = Tls::from_files(
        Some(certs.ca.cert()),
        Some((&other.client.cert, &other.client.key)),
    )
    .unwrap();
    try_ping(&tls.url(), &ca_only).await;
    try_ping(&tls.url(), &wrong).await;
    try_ping(&tls.url(), &Options::default()).await;
    try_ping(&format!("rediss://localhost:{}/0", tls.port()), &ca_only).await;
    try_ping(&format!("rediss://127.0.0.2:{}/0", tls.port()), &ca_only).await;
    try_ping(
        &format!("redis://127.0.0.1:{}/0", tls.port()),
        &Options::default(),
    )
    .await;
    try_ping(&plain.url().replace("redis://", "rediss://"), &ca_only).await;
    try_ping(&mtls.url(), &ca_only).await;
    try_ping(&mtls.url(), &good).await;
    try_ping(&mtls.url(), &wrong_client).await;
}
