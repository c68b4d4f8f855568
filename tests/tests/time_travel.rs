//! Redis or PostgreSQL going back in time never brings a stale value back
//! for more than a moment: a Redis restarted from an older snapshot or
//! append-only file, a PostgreSQL restored from a base backup. Each test
//! owns its servers and ends with "every cached entry equals the database".

use redis::AsyncCommands;
use smartcache_tests::servers::{wait_for, Redis, Stack, WAIT};
use std::time::Duration;

/// Waits until `item:{id}` has no value.
async fn wait_gone(stack: &Stack, id: i64) {
    let key = stack.ns.value_key(&format!("item:{id}"));
    let con = stack.redis_con().await;
    wait_for(&format!("{key} to be deleted"), WAIT, || {
        let mut con = con.clone();
        let key = key.clone();
        async move {
            let exists: bool = con.exists(&key).await.unwrap_or(true);
            (!exists).then_some(())
        }
    })
    .await;
}

/// Caches a stale-to-be value, snapshots Redis, changes the row and waits
/// for the daemon to delete the key: the snapshot now holds a value the
/// database no longer has.
async fn invalidated_after_snapshot(
    stack: &Stack,
    snapshot: impl std::future::Future<Output = ()>,
) {
    let mut con = stack.redis_con().await;
    let _: () = con
        .set(stack.ns.value_key("item:1"), "OLDVALUE")
        .await
        .unwrap();
    snapshot.await;
    stack
        .pg
        .connect()
        .await
        .batch_execute("UPDATE items SET val = val + 1 WHERE id = 1")
        .await
        .unwrap();
    wait_gone(stack, 1).await;
    // The batch was recorded (and the monitor had a look) before the crash.
    tokio::time::sleep(Duration::from_millis(1500)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_restarted_from_its_snapshot_brings_no_invalidated_value_back() {
    let mut stack = Stack::start(100, "canary_interval_ms = 0").await;
    stack.fill().await;
    let mut daemon = stack.daemon();
    invalidated_after_snapshot(&stack, stack.redis.save()).await;
    stack.redis.shutdown_nosave().await;
    stack.redis.start_again().await;
    // Detected within seconds of Redis answering again.
    wait_gone(&stack, 1).await;
    stack.wait_drained().await;
    let verdict = stack.verify(std::iter::empty()).await;
    println!("{verdict:?}");
    assert!(daemon.running());
    assert!(
        daemon.log().contains("went back in time"),
        "the daemon says what happened:\n{}",
        daemon.log()
    );
    daemon.terminate().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_restarted_from_an_older_append_only_file_brings_no_invalidated_value_back() {
    let mut stack = Stack::start_on(100, "canary_interval_ms = 0", Redis::start_with_aof()).await;
    stack.fill().await;
    let mut daemon = stack.daemon();
    let copy = tempfile::tempdir().unwrap();
    let aof = stack.redis.dir().join("appendonlydir");
    invalidated_after_snapshot(&stack, async {
        // What an `everysec` file holds after a crash that lost its last
        // second: the state before the deletion.
        tokio::time::sleep(Duration::from_millis(1200)).await;
        copy_dir(&aof, copy.path());
    })
    .await;
    stack.redis.kill9();
    std::fs::remove_dir_all(&aof).unwrap();
    copy_dir(copy.path(), &aof);
    stack.redis.start_again().await;
    wait_gone(&stack, 1).await;
    stack.wait_drained().await;
    stack.verify(std::iter::empty()).await;
    daemon.terminate().await;
}

fn copy_dir(from: &std::path::Path, to: &std::path::Path) {
    std::fs::create_dir_all(to).unwrap();
    for entry in std::fs::read_dir(from).unwrap() {
        let entry = entry.unwrap();
        std::fs::copy(entry.path(), to.join(entry.file_name())).unwrap();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_restored_from_a_base_backup_leaves_no_value_of_the_lost_commits() {
    let mut stack = Stack::start(100, "canary_interval_ms = 0").await;
    stack.fill().await;
    let mut daemon = stack.daemon();
    let backup = stack.pg.base_backup().await;
    // Commits the restore will lose: the daemon invalidates them and the
    // library caches the new rows.
    stack
        .pg
        .connect()
        .await
        .batch_execute("UPDATE items SET val = val + 100 WHERE id <= 50")
        .await
        .unwrap();
    stack.wait_drained().await;
    wait_gone(&stack, 1).await;
    stack.fill().await;
    tokio::time::sleep(Duration::from_millis(1500)).await;
    stack.pg.restore(&backup).await;
    // The database has val = 0 again for ids 1..=50; the cache held 100.
    let stale_seen = wait_for("the cache to match the restored database", WAIT, || async {
        let db = stack.pg.connect().await;
        let val: i64 = db
            .query_one("SELECT val FROM items WHERE id = 1", &[])
            .await
            .ok()?
            .get(0);
        let cached: Option<String> = stack
            .redis_con()
            .await
            .get(stack.ns.value_key("item:1"))
            .await
            .ok()?;
        (cached.is_none() || cached == Some(val.to_string())).then_some(cached)
    })
    .await;
    println!("item:1 after the restore: {stale_seen:?}");
    stack.wait_drained().await;
    // Every value was dropped: nothing untouched is left to check.
    stack.verify(std::iter::empty()).await;
    assert!(
        daemon.log().contains("went back in time"),
        "{}",
        daemon.log()
    );
    daemon.terminate().await;
}
