//! The library against a real Redis: each test has its own namespace.

mod common;

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use common::{paused_fill, Fixture};
use serde::{Deserialize, Serialize};
use smartcache::{Cache, CacheStatus, Dep, Error};
use smartcache_core::invalidate::invalidate;
use smartcache_core::keys::TableName;
use smartcache_core::sweep::sweep;
use tokio::sync::oneshot;

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
struct Product {
    id: i64,
    name: String,
    price_cents: i64,
}

fn teapot() -> Product {
    Product {
        id: 1,
        name: "Teapot".into(),
        price_cents: 1999,
    }
}

#[tokio::test]
async fn miss_computes_then_hit_reads_json_back() {
    let mut fx = Fixture::new("roundtrip").await;
    let runs = AtomicUsize::new(0);
    for expected in [CacheStatus::Computed, CacheStatus::Hit] {
        let f = fx
            .cache
            .entry("product:1")
            .depends_on(Dep::row("products", [1]))
            .fetch(|| async {
                runs.fetch_add(1, Ordering::SeqCst);
                Ok::<_, Error>(teapot())
            })
            .await
            .unwrap();
        assert_eq!(f.value, teapot());
        assert_eq!(f.status, expected);
    }
    assert_eq!(runs.load(Ordering::SeqCst), 1);
    let raw = fx.raw_get("product:1").await.unwrap();
    assert_eq!(
        serde_json::from_slice::<serde_json::Value>(&raw).unwrap(),
        serde_json::json!({"id": 1, "name": "Teapot", "price_cents": 1999}),
        "stored as plain JSON at {{ns}}:K, readable by any client"
    );
    fx.cleanup().await;
}

#[tokio::test]
async fn raw_bytes_are_stored_as_they_are() {
    let mut fx = Fixture::new("bytes").await;
    let bytes = vec![0u8, 159, 146, 150, b'\n'];
    let got = fx
        .cache
        .get_or_compute_bytes("blob", [], || async { Ok::<_, Error>(bytes.clone()) })
        .await
        .unwrap();
    assert_eq!(got, bytes);
    assert_eq!(fx.raw_get("blob").await.unwrap(), bytes);
    assert_eq!(fx.cache.get_bytes("blob").await.unwrap(), Some(bytes));
    fx.cleanup().await;
}

#[tokio::test]
async fn value_of_another_type_is_a_miss_and_gets_replaced() {
    let mut fx = Fixture::new("undecodable").await;
    let vkey = fx.cache.namespace().value_key("product:1");
    fx.raw_set(&vkey, "not json at all").await;
    assert_eq!(fx.cache.get::<Product>("product:1").await.unwrap(), None);
    let f = fx
        .cache
        .entry("product:1")
        .fetch(|| async { Ok::<_, Error>(teapot()) })
        .await
        .unwrap();
    assert_eq!(f.value, teapot());
    assert_eq!(f.status, CacheStatus::Computed);
    assert_eq!(
        fx.cache.get::<Product>("product:1").await.unwrap(),
        Some(teapot())
    );
    fx.cleanup().await;
}

#[tokio::test]
async fn computation_errors_reach_the_caller_and_cache_nothing() {
    let mut fx = Fixture::new("compute_error").await;
    let r: Result<Product, anyhow::Error> = fx
        .cache
        .get_or_compute("product:1", [Dep::row("products", [1])], || async {
            Err(anyhow::anyhow!("database said no"))
        })
        .await;
    assert_eq!(r.unwrap_err().to_string(), "database said no");
    // The lease is given back; the row bucket keeps the key (a spurious
    // delete at worst) until the sweeper runs.
    let ns = fx.cache.namespace().clone();
    let dep = TableName::parse("products").unwrap().row_dep(&["1"]);
    let (bucket, _) = ns.dep_keys(&dep).bucket.unwrap();
    assert_eq!(fx.all_keys().await, [bucket]);
    assert_eq!(sweep(&mut fx.redis, &ns).await.unwrap(), 1);
    assert!(fx.all_keys().await.is_empty(), "{:?}", fx.all_keys().await);
    fx.cleanup().await;
}

