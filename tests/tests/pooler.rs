//! The daemon behind a real PgBouncer: in session mode it listens as if
//! connected directly; in transaction mode (where LISTEN silently does
//! nothing) it detects the pooling, says so, polls, and still invalidates
//! every change, without leaking its session settings to other clients.

use smartcache_tests::pgbouncer::{PgBouncer, PoolMode};
use smartcache_tests::servers::{free_port, wait_for, DaemonProcess, Stack, WAIT};
use smartcache_tests::{http_get, HttpResponse};

async fn metrics(addr: &str) -> Option<HttpResponse> {
    http_get(addr, "/metrics").await.ok()
}

/// Fills the cache, runs writers over ids 1..=50 while the daemon works,
/// waits until it drained, and checks every entry against the database.
async fn writes_are_invalidated(stack: &Stack, daemon: &DaemonProcess) {
    stack.fill().await;
    let writers = stack.writers(2, 1..=50);
    writers.wait_more(200).await;
    writers.stop().await;
    stack.wait_drained().await;
    let verdict = stack.verify(51..=stack.rows).await;
    assert!(verdict.cached > 0);
    assert!(daemon.events_applied() > 0, "{}", daemon.log());
}

async fn pooled_gauge(addr: &str) -> Option<String> {
    let m = metrics(addr).await?;
    m.body
        .lines()
        .find(|l| l.starts_with("smartcache_pooled_session "))
        .map(|l| l["smartcache_pooled_session ".len()..].to_owned())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn through_pgbouncer_in_session_mode_the_daemon_listens_and_invalidates() {
    let addr = format!("127.0.0.1:{}", free_port());
    let mut stack = Stack::start(200, &format!("metrics_addr = {addr:?}")).await;
    let bouncer = PgBouncer::start(stack.pg.port(), PoolMode::Session).await;
    let daemon = stack.daemon_via(&bouncer.url("postgres"));
    wait_for("the daemon to listen", WAIT, || async {
        daemon.log().contains("listening; draining").then_some(())
    })
    .await;
    assert_eq!(pooled_gauge(&addr).await.as_deref(), Some("0"));
    writes_are_invalidated(&stack, &daemon).await;
    assert!(
        !daemon.log().contains("transaction pooling detected"),
        "{}",
        daemon.log()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn through_pgbouncer_in_transaction_mode_pooling_is_detected_and_polling_invalidates() {
    let addr = format!("127.0.0.1:{}", free_port());
    let mut stack = Stack::start(
        200,
        &format!("metrics_addr = {addr:?}\ncanary_interval_ms = 500"),
    )
    .await;
    let bouncer = PgBouncer::start(stack.pg.port(), PoolMode::Transaction).await;
    let daemon = stack.daemon_via(&bouncer.url("postgres"));
    wait_for("the daemon to report transaction pooling", WAIT, || async {
        daemon
            .log()
            .contains("transaction pooling detected")
            .then_some(())
    })
    .await;
    assert_eq!(pooled_gauge(&addr).await.as_deref(), Some("1"));
    let health = http_get(&addr, "/healthz").await.unwrap();
    assert!(
        health.body.contains("note: transaction pooling"),
        "{}",
        health.body
    );
    writes_are_invalidated(&stack, &daemon).await;
    // The canary's heartbeats go through the pool too.
    wait_for("a canary heartbeat through the pool", WAIT, || async {
        let body = metrics(&addr).await?.body;
        body.lines()
            .any(|l| l.starts_with("smartcache_canary_beats_total ") && !l.ends_with(" 0"))
            .then_some(())
    })
    .await;
    // Its session settings stay in its own transactions: other clients of
    // the pool keep synchronous commits and no statement timeout.
    for _ in 0..8 {
        let (client, conn) =
            tokio_postgres::connect(&bouncer.url("postgres"), tokio_postgres::NoTls)
                .await
                .unwrap();
        tokio::spawn(conn);
        let rows = client
            .simple_query("SHOW synchronous_commit")
            .await
            .unwrap();
        let value = rows.iter().find_map(|m| match m {
            tokio_postgres::SimpleQueryMessage::Row(r) => r.get(0).map(str::to_owned),
            _ => None,
        });
        assert_eq!(value.as_deref(), Some("on"));
    }
    let log = daemon.log();
    println!("daemon log:\n{log}");
    assert!(!log.contains("does not exist"), "{log}");
    assert!(!log.contains("\"level\":\"ERROR\""), "{log}");
}
