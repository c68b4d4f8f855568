//! A batch longer than every timeout: a TRUNCATE whose expansion walks a
//! namespace of a million keys. It must finish, not be abandoned and
//! replayed forever. (Its own test binary: it loads the machine, and the
//! outbox tests time a drain.)

use smartcache_tests::servers::{wait_for, Stack, WAIT};
use std::time::Instant;

/// Writes `n` keys under the namespace that no template matches: what a
/// TRUNCATE's `SCAN`s must walk past.
async fn crowd(stack: &Stack, n: u64) {
    let mut con = stack.redis_con().await;
    for start in (0..n).step_by(10_000) {
        let mut pipe = redis::pipe();
        for i in start..(start + 10_000).min(n) {
            pipe.set(stack.ns.value_key(&format!("other:{i}")), 1)
                .ignore();
        }
        let _: () = pipe
            .query_async(&mut con)
            .await
            .expect("crowd the namespace");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_truncate_whose_expansion_outlasts_the_timeouts_completes() {
    // Four templates: eight full SCANs of a namespace of a million keys,
    // plus the row dependency sets, inside one claim. That takes longer than
    // pg_timeout_ms (the server ends an idle transaction) and is slow enough
    // for the canary to look; it must finish, not loop.
    let mut stack = Stack::start_with_keys(
        100,
        "pg_timeout_ms = 1000\ncanary_interval_ms = 200",
        smartcache_tests::servers::Redis::start(),
        &["item:{id}", "a:{id}", "b:{id}", "c:{id}"],
    )
    .await;
    stack.fill().await;
    crowd(&stack, 1_000_000).await;
    let mut daemon = stack.daemon();
    stack
        .pg
        .connect()
        .await
        .batch_execute("TRUNCATE items")
        .await
        .unwrap();
    let start = Instant::now();
    wait_for("the TRUNCATE to be applied", WAIT, || async {
        (stack.outbox_len().await == Some(0)).then_some(())
    })
    .await;
    println!(
        "TRUNCATE over a million keys applied in {:?}",
        start.elapsed()
    );
    let mut con = stack.redis_con().await;
    for prefix in ["item:", "lib:"] {
        let left = con
            .scan_all(&stack.ns.match_cache_keys(&format!("{prefix}*")))
            .await
            .unwrap();
        assert!(
            left.is_empty(),
            "{} {prefix}* keys survived the TRUNCATE",
            left.len()
        );
    }
    assert!(daemon.running());
    daemon.terminate().await;
}
