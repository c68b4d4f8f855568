//! The debug-mode check of what a compute closure reads
//! (`smartcache::freshness`), against a real PostgreSQL: a snapshot older
//! than the call and the caller's own uncommitted writes are refused; a
//! READ COMMITTED read, or a snapshot taken inside the closure, pass.

use smartcache::freshness::{check, Probe, Unsafe, PROBE_SQL};
use smartcache_tests::db::TestDb;
use std::time::{Duration, Instant};
use tokio_postgres::Client;

async fn probe(db: &Client, called: Instant) -> Result<(), Unsafe> {
    let row = db.query_one(PROBE_SQL, &[]).await.unwrap();
    let probe = Probe {
        isolation: row.get(0),
        wrote: row.get(1),
        transaction_age_ms: row.get(2),
    };
    check(&probe, called.elapsed())
}

async fn setup(tag: &str) -> (TestDb, Client) {
    let db = TestDb::create(tag).await;
    let client = db.connect().await;
    client
        .batch_execute(
            "CREATE TABLE items (id int PRIMARY KEY, v int); INSERT INTO items VALUES (1, 1)",
        )
        .await
        .unwrap();
    (db, client)
}

#[tokio::test]
async fn a_repeatable_read_snapshot_older_than_the_call_is_refused() {
    let (_db, client) = setup("fresh_rr").await;
    client
        .batch_execute("BEGIN ISOLATION LEVEL REPEATABLE READ; SELECT v FROM items")
        .await
        .unwrap();
    tokio::time::sleep(Duration::from_millis(100)).await;
    // The compute closure is called now, and reads in that snapshot.
    let called = Instant::now();
    client.query_one("SELECT v FROM items", &[]).await.unwrap();
    let got = probe(&client, called).await;
    assert!(
        matches!(&got, Err(Unsafe::OldSnapshot { age_ms, .. }) if *age_ms >= 50),
        "{got:?}"
    );
    client.batch_execute("ROLLBACK").await.unwrap();
}

#[tokio::test]
async fn uncommitted_writes_of_the_caller_are_refused() {
    let (_db, client) = setup("fresh_own").await;
    client
        .batch_execute("BEGIN; UPDATE items SET v = 2 WHERE id = 1")
        .await
        .unwrap();
    let called = Instant::now();
    client.query_one("SELECT v FROM items", &[]).await.unwrap();
    assert_eq!(probe(&client, called).await, Err(Unsafe::UncommittedWrites));
    client.batch_execute("ROLLBACK").await.unwrap();
}

#[tokio::test]
async fn read_committed_reads_and_snapshots_taken_in_the_closure_pass() {
    let (_db, client) = setup("fresh_ok").await;
    // A READ COMMITTED transaction begun earlier: each statement sees what
    // was committed when it started.
    client
        .batch_execute("BEGIN; SELECT v FROM items")
        .await
        .unwrap();
    tokio::time::sleep(Duration::from_millis(100)).await;
    let called = Instant::now();
    client.query_one("SELECT v FROM items", &[]).await.unwrap();
    assert_eq!(probe(&client, called).await, Ok(()));
    client.batch_execute("COMMIT").await.unwrap();
    // A REPEATABLE READ transaction the closure begins itself.
    let called = Instant::now();
    client
        .batch_execute("BEGIN ISOLATION LEVEL REPEATABLE READ; SELECT v FROM items")
        .await
        .unwrap();
    assert_eq!(probe(&client, called).await, Ok(()));
    client.batch_execute("COMMIT").await.unwrap();
    // No transaction at all.
    let called = Instant::now();
    assert_eq!(probe(&client, called).await, Ok(()));
}
