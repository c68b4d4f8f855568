//! No invalidation is lost under faults. Each test owns its PostgreSQL and
//! Redis servers (see `smartcache_tests::servers`), runs the daemon as a
//! real process, caches every row of `items`, changes only the "hot" rows
//! while something breaks, and ends with the guarantee: every cached entry
//! equals the database, and the entries of rows no change touched are
//! still cached (nothing was flushed wholesale to stay safe).

use smartcache_tests::servers::{self, wait_for, Stack, WAIT};
use std::ops::RangeInclusive;
use std::time::{Duration, Instant};

const ROWS: i64 = 10_000;
const HOT: RangeInclusive<i64> = 1..=5_000;
const UNTOUCHED: RangeInclusive<i64> = 5_001..=10_000;

/// A stack with every row cached.
async fn cached_stack(settings: &str) -> Stack {
    let stack = Stack::start(ROWS, settings).await;
    stack.fill().await;
    stack
}

/// Waits until `n` daemon sessions are connected to PostgreSQL.
async fn wait_sessions(stack: &Stack, n: usize) {
    wait_for(&format!("{n} daemon session(s)"), WAIT, || async {
        (stack.pg.daemon_sessions().await.0 >= n).then_some(())
    })
    .await;
}

/// One UPDATE of every hot row, retried when it deadlocks with a writer.
async fn update_all_hot_rows(stack: &Stack) {
    let pg = stack.pg.connect().await;
    for attempt in 1.. {
        let done = pg
            .execute(
                "UPDATE items SET val = val + 1 WHERE id BETWEEN $1 AND $2",
                &[HOT.start(), HOT.end()],
            )
            .await;
        match done {
            Ok(_) => return,
            Err(e) if attempt < 10 => println!("bulk update failed, retrying: {e}"),
            Err(e) => panic!("bulk update: {e}"),
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn daemon_killed_with_sigkill_mid_batch_loses_nothing_after_restart() {
    let mut stack = cached_stack("batch_size = 5000").await;
    let mut daemon = stack.daemon();
    wait_sessions(&stack, 1).await;

    // 20 000 events, taken 5 000 per transaction: the daemon is busy with
    // a large batch most of the time.
    for _ in 0..4 {
        update_all_hot_rows(&stack).await;
    }
    wait_for("the daemon holding a batch", WAIT, || async {
        let (_, in_tx) = stack.pg.daemon_sessions().await;
        let left = stack.outbox_len().await.unwrap_or(0);
        (in_tx > 0 && left > 0).then_some(())
    })
    .await;
    daemon.kill9();

    // Its session ends, the batch in hand rolls back into the outbox.
    wait_sessions_gone(&stack).await;
    let left = stack.outbox_len().await.unwrap();
    println!("killed mid-batch; {left} events left in the outbox");
    assert!(left > 0, "the kill came after the work was done");

    // More changes while no daemon runs.
    update_all_hot_rows(&stack).await;

    let mut daemon = stack.daemon();
    stack.wait_drained().await;
    stack.verify(UNTOUCHED).await;
    daemon.terminate().await;
}

async fn wait_sessions_gone(stack: &Stack) {
    wait_for("the daemon's sessions to end", WAIT, || async {
        (stack.pg.daemon_sessions().await.0 == 0).then_some(())
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn daemon_connection_terminated_while_writes_continue() {
    let mut stack = cached_stack("").await;
    let mut daemon = stack.daemon();
    wait_sessions(&stack, 1).await;
    let writers = stack.writers(2, HOT);

    for _ in 0..5 {
        writers.wait_more(20).await;
        let cut = stack.pg.terminate_daemon_sessions().await;
        assert!(!cut.is_empty(), "no daemon session to terminate");
        // It reconnects by itself: a new session appears.
        wait_for("the daemon to reconnect", WAIT, || async {
            let now = stack.pg.daemon_pids().await;
            now.iter().any(|p| !cut.contains(p)).then_some(())
        })
        .await;
    }
    writers.wait_more(20).await;
    writers.stop().await;

    stack.wait_drained().await;
    stack.verify(UNTOUCHED).await;
    assert!(daemon.running(), "the daemon survived the cuts");
    daemon.terminate().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_restarted_while_the_daemon_runs() {
    let mut stack = cached_stack("").await;
    let mut daemon = stack.daemon();
    wait_sessions(&stack, 1).await;
    let writers = stack.writers(2, HOT);

    writers.wait_more(50).await;
    stack.pg.restart().await;
    // Writers reconnect and go on; so does the daemon.
    writers.wait_more(50).await;
    wait_sessions(&stack, 1).await;
    writers.stop().await;

    stack.wait_drained().await;
    stack.verify(UNTOUCHED).await;
    assert!(daemon.running(), "the daemon survived the restart");
    daemon.terminate().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_killed_with_sigkill_and_recovered_while_the_daemon_runs() {
    let mut stack = cached_stack("").await;
    let mut daemon = stack.daemon();
    wait_sessions(&stack, 1).await;
    let writers = stack.writers(2, HOT);

    writers.wait_more(50).await;
    stack.pg.kill9().await;
    stack.pg.start_again().await;
    writers.wait_more(50).await;
    wait_sessions(&stack, 1).await;
    writers.stop().await;

    stack.wait_drained().await;
    stack.verify(UNTOUCHED).await;
    assert!(daemon.running(), "the daemon survived the crash");
    daemon.terminate().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_down_for_ten_seconds_while_writes_continue() {
    let mut stack = cached_stack("").await;
    let mut daemon = stack.daemon();
    wait_sessions(&stack, 1).await;
    let writers = stack.writers(2, HOT);

    writers.wait_more(20).await;
    stack.redis.stop().await;
    let down = Instant::now();
    // Changes pile up in the outbox: nothing is taken out before Redis
    // has applied it.
    writers.wait_more(100).await;
    wait_for("events waiting in the outbox", WAIT, || async {
        (stack.outbox_len().await? > 0).then_some(())
    })
    .await;
    let outage = Duration::from_secs(10);
    tokio::time::sleep(outage.saturating_sub(down.elapsed())).await;
    println!(
        "Redis down for {:?}; {} events waiting",
        down.elapsed(),
        stack.outbox_len().await.unwrap()
    );
    stack.redis.start_again().await;
    writers.wait_more(20).await;
    writers.stop().await;

    stack.wait_drained().await;
    stack.verify(UNTOUCHED).await;
    assert!(daemon.running(), "the daemon survived the outage");
    daemon.terminate().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_daemons_share_the_work_and_one_killed_loses_nothing() {
    let mut stack = cached_stack("batch_size = 100").await;
    let mut a = stack.daemon();
    let mut b = stack.daemon();
    wait_sessions(&stack, 2).await;
    let writers = stack.writers(2, HOT);

    // Bulk changes until both daemons have applied some: FOR UPDATE SKIP
    // LOCKED hands each batch to one of them.
    let start = Instant::now();
    while a.events_applied() == 0 || b.events_applied() == 0 {
        assert!(
            start.elapsed() < WAIT,
            "both daemons should claim work: a applied {}, b applied {}",
            a.events_applied(),
            b.events_applied()
        );
        update_all_hot_rows(&stack).await;
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    println!(
        "before the kill: a applied {} events, b applied {}",
        a.events_applied(),
        b.events_applied()
    );

    // Kill one while there is work in hand.
    update_all_hot_rows(&stack).await;
    a.kill9();
    writers.wait_more(50).await;
    update_all_hot_rows(&stack).await;
    writers.stop().await;

    stack.wait_drained().await;
    println!(
        "in all: a applied {} events, b applied {}",
        a.events_applied(),
        b.events_applied()
    );
    stack.verify(UNTOUCHED).await;
    assert!(b.running(), "the surviving daemon runs");
    b.terminate().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_frozen_daemon_loses_its_claimed_rows_to_the_other_after_the_timeout() {
    let mut stack = cached_stack("pg_timeout_ms = 2000\ncanary_interval_ms = 0").await;
    let mut frozen = stack.daemon();
    wait_sessions(&stack, 1).await;
    let writers = stack.writers(2, HOT);
    writers.wait_more(50).await;
    // Freeze it until it is caught holding a claim (idle in transaction).
    let pid = frozen.pid().expect("running");
    let mut caught = false;
    for _ in 0..200 {
        servers::signal(pid, "-STOP");
        tokio::time::sleep(Duration::from_millis(20)).await;
        if stack.pg.daemon_sessions().await.1 > 0 {
            caught = true;
            break;
        }
        servers::signal(pid, "-CONT");
        tokio::time::sleep(Duration::from_millis(3)).await;
    }
    assert!(caught, "the daemon was never caught inside a batch");
    update_all_hot_rows(&stack).await;
    writers.stop().await;
    // Another daemon takes over the frozen one's rows once the server ends
    // its idle transaction; the frozen one stays frozen meanwhile.
    let other = stack.daemon();
    let start = Instant::now();
    wait_for(
        "the outbox to drain past the frozen daemon",
        WAIT,
        || async { (stack.outbox_len().await == Some(0)).then_some(()) },
    )
    .await;
    println!(
        "drained {:?} after the other daemon started",
        start.elapsed()
    );
    stack.verify(UNTOUCHED).await;
    servers::signal(pid, "-CONT");
    drop(other);
    frozen.kill9();
}
