//! Redis Sentinel: the library and the daemon reach the primary through
//! three sentinels (`redis+sentinel://…/smartcache/0`) and follow a
//! failover to the replica without restarts. Writers commit throughout;
//! at the end every cached entry equals the database (a failover that lost
//! the daemon's last deletions is caught by the generation keys and drops
//! the values), and the same `Cache` keeps caching and being invalidated.

use smartcache::Dep;
use smartcache_tests::sentinel::Sentinels;
use smartcache_tests::servers::{wait_for, Redis, Stack, WAIT};

const ROWS: i64 = 200;

async fn stack() -> (Stack, Sentinels) {
    let primary = Redis::start().await;
    let sentinels = Sentinels::start(&primary, &[], None).await;
    let url = sentinels.url("");
    let stack = Stack::start_via(ROWS, "", primary, &url).await;
    (stack, sentinels)
}

/// Writes around `fault`, then: nothing stale; the library (the same
/// `Cache`) stores through the new primary; later commits invalidate.
async fn writes_around(
    fault: impl std::future::Future<Output = ()>,
    stack: &mut Stack,
    sentinels: &Sentinels,
) {
    stack.fill().await;
    let daemon = stack.daemon();
    let writers = stack.writers(2, 1..=100);
    writers.wait_more(100).await;
    fault.await;
    sentinels.wait_promoted().await;
    let after = writers.commits() + 100;
    writers.wait_more(after).await;
    let (commits, _) = writers.stop().await;
    stack.wait_drained().await;
    let verdict = stack.compare([]).await;
    assert!(
        verdict.stale.is_empty(),
        "{} stale entries after the failover ({commits} commits), e.g. {:?}",
        verdict.stale.len(),
        &verdict.stale[..verdict.stale.len().min(10)]
    );
    assert_eq!(
        sentinels.primary_port().await,
        Some(sentinels.replica.port())
    );
    println!(
        "the daemon found Redis gone back in time: {}",
        daemon.log().contains("went back in time")
    );

    // The same library handle caches through the new primary: the call
    // that finds its connection closed is computed uncached, later ones
    // store again...
    let val_1 = stack.rows().await[0].1;
    let cache = &stack.cache;
    wait_for(
        "the library to store through the new primary",
        WAIT,
        || async move {
            cache
                .entry("lib:1")
                .depends_on(Dep::row("items", [1]))
                .set(&val_1)
                .await
                .unwrap()
                .then_some(())
        },
    )
    .await;
    stack.fill().await;
    let hit: Option<i64> = stack.cache.get("lib:150").await.unwrap();
    assert!(hit.is_some(), "lib:150 is cached on the new primary");
    let v: i64 = stack
        .cache
        .get_or_compute("lib:150", [Dep::row("items", [150])], || async {
            Ok::<_, smartcache::Error>(-1)
        })
        .await
        .unwrap();
    assert_ne!(v, -1, "a hit, not a computation");
    // ...and the daemon invalidates there.
    let writers = stack.writers(2, 1..=50);
    writers.wait_more(100).await;
    writers.stop().await;
    stack.wait_drained().await;
    stack.verify(51..=ROWS).await;
    drop(daemon);
}

#[tokio::test]
async fn writes_around_a_sentinel_failover_leave_every_entry_equal_to_the_database() {
    let (mut stack, sentinels) = stack().await;
    let old = stack.redis.port();
    // Until the sentinels reconfigure it, the old primary takes writes
    // that the new one never sees: the deletions the daemon made there are
    // lost, which the generation keys catch once it follows the failover.
    let failover = async {
        sentinels.failover().await;
        sentinels.wait_promoted().await;
        sentinels.wait_demoted(old).await;
    };
    writes_around(failover, &mut stack, &sentinels).await;
}

#[tokio::test]
async fn writes_around_a_killed_primary_leave_every_entry_equal_to_the_database() {
    let (mut stack, sentinels) = stack().await;
    let pid = stack.redis.pid().expect("the primary runs");
    let kill = async move { smartcache_tests::servers::signal(pid, "-9") };
    writes_around(kill, &mut stack, &sentinels).await;
}