#[tokio::test]
async fn reserved_and_empty_keys_are_refused() {
    let fx = Fixture::new("reserved").await;
    let r: Result<i32, Error> = fx
        .cache
        .get_or_compute("@sc:lease:x", [], || async { Ok(1) })
        .await;
    assert!(matches!(r, Err(Error::InvalidName(_))));
    assert!(fx.cache.clear("").await.is_err());
    let r: Result<i32, Error> = fx
        .cache
        .get_or_compute("k", [Dep::table("")], || async { Ok(1) })
        .await;
    assert!(matches!(r, Err(Error::InvalidName(_))));
    fx.cleanup().await;
}

#[tokio::test]
async fn clear_deletes_exactly_that_key() {
    let mut fx = Fixture::new("clear_exact").await;
    for key in ["post", "posts", "post:1"] {
        fx.cache
            .set(key, &key, [Dep::table("posts")])
            .await
            .unwrap();
    }
    assert!(fx.cache.clear("post").await.unwrap());
    assert!(
        !fx.cache.clear("post").await.unwrap(),
        "second clear finds nothing"
    );
    assert_eq!(fx.raw_get("post").await, None);
    assert!(fx.raw_get("posts").await.is_some());
    assert!(fx.raw_get("post:1").await.is_some());
    let left: Vec<String> = fx
        .cache
        .keys("*")
        .await
        .unwrap()
        .into_iter()
        .map(|k| k.key)
        .collect();
    assert_eq!(left, ["post:1", "posts"]);
    fx.cleanup().await;
}

#[tokio::test]
async fn clear_table_deletes_table_and_row_dependents_only() {
    let mut fx = Fixture::new("clear_table").await;
    let c = &fx.cache;
    c.set("list", &1, [Dep::table("shop.products")])
        .await
        .unwrap();
    c.set("p1", &1, [Dep::row("shop.products", [1])])
        .await
        .unwrap();
    c.set("p2", &2, [Dep::row("shop.products", [2])])
        .await
        .unwrap();
    c.set("public_p1", &1, [Dep::row("products", [1])])
        .await
        .unwrap();
    c.set("other", &1, [Dep::table("shop.products_archive")])
        .await
        .unwrap();
    assert_eq!(c.clear_table("shop.products").await.unwrap(), 3);
    for gone in ["list", "p1", "p2"] {
        assert_eq!(fx.raw_get(gone).await, None, "{gone}");
    }
    for kept in ["public_p1", "other"] {
        assert!(fx.raw_get(kept).await.is_some(), "{kept}");
    }
    // No dependency set of the cleared table is left behind.
    let ns = fx.cache.namespace().clone();
    let t = TableName::parse("shop.products").unwrap();
    assert!(!fx.exists(&ns.dep_set_key(&t.table_dep())).await);
    assert!(!fx.exists(&ns.dep_set_key(&t.row_dep(&["1"]))).await);
    let (bucket, _) = ns.dep_keys(&t.row_dep(&["1"])).bucket.unwrap();
    assert!(!fx.exists(&bucket).await);
    fx.cleanup().await;
}

#[tokio::test]
async fn clear_all_stays_inside_the_namespace() {
    let mut fx = Fixture::new("clear_all").await;
    let outsider = format!("{}x:keep", fx.ns); // shares the prefix, not the namespace
    fx.raw_set(&outsider, "1").await;
    for i in 0..1200 {
        fx.cache
            .set(&format!("k:{i}"), &i, [Dep::row("t", [i % 7])])
            .await
            .unwrap();
    }
    assert_eq!(fx.cache.clear_all().await.unwrap(), 1200);
    assert!(fx.all_keys().await.is_empty());
    assert!(
        fx.exists(&outsider).await,
        "a key outside the namespace survives"
    );
    redis::cmd("DEL")
        .arg(&outsider)
        .query_async::<()>(&mut fx.redis)
        .await
        .unwrap();
    fx.cleanup().await;
}

#[tokio::test]
async fn clear_on_start_empties_the_namespace() {
    let fx = Fixture::new("clear_on_start").await;
    fx.cache.set("a", &1, []).await.unwrap();
    let again = common::builder(&fx.ns)
        .clear_on_start(true)
        .build()
        .await
        .unwrap();
    assert!(again.keys("*").await.unwrap().is_empty());
    fx.cleanup().await;
}

