//! Each script, and the interleavings the guarantees rest on, against a real
//! Redis: the server at `SMARTCACHE_TEST_REDIS_URL` (default
//! `redis://127.0.0.1:6379/0`), a Redis Cluster when
//! `SMARTCACHE_TEST_REDIS_CLUSTER=1` (`scripts/test.sh` runs them on both).
//! Each test has its own namespace.

use std::slice::from_ref;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use redis::{RedisResult, Value};

use super::*;
use crate::conn::{Conn, Options};
use crate::describe::describe;
use crate::fill::{acquire, fill, new_token, release, store, Acquired};
use crate::invalidate::{drain, drop_all_values, drop_entries, forget, invalidate};
use crate::keys::{DepId, EntryKeys, Namespace, TableName};
use crate::markers::{check_markers, set_markers, Markers};
use crate::registry::{register, registrants};
use crate::sweep::sweep;
use crate::upgrade::upgrade;

const LEASE: Duration = Duration::from_secs(5);

fn dep(row: &str) -> DepId {
    TableName::new("public", "products").row_dep(&[row])
}

struct Fx {
    ns: Namespace,
    con: Conn,
}

impl Fx {
    fn new(test: &str) -> Self {
        static N: AtomicU64 = AtomicU64::new(0);
        let url = std::env::var("SMARTCACHE_TEST_REDIS_URL")
            .unwrap_or_else(|_| "redis://127.0.0.1:6379/0".into());
        let options = Options {
            cluster: std::env::var("SMARTCACHE_TEST_REDIS_CLUSTER").is_ok_and(|v| v == "1"),
            ..Options::default()
        };
        let ns = format!(
            "core_{test}_{}_{}",
            std::process::id(),
            N.fetch_add(1, Ordering::Relaxed)
        );
        Self {
            ns: Namespace::new(&ns).unwrap(),
            con: Conn::open(&url, &options).unwrap(),
        }
    }

    async fn get(&mut self, key: &str) -> Option<String> {
        redis::cmd("GET")
            .arg(key)
            .query_async(&mut self.con)
            .await
            .unwrap()
    }

    async fn exists(&mut self, key: &str) -> bool {
        redis::cmd("EXISTS")
            .arg(key)
            .query_async::<u64>(&mut self.con)
            .await
            .unwrap()
            == 1
    }

    async fn members(&mut self, key: &str) -> Vec<String> {
        let mut m: Vec<String> = redis::cmd("SMEMBERS")
            .arg(key)
            .query_async(&mut self.con)
            .await
            .unwrap();
        m.sort();
        m
    }

    async fn registrants(&mut self, dep: &DepId) -> Vec<String> {
        registrants(&mut self.con, &self.ns.clone(), dep)
            .await
            .unwrap()
    }

    async fn stamp(&mut self, key: &str) -> Option<String> {
        redis::cmd("HGET")
            .arg(self.ns.stamps_key(key))
            .arg(key)
            .query_async(&mut self.con)
            .await
            .unwrap()
    }

    async fn cmd(&mut self, args: &[&str]) {
        redis::cmd(args[0])
            .arg(&args[1..])
            .query_async::<Value>(&mut self.con)
            .await
            .unwrap();
    }

    /// Runs `script` on one entry's keys and `args`.
    async fn run<T: redis::FromRedisValue>(
        &mut self,
        script: &redis::Script,
        keys: &[&str],
        args: &[&str],
    ) -> RedisResult<T> {
        let mut inv = script.prepare_invoke();
        inv.key(keys).arg(args);
        inv.invoke_async(&mut self.con).await
    }

    async fn cleanup(mut self) {
        let all = self.con.scan_all(&self.ns.match_all()).await.unwrap();
        crate::invalidate::unlink(&mut self.con, all).await.unwrap();
    }
}

#[tokio::test]
async fn acquire_takes_the_lease_once_and_registers_the_dependencies() {
    let mut fx = Fx::new("acquire");
    let (ns, dep) = (fx.ns.clone(), dep("1"));
    let e = ns.entry_keys("p:1");
    let got = acquire(&mut fx.con, &ns, "p:1", "a", LEASE, from_ref(&dep)).await;
    assert_eq!(got.unwrap(), Acquired::Lease);
    let got = acquire(&mut fx.con, &ns, "p:1", "b", LEASE, from_ref(&dep)).await;
    assert_eq!(got.unwrap(), Acquired::HeldByOther);
    assert_eq!(fx.get(&e.lease).await.as_deref(), Some("a"));
    assert_eq!(fx.registrants(&dep).await, ["p:1"]);
    fx.cleanup().await;
}

#[tokio::test]
async fn acquire_returns_a_cached_value_and_takes_no_lease() {
    let mut fx = Fx::new("acquire_hit");
    let ns = fx.ns.clone();
    store(&mut fx.con, &ns, "p:1", b"v", None, LEASE, &[])
        .await
        .unwrap();
    let got = acquire(&mut fx.con, &ns, "p:1", "a", LEASE, &[]).await;
    assert_eq!(got.unwrap(), Acquired::Value(b"v".to_vec()));
    assert!(!fx.exists(&ns.lease_key("p:1")).await);
    fx.cleanup().await;
}

