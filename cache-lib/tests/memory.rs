//! Memory per cached entry: every Redis key of a namespace filled through
//! the library, against plain `SET`s of the same values under the same key
//! names, both measured with `MEMORY USAGE … SAMPLES 0` in the same test.
//! Bytes are deterministic, so the bound is asserted.

mod common;

use common::{builder, namespace, Fixture};
use futures_util::stream::{self, StreamExt};
use smartcache::{Dep, Error};
use smartcache_core::conn::Conn;

/// Entries per case: the per-slot bookkeeping hashes are shared by the
/// entries of a slot, so the figure is taken at a size where they are.
const ENTRIES: usize = 100_000;
/// A 50-byte JSON value, as the shop's products are.
const VALUE: &str = r#"{"id":1,"name":"Widget","price_cents":1999,"x":1}"#;

/// Sum of `MEMORY USAGE` over every key of the namespace.
async fn bytes_of(con: &mut Conn, ns: &smartcache_core::keys::Namespace) -> u64 {
    let keys = con.scan_all(&ns.match_all()).await.unwrap();
    let mut total = 0;
    for chunk in keys.chunks(1000) {
        let usage = stream::iter(chunk.iter().cloned())
            .map(|k| {
                let mut con = con.clone();
                async move {
                    redis::cmd("MEMORY")
                        .arg("USAGE")
                        .arg(&k)
                        .arg("SAMPLES")
                        .arg(0)
                        .query_async::<Option<u64>>(&mut con)
                        .await
                        .unwrap()
                        .unwrap_or(0)
                }
            })
            .buffer_unordered(64)
            .collect::<Vec<u64>>()
            .await;
        total += usage.iter().sum::<u64>();
    }
    total
}

/// Fills `ENTRIES` entries `product:{i}` with `deps(i)` through
/// `get_or_compute`, and the same values by plain `SET` in another
/// namespace; returns (bytes per entry, bytes per plain SET).
async fn measure(test: &str, deps: impl Fn(usize) -> Vec<Dep>) -> (f64, f64) {
    let mut fx = Fixture::new(test).await;
    // A generous timeout: the machine is shared and the figure needs every
    // entry stored, not the request path's 250 ms bound.
    let cache = builder(&fx.ns)
        .timeout(std::time::Duration::from_secs(10))
        .build()
        .await
        .unwrap();
    let ns = fx.cache.namespace().clone();
    // A fill that hit the library's Redis timeout under this load is
    // computed uncached; fill the ones missing again until all are stored.
    let mut missing: Vec<usize> = (0..ENTRIES).collect();
    for _ in 0..10 {
        stream::iter(missing.iter().copied())
            .map(|i| {
                let (cache, deps) = (cache.clone(), deps(i));
                async move {
                    let _: serde_json::Value = cache
                        .get_or_compute(&format!("product:{i}"), deps, || async {
                            Ok::<_, Error>(serde_json::from_str(VALUE).unwrap())
                        })
                        .await
                        .unwrap();
                }
            })
            .buffer_unordered(32)
            .for_each(|_| async {})
            .await;
        let stored: std::collections::HashSet<String> = fx
            .redis
            .scan_all(&ns.match_cache_keys("product:*"))
            .await
            .unwrap()
            .into_iter()
            .collect();
        missing.retain(|i| !stored.contains(&ns.value_key(&format!("product:{i}"))));
        if missing.is_empty() {
            break;
        }
    }
    assert!(missing.is_empty(), "{} entries never stored", missing.len());
    let stored = fx.raw_get("product:0").await.unwrap();
    let entries = bytes_of(&mut fx.redis, &ns).await;

    // The same key names and values, plain SETs (another namespace of the
    // same length, so key names are as long).
    let plain_name = namespace(test).replacen("t_", "p_", 1);
    let plain = smartcache_core::keys::Namespace::new(&plain_name).unwrap();
    let mut con = fx.redis.clone();
    stream::iter(0..ENTRIES)
        .map(|i| {
            let (mut con, key, value) = (
                con.clone(),
                plain.value_key(&format!("product:{i}")),
                stored.clone(),
            );
            async move {
                redis::cmd("SET")
                    .arg(key)
                    .arg(value)
                    .query_async::<()>(&mut con)
                    .await
                    .unwrap()
            }
        })
        .buffer_unordered(64)
        .for_each(|_| async {})
        .await;
    let plain_bytes = bytes_of(&mut con, &plain).await;
    let all = con.scan_all(&plain.match_all()).await.unwrap();
    smartcache_core::invalidate::unlink(&mut con, all)
        .await
        .unwrap();
    fx.cleanup().await;
    let n = ENTRIES as f64;
    (entries as f64 / n, plain_bytes as f64 / n)
}

#[tokio::test]
async fn an_entry_with_one_row_dependency_costs_at_most_twice_a_plain_set() {
    let (entry, plain) = measure("mem1", |i| vec![Dep::row("products", [i as i64])]).await;
    println!(
        "one row dependency: {entry:.0} B per entry, plain SET {plain:.0} B: {:.2}x",
        entry / plain
    );
    assert!(
        entry <= 2.0 * plain,
        "{entry:.0} B per entry against {plain:.0} B for a plain SET: {:.2}x",
        entry / plain
    );
}

#[tokio::test]
async fn an_entry_with_three_row_dependencies_costs_at_most_three_times_a_plain_set() {
    let (entry, plain) = measure("mem3", |i| {
        let id = i as i64;
        vec![
            Dep::row("products", [id]),
            Dep::row("prices", [id]),
            Dep::row("stock", [id]),
        ]
    })
    .await;
    println!(
        "three row dependencies: {entry:.0} B per entry, plain SET {plain:.0} B: {:.2}x",
        entry / plain
    );
    assert!(
        entry <= 3.0 * plain,
        "{entry:.0} B per entry against {plain:.0} B for a plain SET: {:.2}x",
        entry / plain
    );
}