#[tokio::test]
async fn keys_lists_size_and_dependencies_without_bookkeeping() {
    let mut fx = Fixture::new("keys").await;
    fx.cache
        .set(
            "product:1",
            &"abc",
            [Dep::row("products", [1]), Dep::table("categories")],
        )
        .await
        .unwrap();
    fx.cache
        .set("product_list", &[1, 2], [Dep::table("products")])
        .await
        .unwrap();
    let other = fx.cache.namespace().value_key("written_by_php");
    fx.raw_set(&other, "xyz").await;

    let all = fx.cache.keys("*").await.unwrap();
    let listed: Vec<(&str, u64, Vec<&str>)> = all
        .iter()
        .map(|k| {
            (
                k.key.as_str(),
                k.size_bytes,
                k.deps.iter().map(String::as_str).collect(),
            )
        })
        .collect();
    assert_eq!(
        listed,
        [
            (
                "product:1",
                5,
                vec!["r:public.products:1", "t:public.categories"]
            ),
            ("product_list", 5, vec!["t:public.products"]),
            ("written_by_php", 3, vec![]),
        ]
    );
    let some: Vec<String> = fx
        .cache
        .keys("product:*")
        .await
        .unwrap()
        .into_iter()
        .map(|k| k.key)
        .collect();
    assert_eq!(some, ["product:1"]);
    fx.cleanup().await;
}

#[tokio::test]
async fn registered_dependencies_are_what_the_daemon_invalidates() {
    let mut fx = Fixture::new("deps_layout").await;
    fx.cache
        .set("order:7", &1, [Dep::row("shop.order_lines", ["7", "2"])])
        .await
        .unwrap();
    fx.cache
        .set("orders", &1, [Dep::table("orders")])
        .await
        .unwrap();
    let ns = fx.cache.namespace().clone();
    let lines = TableName::parse("shop.order_lines").unwrap();
    let orders = TableName::parse("orders").unwrap();
    // Exactly what the daemon builds from a changed row / table.
    let n = invalidate(
        &mut fx.redis,
        &ns,
        &[],
        &[lines.row_dep(&["7", "2"]), orders.table_dep()],
    )
    .await
    .unwrap();
    assert_eq!(n, 2);
    assert!(fx.all_keys().await.is_empty(), "{:?}", fx.all_keys().await);
    fx.cleanup().await;
}

#[tokio::test]
async fn set_replaces_old_dependency_registrations() {
    let mut fx = Fixture::new("set_replaces").await;
    fx.cache.set("k", &1, [Dep::table("a")]).await.unwrap();
    fx.cache.set("k", &2, [Dep::table("b")]).await.unwrap();
    // The listing shows every registration; the one of the first set stays
    // until table a changes (a spurious delete at worst).
    let listed = fx.cache.keys("k").await.unwrap();
    assert!(
        listed[0].deps.contains(&"t:public.b".to_owned()),
        "{listed:?}"
    );
    let ns = fx.cache.namespace().clone();
    let b = TableName::parse("b").unwrap();
    assert_eq!(
        invalidate(&mut fx.redis, &ns, &[], &[b.table_dep()])
            .await
            .unwrap(),
        1
    );
    assert!(fx.raw_get("k").await.is_none());
    fx.cleanup().await;
}

/// Issue 11, item 5: a value is never left without its registrations. A
/// dependency whose set another program overwrote with a string makes the
/// registration fail; before, the value was already stored and no change
/// to that dependency could delete it.
#[tokio::test]
async fn a_set_whose_registration_fails_leaves_no_value_behind() {
    let mut fx = Fixture::new("set_unregistered").await;
    let ns = fx.cache.namespace().clone();
    let broken = TableName::parse("b").unwrap().table_dep();
    fx.raw_set(&ns.dep_set_key(&broken), "written by another program")
        .await;
    let stored = fx
        .cache
        .set("k", &1, [Dep::table("a"), Dep::table("b")])
        .await
        .unwrap();
    assert!(!stored, "the registration failed: not stored");
    assert!(
        fx.raw_get("k").await.is_none(),
        "a value no change to table b can delete"
    );
    assert!(
        !fx.exists(&ns.lease_key("k")).await,
        "the lease is given back"
    );
    // The cache still works for that key once the dependency is usable.
    invalidate(&mut fx.redis, &ns, &[], std::slice::from_ref(&broken))
        .await
        .unwrap();
    assert!(fx.cache.set("k", &2, [Dep::table("b")]).await.unwrap());
    invalidate(&mut fx.redis, &ns, &[], &[broken])
        .await
        .unwrap();
    assert!(fx.raw_get("k").await.is_none());
    fx.cleanup().await;
}

