//! Bookkeeping stays proportional to the live entries and their current
//! dependencies: registrations of entries whose value expired (or was
//! evicted), and of live entries under dependencies they no longer have,
//! are swept away, not kept until the row happens to change.

use redis::AsyncCommands;
use smartcache::{Cache, Dep};
use smartcache_core::keys::{Bookkeeping, TableName};
use smartcache_tests::{Env, PATIENCE};
use std::time::{Duration, Instant};

const SETUP: &str = "CREATE TABLE items (id int PRIMARY KEY, v int);
                     INSERT INTO items SELECT g, 0 FROM generate_series(1, 1000) g;";

async fn cache(env: &Env) -> Cache {
    env.cache().await
}

async fn is_member(env: &mut Env, id: i32, key: &str) -> bool {
    let dep = TableName::parse("items")
        .unwrap()
        .row_dep(&[id.to_string()]);
    let ns = env.ns.clone();
    smartcache_core::registry::registrants(&mut env.redis, &ns, &dep)
        .await
        .unwrap()
        .iter()
        .any(|k| k == key)
}

#[tokio::test]
async fn expired_entries_are_swept_from_dependency_sets() {
    let mut env = Env::new("sweep_expired", SETUP).await;
    let config = env.config("sweep_interval_ms = 100\n[[tables]]\nname = \"items\"\n");
    env.install(&config).await;
    let cache = cache(&env).await;
    cache
        .entry("short")
        .depends_on(Dep::row("items", [1]))
        .ttl(Duration::from_millis(200))
        .set(&1)
        .await
        .unwrap();
    cache
        .entry("long")
        .depends_on(Dep::row("items", [1]))
        .set(&2)
        .await
        .unwrap();
    assert!(is_member(&mut env, 1, "short").await);
    let daemon = env.start_daemon(&config);
    let start = Instant::now();
    while is_member(&mut env, 1, "short").await {
        assert!(start.elapsed() < PATIENCE, "expired entry still registered");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(
        is_member(&mut env, 1, "long").await,
        "a live entry stays registered"
    );
    let stamp_left: bool = env
        .redis
        .hexists(env.ns.stamps_key("short"), "short")
        .await
        .unwrap();
    assert!(!stamp_left);
    // And the live entry is still invalidated by its row.
    env.pg
        .batch_execute("UPDATE items SET v = 1 WHERE id = 1")
        .await
        .unwrap();
    env.wait_gone(&["long"]).await;
    daemon.stop().await;
}

#[tokio::test]
async fn a_fill_in_flight_is_not_swept() {
    let mut env = Env::new("sweep_lease", SETUP).await;
    let dep = TableName::parse("items").unwrap().row_dep(&["2"]);
    // What the library's acquire step leaves while the fill computes: a
    // lease and the registrations, no value yet.
    let _: () = env
        .redis
        .set(env.ns.lease_key("filling"), "token")
        .await
        .unwrap();
    let ns = env.ns.clone();
    smartcache_core::registry::register(&mut env.redis, &ns, "filling", &[dep])
        .await
        .unwrap();
    smartcache_core::sweep::sweep(&mut env.redis, &ns)
        .await
        .unwrap();
    assert!(
        is_member(&mut env, 2, "filling").await,
        "swept a fill in flight"
    );
    let _: () = env.redis.del(env.ns.lease_key("filling")).await.unwrap();
    let removed = smartcache_core::sweep::sweep(&mut env.redis, &ns)
        .await
        .unwrap();
    assert_eq!(removed, 1);
    assert!(!is_member(&mut env, 2, "filling").await);
}

#[tokio::test]
async fn after_many_entries_expire_nothing_of_them_is_left() {
    let mut env = Env::new("sweep_bounded", SETUP).await;
    let cache = cache(&env).await;
    for id in 1..=500 {
        cache
            .entry(format!("page:{id}"))
            .depends_on(Dep::row("items", [id]))
            .depends_on(Dep::table("items"))
            .ttl(Duration::from_millis(100))
            .set(&id)
            .await
            .unwrap();
    }
    tokio::time::sleep(Duration::from_millis(300)).await;
    let ns = env.ns.clone();
    let removed = smartcache_core::sweep::sweep(&mut env.redis, &ns)
        .await
        .unwrap();
    assert!(removed >= 500, "removed {removed}");
    let left = env.redis.scan_all(&env.ns.match_all()).await.unwrap();
    assert!(
        left.is_empty(),
        "bookkeeping left behind: {:?}",
        &left[..left.len().min(10)]
    );
}

#[tokio::test]
async fn entries_of_the_per_entry_layout_are_invalidated_and_folded_in_by_the_daemon() {
    let mut env = Env::new("upgrade_layout", SETUP).await;
    let config = env.config("[[tables]]\nname = \"items\"\n");
    env.install(&config).await;
    let items = TableName::parse("items").unwrap();
    let regs = [
        ("page:1", items.row_dep(&["1"])),
        ("page:2", items.row_dep(&["2"])),
        ("list", items.table_dep()),
    ];
    // What the library wrote before the compact layout, by raw commands
    // (one per key: on a cluster they live on different slots).
    for (key, dep) in &regs {
        let ns = env.ns.clone();
        let _: () = env.redis.set(ns.value_key(key), "old").await.unwrap();
        let _: () = env
            .redis
            .set(ns.legacy_born_key(key), "1700000000000")
            .await
            .unwrap();
        let _: () = env
            .redis
            .sadd(ns.legacy_deps_key(key), dep.as_str())
            .await
            .unwrap();
        let _: () = env.redis.sadd(ns.dep_set_key(dep), key).await.unwrap();
    }
    let daemon = env.start_daemon(&config);
    let start = Instant::now();
    let legacy = |env: &Env| {
        let (mut con, ns) = (env.redis.clone(), env.ns.clone());
        async move {
            let all = con.scan_all(&ns.match_bookkeeping()).await.unwrap();
            all.iter()
                .filter(|k| {
                    matches!(
                        ns.bookkeeping(k),
                        Some(Bookkeeping::LegacyBorn(_) | Bookkeeping::LegacyDeps(_))
                    )
                })
                .count()
        }
    };
    while legacy(&env).await > 0 {
        assert!(start.elapsed() < PATIENCE, "old per-entry keys left");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let born: Option<String> = env
        .redis
        .hget(env.ns.stamps_key("page:2"), "page:2")
        .await
        .unwrap();
    assert_eq!(born.as_deref(), Some("1700000000000"), "birth time kept");
    // A change to row 1 invalidates the old entry of row 1 and of the table.
    env.pg
        .batch_execute("UPDATE items SET v = 1 WHERE id = 1")
        .await
        .unwrap();
    env.wait_gone(&["page:1", "list"]).await;
    assert!(env.cached("page:2").await, "another row's entry survives");
    daemon.stop().await;
}

const POINTERS: &str = "CREATE TABLE items (id int PRIMARY KEY, v int);
                        INSERT INTO items SELECT g, g * 10 FROM generate_series(1, 1000) g;
                        CREATE TABLE pointers (id int PRIMARY KEY, target int);
                        INSERT INTO pointers SELECT g, g FROM generate_series(1, 20) g;";

const POINTER_TABLES: &str =
    "sweep_interval_ms = 0\n[[tables]]\nname = \"items\"\n[[tables]]\nname = \"pointers\"\n";

/// A computation refused because the row it depends on moved after its
/// dependencies were chosen.
enum ViewError {
    Moved,
    Cache(smartcache::Error),
}

impl From<smartcache::Error> for ViewError {
    fn from(e: smartcache::Error) -> Self {
        ViewError::Cache(e)
    }
}

/// `view:{p}`: the value of the item pointer `p` points at, depending on
/// the pointer's row and on the item's row, so its dependencies change
/// whenever the pointer moves. Returns (target, v). The target read to
/// choose them is older than the fill's lease, so the closure reads it
/// again and refuses (nothing is stored) when it moved; the caller chooses
/// again.
async fn view(cache: &Cache, pg: &tokio_postgres::Client, p: i32) -> (i32, i32) {
    loop {
        let row = pg
            .query_one("SELECT target FROM pointers WHERE id = $1", &[&p])
            .await
            .unwrap();
        let target: i32 = row.get(0);
        let deps = [Dep::row("pointers", [p]), Dep::row("items", [target])];
        let got = cache
            .get_or_compute(&format!("view:{p}"), deps, || async {
                let now = view_in_db(pg, p).await;
                if now.0 == target {
                    Ok(now)
                } else {
                    Err(ViewError::Moved)
                }
            })
            .await;
        match got {
            Ok(v) => return v,
            Err(ViewError::Moved) => continue,
            Err(ViewError::Cache(e)) => panic!("view:{p}: {e}"),
        }
    }
}

/// What `view:{p}` should hold now, read from the database.
async fn view_in_db(pg: &tokio_postgres::Client, p: i32) -> (i32, i32) {
    let row = pg
        .query_one(
            "SELECT i.id, i.v FROM pointers p JOIN items i ON i.id = p.target WHERE p.id = $1",
            &[&p],
        )
        .await
        .unwrap();
    (row.get(0), row.get(1))
}

fn item(id: i32) -> smartcache_core::keys::DepId {
    TableName::parse("items")
        .unwrap()
        .row_dep(&[id.to_string()])
}

fn pointer(id: i32) -> smartcache_core::keys::DepId {
    TableName::parse("pointers")
        .unwrap()
        .row_dep(&[id.to_string()])
}

#[tokio::test]
async fn a_key_whose_dependencies_change_stays_registered_only_under_its_current_ones() {
    let mut env = Env::new("sweep_moved", POINTERS).await;
    let config = env.config(POINTER_TABLES);
    env.install(&config).await;
    let daemon = env.start_daemon(&config);
    let cache = cache(&env).await;
    // Fill with {pointer 1, item 1}, then {pointer 1, item 2}, then
    // {pointer 1, item 3}: each move of the pointer invalidates the view
    // through the pointer's row, which leaves the item rows alone.
    assert_eq!(view(&cache, &env.pg, 1).await, (1, 10));
    for target in [2, 3] {
        env.pg
            .execute("UPDATE pointers SET target = $1 WHERE id = 1", &[&target])
            .await
            .unwrap();
        env.wait_gone(&["view:1"]).await;
        assert_eq!(view(&cache, &env.pg, 1).await, (target, target * 10));
    }
    // Another key on item 2 afterwards: the row's bucket field was taken by
    // the stale registration, so both moved to a dependency set.
    cache
        .get_or_compute("other", [Dep::row("items", [2])], || async {
            Ok::<_, smartcache::Error>(20)
        })
        .await
        .unwrap();
    let ns = env.ns.clone();
    smartcache_core::sweep::sweep(&mut env.redis, &ns)
        .await
        .unwrap();
    let by_key = smartcache_core::registry::dependencies(&mut env.redis, &ns)
        .await
        .unwrap();
    assert_eq!(
        by_key["view:1"],
        [item(3).to_string(), pointer(1).to_string()],
        "registered only under its current dependencies after a sweep"
    );
    assert_eq!(by_key["other"], [item(2).to_string()]);
    assert_eq!(by_key.len(), 2, "{by_key:?}");
    // A change to a former dependency leaves the entry alone; a change to a
    // current one deletes it, and the refill equals the database.
    env.pg
        .batch_execute("UPDATE items SET v = 11 WHERE id = 1")
        .await
        .unwrap();
    env.wait_drained().await;
    assert!(env.cached("view:1").await, "deleted by a former dependency");
    env.pg
        .batch_execute("UPDATE items SET v = 33 WHERE id = 3")
        .await
        .unwrap();
    env.wait_gone(&["view:1"]).await;
    assert_eq!(view(&cache, &env.pg, 1).await, view_in_db(&env.pg, 1).await);
    assert_eq!(view(&cache, &env.pg, 1).await, (3, 33));
    daemon.stop().await;
}

#[tokio::test]
async fn keys_set_again_under_other_dependencies_leave_one_registration_each() {
    let mut env = Env::new("sweep_reset", SETUP).await;
    let cache = cache(&env).await;
    const KEYS: i32 = 50;
    const ROUNDS: i32 = 20;
    for round in 0..ROUNDS {
        for k in 0..KEYS {
            let row = round * KEYS + k + 1;
            let mut deps = vec![Dep::row("items", [row])];
            if k % 2 == 0 {
                // Half of them also on a row every key shares, in a set.
                deps.push(Dep::row("items", [2000 + round]));
            }
            cache.set(&format!("page:{k}"), &row, deps).await.unwrap();
        }
    }
    let ns = env.ns.clone();
    smartcache_core::sweep::sweep(&mut env.redis, &ns)
        .await
        .unwrap();
    let by_key = smartcache_core::registry::dependencies(&mut env.redis, &ns)
        .await
        .unwrap();
    // Each key stays registered under its current rows, and under a former
    // one only when its fingerprint cannot rule that one out (a Bloom
    // filter's false positive: rare, and tried again at each refill).
    use smartcache_core::fingerprint::{fingerprint, may_contain, probe};
    let rows_of = |round: i32, k: i32| {
        let mut deps = vec![item(round * KEYS + k + 1)];
        if k % 2 == 0 {
            deps.push(item(2000 + round));
        }
        deps
    };
    let last = ROUNDS - 1;
    let (mut stale, mut kept) = (0, 0);
    for k in 0..KEYS {
        let now = rows_of(last, k);
        let fp = fingerprint(&now);
        let mut want: Vec<String> = now.iter().map(ToString::to_string).collect();
        for round in 0..last {
            for d in rows_of(round, k) {
                stale += 1;
                if may_contain(&fp, probe(&d)) {
                    kept += 1;
                    want.push(d.to_string());
                }
            }
        }
        want.sort();
        assert_eq!(by_key[&format!("page:{k}")], want, "page:{k}");
    }
    assert!(
        kept * 100 <= stale,
        "{kept} of {stale} former registrations kept"
    );
    let registrations: usize = by_key.values().map(Vec::len).sum();
    assert_eq!(registrations, (KEYS + KEYS / 2) as usize + kept);
}

#[tokio::test]
async fn sweeps_racing_fills_and_changes_never_lose_a_current_registration() {
    let mut env = Env::new("sweep_race", POINTERS).await;
    let config = env.config(POINTER_TABLES);
    env.install(&config).await;
    let daemon = env.start_daemon(&config);
    let cache = cache(&env).await;
    const VIEWS: i32 = 20;
    const CHANGES: i32 = 300;
    let done = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let mut tasks = Vec::new();
    for r in 0..4 {
        let (cache, done) = (cache.clone(), done.clone());
        let db = env.db.connect().await;
        tasks.push(tokio::spawn(async move {
            let mut p = r;
            while !done.load(std::sync::atomic::Ordering::Relaxed) {
                p = p % VIEWS + 1;
                view(&cache, &db, p).await;
            }
        }));
    }
    {
        let (mut con, ns, done) = (env.redis.clone(), env.ns.clone(), done.clone());
        tasks.push(tokio::spawn(async move {
            while !done.load(std::sync::atomic::Ordering::Relaxed) {
                smartcache_core::sweep::sweep(&mut con, &ns).await.unwrap();
            }
        }));
    }
    // Pointers move over a few targets (so dependencies come back) and
    // items change, one commit each.
    let mut state: u64 = 0x5eed;
    for _ in 0..CHANGES {
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        let p = (state % VIEWS as u64) as i32 + 1;
        let target = ((state >> 8) % 5) as i32 + 1;
        if state.is_multiple_of(3) {
            env.pg
                .execute("UPDATE items SET v = v + 1 WHERE id = $1", &[&target])
                .await
                .unwrap();
        } else {
            env.pg
                .execute(
                    "UPDATE pointers SET target = $2 WHERE id = $1",
                    &[&p, &target],
                )
                .await
                .unwrap();
        }
        tokio::task::yield_now().await;
    }
    done.store(true, std::sync::atomic::Ordering::Relaxed);
    for t in tasks {
        t.await.unwrap();
    }
    env.wait_drained().await;
    // Every cached entry equals the database, and is registered under its
    // current dependencies (so the next change to them deletes it).
    let ns = env.ns.clone();
    smartcache_core::sweep::sweep(&mut env.redis, &ns)
        .await
        .unwrap();
    let by_key = smartcache_core::registry::dependencies(&mut env.redis, &ns)
        .await
        .unwrap();
    let mut checked = 0;
    for p in 1..=VIEWS {
        let key = format!("view:{p}");
        let Some(cached): Option<(i32, i32)> = cache.get(&key).await.unwrap() else {
            continue;
        };
        let now = view_in_db(&env.pg, p).await;
        assert_eq!(cached, now, "{key} is stale");
        let deps = by_key.get(&key).cloned().unwrap_or_default();
        for dep in [pointer(p), item(now.0)] {
            assert!(
                deps.contains(&dep.to_string()),
                "{key} lost {dep}: {deps:?}"
            );
        }
        checked += 1;
    }
    assert!(checked > 0, "nothing cached at the end");
    daemon.stop().await;
}