#[tokio::test]
async fn fill_stores_under_its_token_and_drops_the_lease() {
    let mut fx = Fx::new("fill");
    let ns = fx.ns.clone();
    let e = ns.entry_keys("p:1");
    acquire(&mut fx.con, &ns, "p:1", "a", LEASE, &[dep("1")])
        .await
        .unwrap();
    assert!(!fill(&mut fx.con, &ns, "p:1", "b", b"x", None, &[])
        .await
        .unwrap());
    assert!(fill(&mut fx.con, &ns, "p:1", "a", b"v", None, &[])
        .await
        .unwrap());
    assert_eq!(fx.get(&e.value).await.as_deref(), Some("v"));
    assert!(!fx.exists(&e.lease).await);
    assert!(fx.stamp("p:1").await.is_some(), "birth stamp");
    fx.cleanup().await;
}

#[tokio::test]
async fn fill_with_a_ttl_expires_the_value_and_the_sweeper_takes_the_rest() {
    let mut fx = Fx::new("fill_ttl");
    let (ns, dep) = (fx.ns.clone(), dep("1"));
    let e = ns.entry_keys("p:1");
    acquire(&mut fx.con, &ns, "p:1", "a", LEASE, from_ref(&dep))
        .await
        .unwrap();
    let ttl = Some(Duration::from_millis(300));
    assert!(fill(&mut fx.con, &ns, "p:1", "a", b"v", ttl, &[])
        .await
        .unwrap());
    let pttl: i64 = redis::cmd("PTTL")
        .arg(&e.value)
        .query_async(&mut fx.con)
        .await
        .unwrap();
    assert!((1..=300).contains(&pttl), "{pttl}");
    while fx.exists(&e.value).await {
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(sweep(&mut fx.con, &ns).await.unwrap(), 1);
    assert_eq!(fx.registrants(&dep).await, Vec::<String>::new());
    assert_eq!(fx.stamp("p:1").await, None, "the stamp goes with the sweep");
    fx.cleanup().await;
}

#[tokio::test]
async fn fill_whose_lease_was_dropped_by_an_invalidation_is_refused() {
    let mut fx = Fx::new("fill_dropped");
    let (ns, dep) = (fx.ns.clone(), dep("1"));
    acquire(&mut fx.con, &ns, "p:1", "a", LEASE, from_ref(&dep))
        .await
        .unwrap();
    // The commit lands and is invalidated while the value is computed.
    assert_eq!(invalidate(&mut fx.con, &ns, &[], &[dep]).await.unwrap(), 0);
    assert!(!fill(&mut fx.con, &ns, "p:1", "a", b"stale", None, &[])
        .await
        .unwrap());
    assert_eq!(fx.get(&ns.value_key("p:1")).await, None);
    fx.cleanup().await;
}

#[tokio::test]
async fn fill_after_a_store_is_refused() {
    let mut fx = Fx::new("fill_after_store");
    let ns = fx.ns.clone();
    acquire(&mut fx.con, &ns, "p:1", "a", LEASE, &[])
        .await
        .unwrap();
    store(&mut fx.con, &ns, "p:1", b"newer", None, LEASE, &[])
        .await
        .unwrap();
    assert!(!fill(&mut fx.con, &ns, "p:1", "a", b"older", None, &[])
        .await
        .unwrap());
    assert_eq!(fx.get(&ns.value_key("p:1")).await.as_deref(), Some("newer"));
    fx.cleanup().await;
}

#[tokio::test]
async fn release_is_for_the_token_holder_and_leaves_no_lone_stamp() {
    let mut fx = Fx::new("release");
    let ns = fx.ns.clone();
    let e = ns.entry_keys("p:1");
    acquire(&mut fx.con, &ns, "p:1", "a", LEASE, &[dep("1")])
        .await
        .unwrap();
    assert!(!release(&mut fx.con, &ns, "p:1", "b").await.unwrap());
    assert!(fx.exists(&e.lease).await);
    assert!(release(&mut fx.con, &ns, "p:1", "a").await.unwrap());
    assert!(!fx.exists(&e.lease).await);
    assert_eq!(fx.stamp("p:1").await, None, "no value, so no stamp");
    let got = acquire(&mut fx.con, &ns, "p:1", "c", LEASE, &[])
        .await
        .unwrap();
    assert_eq!(got, Acquired::Lease, "the next filler need not wait");
    fx.cleanup().await;
}

#[tokio::test]
async fn store_registers_under_its_dependencies() {
    let mut fx = Fx::new("store");
    let ns = fx.ns.clone();
    let (one, two) = (dep("1"), dep("2"));
    store(&mut fx.con, &ns, "k", b"v1", None, LEASE, from_ref(&one))
        .await
        .unwrap();
    store(&mut fx.con, &ns, "k", b"v2", None, LEASE, from_ref(&two))
        .await
        .unwrap();
    assert_eq!(fx.registrants(&two).await, ["k"]);
    assert_eq!(fx.get(&ns.value_key("k")).await.as_deref(), Some("v2"));
    assert!(fx.stamp("k").await.is_some());
    fx.cleanup().await;
}

/// Issue 11, item 5, at the core: the registration comes before the value.
#[tokio::test]
async fn store_whose_registration_fails_stores_nothing_and_gives_the_lease_back() {
    let mut fx = Fx::new("store_unregistered");
    let ns = fx.ns.clone();
    let table = TableName::new("public", "products").table_dep();
    fx.cmd(&["SET", &ns.dep_set_key(&table), "another program's"])
        .await;
    let deps = [dep("1"), table];
    let got = store(&mut fx.con, &ns, "k", b"v", None, LEASE, &deps).await;
    assert!(got.is_err(), "{got:?}");
    assert!(
        !fx.exists(&ns.value_key("k")).await,
        "no unregistered value"
    );
    assert!(!fx.exists(&ns.lease_key("k")).await);
    fx.cleanup().await;
}

/// The sweeper fenced `k` to take it out of a dependency; a `set` of `k`
/// under that dependency meanwhile must not register before the removal.
#[tokio::test]
async fn a_store_waits_for_the_sweepers_fence_so_its_registration_survives_the_removal() {
    let mut fx = Fx::new("store_fence");
    let ns = fx.ns.clone();
    let table = TableName::new("public", "products").table_dep();
    let set = ns.dep_set_key(&table);
    fx.cmd(&["SADD", &set, "k"]).await;
    fx.cmd(&["SET", &ns.lease_key("k"), "sweep:t", "PX", "10000"])
        .await;
    let (mut con, writer_ns, deps) = (fx.con.clone(), ns.clone(), [table.clone()]);
    let writer =
        tokio::spawn(
            async move { store(&mut con, &writer_ns, "k", b"v", None, LEASE, &deps).await },
        );
    tokio::time::sleep(Duration::from_millis(50)).await;
    // The sweeper's removal, then its fence lifted.
    fx.cmd(&["SREM", &set, "k"]).await;
    fx.cmd(&["DEL", &ns.lease_key("k")]).await;
    assert!(writer.await.unwrap().unwrap(), "stored");
    assert_eq!(
        fx.members(&set).await,
        ["k"],
        "the store's registration outlives the sweeper's removal"
    );
    fx.cleanup().await;
}

#[tokio::test]
async fn drop_deletes_value_lease_and_stamp_of_each_entry_and_counts_values() {
    let mut fx = Fx::new("drop");
    let ns = fx.ns.clone();
    store(&mut fx.con, &ns, "a", b"v", None, LEASE, &[dep("1")])
        .await
        .unwrap();
    acquire(&mut fx.con, &ns, "b", "t", LEASE, &[])
        .await
        .unwrap();
    let (a, b) = (ns.entry_keys("a"), ns.entry_keys("b"));
    assert!(fx.stamp("a").await.is_some());
    let removed: u64 = if fx.con.is_cluster() {
        // Two entries of two slots: one call each.
        fx.run::<u64>(&DROP, &a.all(), &["a"]).await.unwrap()
            + fx.run::<u64>(&DROP, &b.all(), &["b"]).await.unwrap()
    } else {
        let keys = [a.all(), b.all()].concat();
        fx.run(&DROP, &keys, &["a", "b"]).await.unwrap()
    };
    assert_eq!(removed, 1, "one value; a lease is not a value");
    for key in [&a.value, &a.lease, &b.value, &b.lease] {
        assert!(!fx.exists(key).await, "{key}");
    }
    assert_eq!(fx.stamp("a").await, None);
    fx.cleanup().await;
}

/// KEYS and ARGV (after the token) of `drain.lua` for one row dependency.
fn drain_args(ns: &Namespace, dep: &DepId) -> ([String; 4], String) {
    let keys = ns.dep_keys(dep);
    let (bucket, field) = keys.bucket.unwrap();
    (
        [bucket, keys.set, keys.legacy_drain, keys.drains],
        format!("#{field}"),
    )
}

/// What `drain.lua` returns per dependency: members, drains entries.
type Taken = Vec<(Vec<String>, Vec<String>)>;

#[tokio::test]
async fn register_keeps_a_rows_first_key_in_its_bucket_and_moves_both_to_the_set_on_the_second() {
    let mut fx = Fx::new("register");
    let (ns, dep) = (fx.ns.clone(), dep("1"));
    let keys = ns.dep_keys(&dep);
    let (bucket, field) = keys.bucket.clone().unwrap();
    register(&mut fx.con, &ns, "a", from_ref(&dep))
        .await
        .unwrap();
    register(&mut fx.con, &ns, "a", from_ref(&dep))
        .await
        .unwrap();
    let held: Option<String> = redis::cmd("HGET")
        .arg(&bucket)
        .arg(&field)
        .query_async(&mut fx.con)
        .await
        .unwrap();
    assert_eq!(held.as_deref(), Some("a"));
    assert!(!fx.exists(&keys.set).await, "one registrant: no set");
    register(&mut fx.con, &ns, "b", from_ref(&dep))
        .await
        .unwrap();
    assert_eq!(fx.members(&keys.set).await, ["a", "b"]);
    assert!(!fx.exists(&bucket).await, "the field moved to the set");
    register(&mut fx.con, &ns, "c", from_ref(&dep))
        .await
        .unwrap();
    assert_eq!(fx.registrants(&dep).await, ["a", "b", "c"]);
    let table = TableName::new("public", "products").table_dep();
    register(&mut fx.con, &ns, "a", from_ref(&table))
        .await
        .unwrap();
    assert_eq!(fx.members(&ns.dep_set_key(&table)).await, ["a"]);
    fx.cleanup().await;
}

#[tokio::test]
async fn drain_then_drop_then_forget() {
    let mut fx = Fx::new("drain_drop_forget");
    let (ns, dep) = (fx.ns.clone(), dep("1"));
    store(&mut fx.con, &ns, "p:1", b"v", None, LEASE, from_ref(&dep))
        .await
        .unwrap();
    let (keys, field) = drain_args(&ns, &dep);
    let [_, set, _, drains] = &keys;
    let taken: Taken = fx
        .run(&DRAIN, &keys.each_ref().map(String::as_str), &["t", &field])
        .await
        .unwrap();
    assert_eq!(taken, [(vec!["p:1".into()], vec!["t".into()])]);
    assert_eq!(
        fx.registrants(&dep).await,
        Vec::<String>::new(),
        "taken whole"
    );
    assert!(!fx.exists(set).await);
    // A registration made now lands in the bucket anew and is kept.
    acquire(&mut fx.con, &ns, "p:2", "a", LEASE, from_ref(&dep))
        .await
        .unwrap();
    // The whole invalidation: what this call and the one before took goes, then is forgotten.
    assert_eq!(
        invalidate(&mut fx.con, &ns, &[], from_ref(&dep))
            .await
            .unwrap(),
        1
    );
    assert!(!fx.exists(drains).await, "forgotten once dropped");
    assert!(!fx.exists(&ns.value_key("p:1")).await);
    assert!(
        !fx.exists(&ns.lease_key("p:2")).await,
        "the fill in flight is defeated"
    );
    fx.cleanup().await;
}

#[tokio::test]
async fn drain_takes_the_bucket_field_and_the_set_together() {
    let mut fx = Fx::new("drain_both");
    let (ns, dep) = (fx.ns.clone(), dep("1"));
    let keys = ns.dep_keys(&dep);
    // A set written by an older library or another program, and a bucket
    // field of this one.
    fx.cmd(&["SADD", &keys.set, "old"]).await;
    let (bucket, field) = keys.bucket.clone().unwrap();
    fx.cmd(&["HSET", &bucket, &field, "new"]).await;
    let (args, f) = drain_args(&ns, &dep);
    let mut taken: Taken = fx
        .run(&DRAIN, &args.each_ref().map(String::as_str), &["t", &f])
        .await
        .unwrap();
    taken[0].0.sort();
    assert_eq!(
        taken,
        [(vec!["new".into(), "old".into()], vec!["t".into()])]
    );
    assert_eq!(fx.registrants(&dep).await, Vec::<String>::new());
    fx.cleanup().await;
}

#[tokio::test]
async fn members_a_dead_daemon_left_in_a_drain_set_go_with_the_next_invalidation() {
    let mut fx = Fx::new("drain_replay");
    let (ns, dep) = (fx.ns.clone(), dep("1"));
    store(&mut fx.con, &ns, "p:1", b"v", None, LEASE, from_ref(&dep))
        .await
        .unwrap();
    let (keys, field) = drain_args(&ns, &dep);
    // Drained, then the daemon died before dropping.
    let _: Value = fx
        .run(
            &DRAIN,
            &keys.each_ref().map(String::as_str),
            &["dead", &field],
        )
        .await
        .unwrap();
    assert!(fx.exists(&keys[3]).await);
    assert_eq!(invalidate(&mut fx.con, &ns, &[], &[dep]).await.unwrap(), 1);
    assert!(!fx.exists(&ns.value_key("p:1")).await);
    assert!(!fx.exists(&keys[3]).await, "the dead call's entry is gone");
    fx.cleanup().await;
}

/// An invalidation of a row that died between its drain and its drop; a
/// TRUNCATE of the table then finds the row in the drains and deletes the
/// entry the dead call took.
#[tokio::test]
async fn a_truncate_finds_what_a_dead_invalidation_took_from_a_row() {
    let mut fx = Fx::new("truncate_drained");
    let (ns, dep) = (fx.ns.clone(), dep("7"));
    store(&mut fx.con, &ns, "p:7", b"old", None, LEASE, from_ref(&dep))
        .await
        .unwrap();
    let _dead = drain(&mut fx.con, &ns, from_ref(&dep)).await.unwrap();
    let table = TableName::new("public", "products");
    let deps = crate::registry::row_deps(&mut fx.con, &ns, &table, &|| {})
        .await
        .unwrap();
    assert_eq!(deps, [dep], "the drained row is one of the table's");
    invalidate(&mut fx.con, &ns, &[], &deps).await.unwrap();
    assert_eq!(fx.get(&ns.value_key("p:7")).await, None);
    fx.cleanup().await;
}

/// Issue 11, item 4: two invalidations of one dependency overlap, and the
/// second dies between its drain and its drop. The first one's clean-up
/// must not make the replay of the second miss the fill that started
/// between the two commits.
#[tokio::test]
async fn a_drain_that_died_before_its_drop_is_replayed_after_a_concurrent_one_finished() {
    let mut fx = Fx::new("drain_race");
    let (ns, dep) = (fx.ns.clone(), dep("1"));
    let deps = from_ref(&dep);
    let mut db = "v1";
    store(&mut fx.con, &ns, "p:1", db.as_bytes(), None, LEASE, deps)
        .await
        .unwrap();
    // Commit 1; its invalidation A takes p:1 and drops it.
    let a = drain(&mut fx.con, &ns, deps).await.unwrap();
    drop_entries(&mut fx.con, &ns, a.members()).await.unwrap();
    // A fill of p:1 takes its lease, registers, and reads the row.
    let token = new_token();
    let got = acquire(&mut fx.con, &ns, "p:1", &token, LEASE, deps).await;
    assert_eq!(got.unwrap(), Acquired::Lease);
    let read = db;
    // Commit 2; its invalidation B drains, then dies before its drop.
    db = "v2";
    let _dead = drain(&mut fx.con, &ns, deps).await.unwrap();
    // A finishes; B's batch is replayed, with the same dependencies.
    forget(&mut fx.con, &ns, &a).await.unwrap();
    invalidate(&mut fx.con, &ns, &[], deps).await.unwrap();
    // The fill stores what it read before commit 2.
    let stored = fill(&mut fx.con, &ns, "p:1", &token, read.as_bytes(), None, deps)
        .await
        .unwrap();
    let cached = fx.get(&ns.value_key("p:1")).await;
    assert!(
        cached.is_none() || cached.as_deref() == Some(db),
        "stale value stored: {cached:?}, the database holds {db:?}"
    );
    assert!(!stored, "the fill that read before commit 2 is refused");
    fx.cleanup().await;
}

/// An older daemon or library, mid-upgrade, drains into the one shared
/// drain set: its members are taken like the others, and the set goes.
#[tokio::test]
async fn members_of_the_legacy_drain_set_go_with_the_next_invalidation() {
    let mut fx = Fx::new("drain_legacy");
    let (ns, dep) = (fx.ns.clone(), dep("1"));
    store(&mut fx.con, &ns, "p:1", b"v", None, LEASE, from_ref(&dep))
        .await
        .unwrap();
    let keys = ns.dep_keys(&dep);
    // What an old drain left: the key moved from the bucket to the set.
    let (bucket, _) = keys.bucket.clone().unwrap();
    fx.cmd(&["DEL", &bucket]).await;
    fx.cmd(&["SADD", &keys.legacy_drain, "p:1"]).await;
    assert_eq!(invalidate(&mut fx.con, &ns, &[], &[dep]).await.unwrap(), 1);
    assert!(!fx.exists(&ns.value_key("p:1")).await);
    assert!(!fx.exists(&keys.legacy_drain).await);
    assert!(!fx.exists(&keys.drains).await);
    fx.cleanup().await;
}

#[tokio::test]
async fn drain_counts_a_dependency_key_of_another_type_as_empty() {
    let mut fx = Fx::new("drain_not_a_set");
    let (ns, dep) = (fx.ns.clone(), dep("1"));
    let (keys, field) = drain_args(&ns, &dep);
    fx.cmd(&["SET", &keys[1], "written by another program"])
        .await;
    fx.cmd(&["SET", &keys[0], "also"]).await;
    fx.cmd(&["SET", &keys[2], "and this"]).await;
    fx.cmd(&["HSET", &keys[3], "x", "not MessagePack"]).await;
    let taken: Taken = fx
        .run(&DRAIN, &keys.each_ref().map(String::as_str), &["t", &field])
        .await
        .unwrap();
    assert_eq!(taken, [(vec![], vec!["x".into()])]);
    assert!(!fx.exists(&keys[1]).await);
    assert!(!fx.exists(&keys[2]).await);
    fx.cleanup().await;
}

#[tokio::test]
async fn fence_takes_only_entries_with_neither_value_nor_lease() {
    let mut fx = Fx::new("fence");
    let ns = fx.ns.clone();
    store(&mut fx.con, &ns, "live", b"v", None, LEASE, &[])
        .await
        .unwrap();
    acquire(&mut fx.con, &ns, "filling", "a", LEASE, &[])
        .await
        .unwrap();
    let gone = ns.entry_keys("gone");
    fx.cmd(&["HSET", &gone.stamps, "gone", "1"]).await;
    for (key, want) in [("live", 0), ("filling", 0), ("gone", 1)] {
        let e = ns.entry_keys(key);
        let fenced: Vec<u8> = fx
            .run(&FENCE, &e.all(), &["sweep:x", "10000", key, ""])
            .await
            .unwrap();
        assert_eq!(fenced, [want], "{key}");
    }
    assert_eq!(fx.get(&gone.lease).await.as_deref(), Some("sweep:x"));
    assert_eq!(fx.stamp("gone").await, None, "a fenced entry's stamp goes");
    assert!(fx.stamp("live").await.is_some());
    fx.cleanup().await;
}

#[tokio::test]
async fn fill_cannot_start_while_the_sweeper_fences_the_entry() {
    let mut fx = Fx::new("fence_vs_fill");
    let ns = fx.ns.clone();
    let e: EntryKeys = ns.entry_keys("p:1");
    let fenced: Vec<u8> = fx
        .run(&FENCE, &e.all(), &["sweep:x", "10000", "p:1", ""])
        .await
        .unwrap();
    assert_eq!(fenced, [1]);
    let got = acquire(&mut fx.con, &ns, "p:1", "a", LEASE, &[dep("1")]).await;
    assert_eq!(got.unwrap(), Acquired::HeldByOther);
    assert!(release(&mut fx.con, &ns, "p:1", "sweep:x").await.unwrap());
    let got = acquire(&mut fx.con, &ns, "p:1", "a", LEASE, &[dep("1")]).await;
    assert_eq!(got.unwrap(), Acquired::Lease);
    fx.cleanup().await;
}

#[tokio::test]
async fn a_drop_leaves_the_sweepers_fence_so_no_fill_registers_before_the_removal() {
    // The sweeper fenced `k` while walking row 2's registrations when an
    // invalidation of row 1 drops `k`. A fill that started now would
    // register under row 2 and then lose that registration to the
    // sweeper's removal; it must wait for the fence to be lifted.
    let mut fx = Fx::new("fence_vs_drop");
    let ns = fx.ns.clone();
    store(
        &mut fx.con,
        &ns,
        "k",
        b"v",
        None,
        LEASE,
        &[dep("1"), dep("2")],
    )
    .await
    .unwrap();
    fx.cmd(&["UNLINK", &ns.value_key("k")]).await;
    let e = ns.entry_keys("k");
    let fenced: Vec<u8> = fx
        .run(&FENCE, &e.all(), &["sweep:x", "10000", "k", ""])
        .await
        .unwrap();
    assert_eq!(fenced, [1]);
    let _: u64 = fx.run(&DROP, &e.all(), &["k"]).await.unwrap();
    let got = acquire(&mut fx.con, &ns, "k", "a", LEASE, &[dep("2")]).await;
    assert_eq!(
        got.unwrap(),
        Acquired::HeldByOther,
        "a fill started under the fence"
    );
    assert!(release(&mut fx.con, &ns, "k", "sweep:x").await.unwrap());
    let got = acquire(&mut fx.con, &ns, "k", "a", LEASE, &[dep("2")]).await;
    assert_eq!(got.unwrap(), Acquired::Lease);
    fx.cleanup().await;
}

#[tokio::test]
async fn fence_takes_a_live_entry_only_when_its_fingerprint_rules_the_dependency_out() {
    let mut fx = Fx::new("fence_live");
    let ns = fx.ns.clone();
    let mine: Vec<DepId> = (0..3).map(|i| dep(&i.to_string())).collect();
    store(&mut fx.con, &ns, "k", b"v", None, LEASE, &mine)
        .await
        .unwrap();
    let e = ns.entry_keys("k");
    // The script's bit arithmetic agrees with `may_contain`, and never rules
    // out a dependency the value has.
    let fp = crate::fingerprint::fingerprint(&mine);
    let mut ruled_out = 0;
    for i in 0..300 {
        let d = dep(&i.to_string());
        let p = crate::fingerprint::probe(&d);
        let probe = crate::fingerprint::probe_hex(p);
        let fenced: Vec<u8> = fx
            .run(&FENCE, &e.all(), &["sweep:x", "10000", "k", &probe])
            .await
            .unwrap();
        let want = if crate::fingerprint::may_contain(&fp, p) {
            0
        } else {
            2
        };
        assert_eq!(fenced, [want], "{d}");
        if i < 3 {
            assert_eq!(want, 0, "{d} is a dependency of the value");
        }
        if want == 2 {
            ruled_out += 1;
            assert!(release(&mut fx.con, &ns, "k", "sweep:x").await.unwrap());
        }
    }
    assert!(ruled_out >= 290, "{ruled_out}");
    assert!(
        fx.stamp("k").await.is_some(),
        "a live entry keeps its stamp"
    );
    // A lease (a fill, another fence) or a stamp without a fingerprint (an
    // older version's) keeps the registration.
    let other = crate::fingerprint::probe_hex(crate::fingerprint::probe(&dep("9999")));
    fx.cmd(&["SET", &e.lease, "fill"]).await;
    let fenced: Vec<u8> = fx
        .run(&FENCE, &e.all(), &["sweep:x", "10000", "k", &other])
        .await
        .unwrap();
    assert_eq!(fenced, [0], "leased");
    fx.cmd(&["DEL", &e.lease]).await;
    fx.cmd(&["HSET", &e.stamps, "k", "1700000000000"]).await;
    let fenced: Vec<u8> = fx
        .run(&FENCE, &e.all(), &["sweep:x", "10000", "k", &other])
        .await
        .unwrap();
    assert_eq!(fenced, [0], "no fingerprint");
    fx.cleanup().await;
}

#[tokio::test]
async fn sweep_removes_a_live_entry_from_dependencies_its_value_no_longer_has() {
    let mut fx = Fx::new("sweep_moved");
    let ns = fx.ns.clone();
    // Set under rows 1 and 2, then under rows 2 and 3; another key takes
    // row 1 too, so row 1's registrants are in its set.
    store(
        &mut fx.con,
        &ns,
        "k",
        b"v1",
        None,
        LEASE,
        &[dep("1"), dep("2")],
    )
    .await
    .unwrap();
    store(
        &mut fx.con,
        &ns,
        "k",
        b"v2",
        None,
        LEASE,
        &[dep("2"), dep("3")],
    )
    .await
    .unwrap();
    store(&mut fx.con, &ns, "other", b"v", None, LEASE, &[dep("1")])
        .await
        .unwrap();
    assert_eq!(fx.registrants(&dep("1")).await, ["k", "other"]);
    assert_eq!(sweep(&mut fx.con, &ns).await.unwrap(), 1);
    assert_eq!(fx.registrants(&dep("1")).await, ["other"]);
    assert_eq!(fx.registrants(&dep("2")).await, ["k"]);
    assert_eq!(fx.registrants(&dep("3")).await, ["k"]);
    assert_eq!(fx.get(&ns.value_key("k")).await.as_deref(), Some("v2"));
    assert!(!fx.exists(&ns.lease_key("k")).await, "the fence is lifted");
    assert!(fx.stamp("k").await.is_some());
    assert_eq!(sweep(&mut fx.con, &ns).await.unwrap(), 0);
    fx.cleanup().await;
}

#[tokio::test]
async fn sweep_leaves_the_registrations_of_a_fill_in_flight_under_new_dependencies() {
    let mut fx = Fx::new("sweep_refill");
    let ns = fx.ns.clone();
    // Filled under row 1 with a TTL; expired; a fill under row 2 holds the
    // lease (and the old stamp is still there).
    let ttl = Some(Duration::from_millis(50));
    assert_eq!(
        acquire(&mut fx.con, &ns, "k", "a", LEASE, &[dep("1")])
            .await
            .unwrap(),
        Acquired::Lease
    );
    assert!(fill(&mut fx.con, &ns, "k", "a", b"v1", ttl, &[dep("1")])
        .await
        .unwrap());
    tokio::time::sleep(Duration::from_millis(120)).await;
    assert_eq!(
        acquire(&mut fx.con, &ns, "k", "b", LEASE, &[dep("2")])
            .await
            .unwrap(),
        Acquired::Lease
    );
    assert_eq!(sweep(&mut fx.con, &ns).await.unwrap(), 0);
    assert_eq!(
        fx.registrants(&dep("2")).await,
        ["k"],
        "the fill's registration"
    );
    assert!(fill(&mut fx.con, &ns, "k", "b", b"v2", None, &[dep("2")])
        .await
        .unwrap());
    assert_eq!(sweep(&mut fx.con, &ns).await.unwrap(), 1);
    assert_eq!(fx.registrants(&dep("1")).await, Vec::<String>::new());
    assert_eq!(fx.registrants(&dep("2")).await, ["k"]);
    fx.cleanup().await;
}

#[tokio::test]
async fn sweep_keeps_a_fill_in_flight_and_removes_entries_that_are_gone() {
    let mut fx = Fx::new("sweep");
    let (ns, dep) = (fx.ns.clone(), dep("1"));
    acquire(&mut fx.con, &ns, "filling", "a", LEASE, from_ref(&dep))
        .await
        .unwrap();
    store(
        &mut fx.con,
        &ns,
        "evicted",
        b"v",
        None,
        LEASE,
        from_ref(&dep),
    )
    .await
    .unwrap();
    store(&mut fx.con, &ns, "live", b"v", None, LEASE, from_ref(&dep))
        .await
        .unwrap();
    fx.cmd(&["UNLINK", &ns.value_key("evicted")]).await;
    assert_eq!(sweep(&mut fx.con, &ns).await.unwrap(), 1);
    assert_eq!(fx.registrants(&dep).await, ["filling", "live"]);
    assert!(
        !fx.exists(&ns.lease_key("evicted")).await,
        "the fence is lifted"
    );
    assert_eq!(fx.stamp("evicted").await, None);
    assert!(fill(&mut fx.con, &ns, "filling", "a", b"v", None, &[])
        .await
        .unwrap());
    fx.cleanup().await;
}

#[tokio::test]
async fn sweep_removes_a_gone_entry_from_its_row_bucket_and_keeps_the_others() {
    let mut fx = Fx::new("sweep_bucket");
    let ns = fx.ns.clone();
    for (key, row) in [("gone", "1"), ("live", "2")] {
        store(&mut fx.con, &ns, key, b"v", None, LEASE, &[dep(row)])
            .await
            .unwrap();
    }
    fx.cmd(&["UNLINK", &ns.value_key("gone")]).await;
    assert_eq!(sweep(&mut fx.con, &ns).await.unwrap(), 1);
    assert_eq!(fx.registrants(&dep("1")).await, Vec::<String>::new());
    assert_eq!(fx.registrants(&dep("2")).await, ["live"]);
    assert!(!fx.exists(&ns.lease_key("gone")).await);
    fx.cleanup().await;
}

#[tokio::test]
async fn unregister_leaves_a_bucket_field_that_names_another_key() {
    let mut fx = Fx::new("unregister");
    let (ns, dep) = (fx.ns.clone(), dep("1"));
    let (bucket, field) = ns.dep_keys(&dep).bucket.unwrap();
    fx.cmd(&["HSET", &bucket, &field, "newer"]).await;
    let removed: u64 = fx
        .run(&UNREGISTER, &[&bucket], &[&field, "gone"])
        .await
        .unwrap();
    assert_eq!(removed, 0);
    assert_eq!(fx.registrants(&dep).await, ["newer"]);
    fx.cleanup().await;
}

#[tokio::test]
async fn sweep_removes_the_stamps_of_expired_entries_without_dependencies() {
    let mut fx = Fx::new("sweep_stamps");
    let ns = fx.ns.clone();
    store(&mut fx.con, &ns, "expired", b"v", None, LEASE, &[])
        .await
        .unwrap();
    store(&mut fx.con, &ns, "live", b"v", None, LEASE, &[])
        .await
        .unwrap();
    fx.cmd(&["UNLINK", &ns.value_key("expired")]).await;
    sweep(&mut fx.con, &ns).await.unwrap();
    assert_eq!(fx.stamp("expired").await, None);
    assert!(fx.stamp("live").await.is_some());
    assert!(!fx.exists(&ns.lease_key("expired")).await);
    fx.cleanup().await;
}

#[tokio::test]
async fn entries_of_the_per_entry_layout_are_invalidated_and_upgraded() {
    let mut fx = Fx::new("upgrade");
    let (ns, dep) = (fx.ns.clone(), dep("1"));
    // What the library wrote before the compact layout, by raw commands.
    for key in ["old:1", "old:2"] {
        fx.cmd(&["SET", &ns.value_key(key), "v"]).await;
        fx.cmd(&["SET", &ns.legacy_born_key(key), "1700000000000"])
            .await;
        fx.cmd(&["SADD", &ns.legacy_deps_key(key), dep.as_str()])
            .await;
        fx.cmd(&["SADD", &ns.dep_set_key(&dep), key]).await;
    }
    fx.cmd(&["SET", &ns.value_key("old:3"), "v"]).await;
    fx.cmd(&["SET", &ns.legacy_born_key("old:3"), "1700000000000"])
        .await;
    fx.cmd(&["UNLINK", &ns.value_key("old:2")]).await;
    assert_eq!(upgrade(&mut fx.con, &ns).await.unwrap(), 3);
    assert_eq!(fx.stamp("old:1").await.as_deref(), Some("1700000000000"));
    assert_eq!(
        fx.stamp("old:2").await,
        None,
        "a value that is gone keeps no stamp"
    );
    for key in ["old:1", "old:2", "old:3"] {
        assert!(!fx.exists(&ns.legacy_born_key(key)).await);
        assert!(!fx.exists(&ns.legacy_deps_key(key)).await);
    }
    let listed = describe(&mut fx.con, &ns, &["old:1"]).await.unwrap();
    assert_eq!(listed[0].deps, [dep.to_string()]);
    assert!(listed[0].age.is_some());
    // The old dependency set is drained like a new one.
    assert_eq!(invalidate(&mut fx.con, &ns, &[], &[dep]).await.unwrap(), 1);
    assert!(!fx.exists(&ns.value_key("old:1")).await);
    assert_eq!(fx.stamp("old:1").await, None);
    fx.cleanup().await;
}

#[tokio::test]
async fn describe_gives_size_dependencies_and_age_and_skips_vanished_keys() {
    let mut fx = Fx::new("describe");
    let (ns, dep) = (fx.ns.clone(), dep("1"));
    store(
        &mut fx.con,
        &ns,
        "mine",
        b"12345",
        None,
        LEASE,
        from_ref(&dep),
    )
    .await
    .unwrap();
    fx.cmd(&["SET", &ns.value_key("theirs"), "abc"]).await;
    let listed = describe(&mut fx.con, &ns, &["mine", "theirs", "vanished"])
        .await
        .unwrap();
    assert_eq!(listed.len(), 2);
    assert_eq!(
        (listed[0].size_bytes, listed[0].deps.clone()),
        (5, vec![dep.to_string()])
    );
    assert!(listed[0].age.is_some());
    assert_eq!(
        (listed[1].key.as_str(), listed[1].size_bytes, listed[1].age),
        ("theirs", 3, None)
    );
    fx.cleanup().await;
}

#[tokio::test]
async fn markers_tell_absent_intact_and_lost_apart() {
    let mut fx = Fx::new("markers");
    let ns = fx.ns.clone();
    assert_eq!(
        check_markers(&mut fx.con, &ns).await.unwrap(),
        Markers::Absent
    );
    set_markers(&mut fx.con, &ns).await.unwrap();
    assert_eq!(
        check_markers(&mut fx.con, &ns).await.unwrap(),
        Markers::Intact
    );
    fx.cmd(&["UNLINK", &ns.marker_keys()[7]]).await;
    let found = check_markers(&mut fx.con, &ns).await.unwrap();
    assert_eq!(found, Markers::Lost { missing: 1 });
    fx.cleanup().await;
}

#[tokio::test]
async fn dropping_every_value_defeats_fills_and_keeps_dependency_sets() {
    let mut fx = Fx::new("drop_all");
    let (ns, dep) = (fx.ns.clone(), dep("1"));
    store(&mut fx.con, &ns, "a", b"v", None, LEASE, from_ref(&dep))
        .await
        .unwrap();
    acquire(&mut fx.con, &ns, "b", "t", LEASE, from_ref(&dep))
        .await
        .unwrap();
    assert_eq!(drop_all_values(&mut fx.con, &ns).await.unwrap(), 1);
    assert!(!fill(&mut fx.con, &ns, "b", "t", b"v", None, &[])
        .await
        .unwrap());
    assert_eq!(fx.registrants(&dep).await, ["a", "b"]);
    assert_eq!(
        check_markers(&mut fx.con, &ns).await.unwrap(),
        Markers::Intact
    );
    fx.cleanup().await;
}

#[test]
fn every_script_opens_with_its_invariant() {
    for (name, script) in [
        ("acquire", include_str!("../../lua/acquire.lua")),
        ("fill", include_str!("../../lua/fill.lua")),
        ("release", include_str!("../../lua/release.lua")),
        ("seize", include_str!("../../lua/seize.lua")),
        ("drop", include_str!("../../lua/drop.lua")),
        ("drain", include_str!("../../lua/drain.lua")),
        ("fence", include_str!("../../lua/fence.lua")),
        ("describe", include_str!("../../lua/describe.lua")),
        ("register", include_str!("../../lua/register.lua")),
        ("unregister", include_str!("../../lua/unregister.lua")),
        ("list", include_str!("../../lua/list.lua")),
        ("upgrade", include_str!("../../lua/upgrade.lua")),
        ("raise", include_str!("../../lua/raise.lua")),
    ] {
        let head = script.lines().take(3).collect::<String>();
        assert!(head.starts_with(&format!("-- {name}: ")), "{name}");
        assert!(
            head.contains("Invariant"),
            "{name} opens with its invariant"
        );
    }
}

#[test]
fn new_tokens_differ() {
    assert_ne!(new_token(), new_token());
}