#[tokio::test]
async fn ttl_expires_the_entry() {
    let mut fx = Fixture::new("ttl").await;
    let v: i32 = fx
        .cache
        .entry("short")
        .ttl(Duration::from_millis(100))
        .get_or_compute(|| async { Ok::<_, Error>(5) })
        .await
        .unwrap();
    assert_eq!(v, 5);
    let ttl: i64 = redis::cmd("PTTL")
        .arg(fx.cache.namespace().value_key("short"))
        .query_async(&mut fx.redis)
        .await
        .unwrap();
    assert!(ttl > 0 && ttl <= 100, "{ttl}");
    fx.cache.set("forever", &1, []).await.unwrap();
    let ttl: i64 = redis::cmd("PTTL")
        .arg(fx.cache.namespace().value_key("forever"))
        .query_async(&mut fx.redis)
        .await
        .unwrap();
    assert_eq!(ttl, -1, "no TTL unless asked");
    fx.cleanup().await;
}

/// The classic race, forced step by step: a reader misses and reads the old
/// row; the writer commits and the daemon invalidates the row's dependency;
/// then the reader tries to store the old value. It must not be stored.
#[tokio::test]
async fn fill_that_started_before_an_invalidation_is_not_stored() {
    let mut fx = Fixture::new("stale_set").await;
    // Read from the database before the commit.
    let reader = paused_fill(
        &fx.cache,
        "product:1",
        vec![Dep::row("products", [1])],
        "old price".to_string(),
    )
    .await;
    // The writer commits; the daemon runs exactly this for the changed row.
    let dep = TableName::parse("products").unwrap().row_dep(&["1"]);
    let ns = fx.cache.namespace().clone();
    invalidate(&mut fx.redis, &ns, &[], &[dep]).await.unwrap();

    let f = reader.finish().await;
    assert_eq!(f.value, "old price", "the caller still gets its value");
    assert_eq!(f.status, CacheStatus::Uncached);
    assert_eq!(
        fx.raw_get("product:1").await,
        None,
        "the stale value was stored"
    );

    // The next reader sees the committed data and caches it.
    let f = fx
        .cache
        .entry("product:1")
        .depends_on(Dep::row("products", [1]))
        .fetch(|| async { Ok::<_, Error>("new price".to_string()) })
        .await
        .unwrap();
    assert_eq!(f.status, CacheStatus::Computed);
    assert_eq!(fx.raw_get("product:1").await.unwrap(), b"\"new price\"");
    fx.cleanup().await;
}

/// The same race when the daemon clears the key through a key template
/// (`product:{id}`) rather than a registered dependency, and when a direct
/// `set` happens during the fill.
#[tokio::test]
async fn fill_is_refused_after_key_invalidation_or_direct_set() {
    let mut fx = Fixture::new("stale_key").await;
    for by_set in [false, true] {
        let reader = paused_fill(&fx.cache, "product:2", vec![], "old".to_string()).await;
        if by_set {
            fx.cache.set("product:2", &"newer", []).await.unwrap();
        } else {
            let ns = fx.cache.namespace().clone();
            invalidate(&mut fx.redis, &ns, &["product:2".into()], &[])
                .await
                .unwrap();
        }
        assert_eq!(reader.finish().await.status, CacheStatus::Uncached);
        let expected = by_set.then(|| b"\"newer\"".to_vec());
        assert_eq!(fx.raw_get("product:2").await, expected, "by_set={by_set}");
    }
    fx.cleanup().await;
}

#[tokio::test]
async fn hundred_concurrent_misses_compute_once() {
    let fx = Fixture::new("single_flight").await;
    let runs = Arc::new(AtomicUsize::new(0));
    let mut tasks = Vec::new();
    for _ in 0..100 {
        let cache = fx.cache.clone();
        let runs = runs.clone();
        tasks.push(tokio::spawn(async move {
            cache
                .get_or_compute("hot", [Dep::table("products")], || async move {
                    runs.fetch_add(1, Ordering::SeqCst);
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    Ok::<_, Error>(teapot())
                })
                .await
                .unwrap()
        }));
    }
    for t in tasks {
        assert_eq!(t.await.unwrap(), teapot());
    }
    assert_eq!(runs.load(Ordering::SeqCst), 1);
    fx.cleanup().await;
}

#[tokio::test]
async fn another_process_waits_for_the_lease_holder() {
    let fx = Fixture::new("lease_wait").await;
    let other = fx.other_process().await;
    let (started_tx, started_rx) = oneshot::channel::<()>();
    let holder = {
        let cache = fx.cache.clone();
        tokio::spawn(async move {
            cache
                .entry("report")
                .fetch(|| async move {
                    started_tx.send(()).unwrap();
                    tokio::time::sleep(Duration::from_millis(300)).await;
                    Ok::<_, Error>("from holder".to_string())
                })
                .await
                .unwrap()
        })
    };
    started_rx.await.unwrap();
    let waiter_runs = AtomicUsize::new(0);
    let f = other
        .entry("report")
        .fetch(|| async {
            waiter_runs.fetch_add(1, Ordering::SeqCst);
            Ok::<_, Error>("from waiter".to_string())
        })
        .await
        .unwrap();
    assert_eq!(f.value, "from holder");
    assert_eq!(f.status, CacheStatus::Shared);
    assert_eq!(waiter_runs.load(Ordering::SeqCst), 0);
    assert_eq!(holder.await.unwrap().status, CacheStatus::Computed);
    fx.cleanup().await;
}

#[tokio::test]
async fn lease_wait_is_bounded_then_computes_uncached() {
    let fx = Fixture::new("lease_bounded").await;
    let impatient = common::builder(&fx.ns)
        .lease_wait(Duration::from_millis(100))
        .build()
        .await
        .unwrap();
    let holder = paused_fill(&fx.cache, "slow", vec![], 1).await;
    let t0 = std::time::Instant::now();
    let f = impatient
        .entry("slow")
        .fetch(|| async { Ok::<_, Error>(2) })
        .await
        .unwrap();
    assert_eq!((f.value, f.status), (2, CacheStatus::Uncached));
    assert!(t0.elapsed() < Duration::from_secs(1));
    assert_eq!(holder.finish().await.status, CacheStatus::Computed);
    fx.cleanup().await;
}

#[tokio::test]
async fn build_fails_when_redis_is_unreachable() {
    let port = common::free_port();
    let err = Cache::builder(&format!("redis://127.0.0.1:{port}/0"))
        .build()
        .await
        .unwrap_err();
    assert!(matches!(err, Error::Connect { .. }), "{err:?}");
    assert!(err.to_string().contains("could not connect to Redis"));
    assert!(std::error::Error::source(&err).is_some(), "keeps its cause");
    // The lazy variant starts anyway and serves uncached.
    let lazy = Cache::builder(&format!("redis://127.0.0.1:{port}/0"))
        .build_lazy()
        .await
        .unwrap();
    let v: i32 = lazy
        .get_or_compute("k", [], || async { Ok::<_, Error>(3) })
        .await
        .unwrap();
    assert_eq!(v, 3);
}

#[tokio::test]
async fn cancelled_fill_gives_its_lease_back() {
    let mut fx = Fixture::new("cancelled").await;
    let (started_tx, started_rx) = oneshot::channel::<()>();
    let cache = fx.cache.clone();
    let task = tokio::spawn(async move {
        cache
            .get_or_compute("k", [Dep::table("t")], || async move {
                started_tx.send(()).unwrap();
                std::future::pending::<Result<i32, Error>>().await
            })
            .await
    });
    started_rx.await.unwrap();
    let lease = fx.cache.namespace().lease_key("k");
    assert!(fx.exists(&lease).await);
    task.abort();
    let _ = task.await;
    for _ in 0..50 {
        if !fx.exists(&lease).await {
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    // Only the dependency set's member is left, for the sweeper.
    let ns = fx.cache.namespace().clone();
    let dep = ns.dep_set_key(&TableName::parse("t").unwrap().table_dep());
    assert_eq!(fx.all_keys().await, [dep]);
    fx.cleanup().await;
}

#[tokio::test]
async fn waiter_refills_when_the_holders_fill_was_refused() {
    let mut fx = Fixture::new("refill").await;
    let other = fx.other_process().await;
    let holder = paused_fill(
        &fx.cache,
        "p",
        vec![Dep::row("products", [9])],
        "old".to_string(),
    )
    .await;
    let waiter = tokio::spawn(async move {
        other
            .entry("p")
            .depends_on(Dep::row("products", [9]))
            .fetch(|| async { Ok::<_, Error>("new".to_string()) })
            .await
            .unwrap()
    });
    tokio::time::sleep(Duration::from_millis(50)).await; // the waiter is polling
    let ns = fx.cache.namespace().clone();
    let dep = TableName::parse("products").unwrap().row_dep(&["9"]);
    invalidate(&mut fx.redis, &ns, &[], &[dep]).await.unwrap();
    let w = waiter.await.unwrap();
    assert_eq!((w.value.as_str(), w.status), ("new", CacheStatus::Computed));
    assert_eq!(holder.finish().await.status, CacheStatus::Uncached);
    assert_eq!(fx.raw_get("p").await.unwrap(), b"\"new\"");
    fx.cleanup().await;
}

#[tokio::test]
async fn age_is_listed_and_its_bookkeeping_goes_with_the_entry() {
    let mut fx = Fixture::new("age").await;
    let ns = fx.cache.namespace().clone();
    fx.cache.set("a", &1, [Dep::table("t")]).await.unwrap();
    let _: i32 = fx
        .cache
        .entry("b")
        .ttl(Duration::from_secs(60))
        .get_or_compute(|| async { Ok::<_, Error>(2) })
        .await
        .unwrap();
    fx.raw_set(&ns.value_key("foreign"), "x").await;
    tokio::time::sleep(Duration::from_millis(20)).await;

    let listed = fx.cache.keys("*").await.unwrap();
    let age = |k: &str| listed.iter().find(|i| i.key == k).unwrap().age;
    let a = age("a").expect("stored by the library: age known");
    assert!(
        a >= Duration::from_millis(20) && a < Duration::from_secs(10),
        "{a:?}"
    );
    assert!(age("b").is_some());
    assert_eq!(age("foreign"), None, "written by another program");
    let stamped: bool = redis::cmd("HEXISTS")
        .arg(ns.stamps_key("b"))
        .arg("b")
        .query_async(&mut fx.redis)
        .await
        .unwrap();
    assert!(
        stamped,
        "the stamp is in the stamps hash of the value's slot"
    );

    // Invalidation, clear and a refused fill leave no creation time behind.
    let t = TableName::parse("t").unwrap();
    invalidate(&mut fx.redis, &ns, &[], &[t.table_dep()])
        .await
        .unwrap();
    assert!(fx.cache.clear("b").await.unwrap());
    assert!(fx.cache.clear("foreign").await.unwrap());
    let failed: Result<i32, anyhow::Error> = fx
        .cache
        .get_or_compute("c", [], || async { Err(anyhow::anyhow!("no")) })
        .await;
    assert!(failed.is_err());
    assert!(fx.all_keys().await.is_empty(), "{:?}", fx.all_keys().await);
    fx.cleanup().await;
}

#[tokio::test]
async fn keys_up_to_stops_at_the_limit_and_says_so() {
    let fx = Fixture::new("keys_up_to").await;
    for i in 0..30 {
        fx.cache.set(&format!("k:{i:02}"), &i, []).await.unwrap();
    }
    let (some, more) = fx.cache.keys_up_to("k:*", 10).await.unwrap();
    assert_eq!((some.len(), more), (10, true));
    assert!(some.windows(2).all(|w| w[0].key < w[1].key), "sorted");
    let (all, more) = fx.cache.keys_up_to("k:*", 30).await.unwrap();
    assert_eq!((all.len(), more), (30, false));
    fx.cleanup().await;
}
