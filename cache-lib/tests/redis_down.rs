//! Guarantee 6 against our own throwaway redis-server, stopped and started
//! by PID: requests never fail while Redis is down, and caching resumes by
//! itself when it is back.

mod common;

use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use common::OwnRedis;
use smartcache::{Cache, CacheStatus, Error};

async fn fetch(cache: &Cache, runs: &AtomicUsize) -> (String, CacheStatus) {
    let f = cache
        .entry("greeting")
        .fetch(|| async {
            runs.fetch_add(1, Ordering::SeqCst);
            Ok::<_, Error>("hello".to_string())
        })
        .await
        .expect("a request never fails because of Redis");
    (f.value, f.status)
}

#[tokio::test]
async fn requests_succeed_while_redis_is_down_and_caching_resumes() {
    let mut server = OwnRedis::start().await;
    let cache = Cache::builder(&server.url())
        .namespace(common::namespace("down"))
        .timeout(Duration::from_millis(200))
        .breaker_cooldown(Duration::from_millis(200))
        .build()
        .await
        .unwrap();
    let runs = AtomicUsize::new(0);
    assert_eq!(fetch(&cache, &runs).await.1, CacheStatus::Computed);
    assert_eq!(fetch(&cache, &runs).await.1, CacheStatus::Hit);

    server.stop().await;
    let t0 = Instant::now();
    for _ in 0..50 {
        let (value, status) = fetch(&cache, &runs).await;
        assert_eq!(value, "hello");
        assert_eq!(status, CacheStatus::Uncached);
    }
    assert!(
        t0.elapsed() < Duration::from_secs(3),
        "the breaker keeps a dead Redis from adding a timeout to every request: {:?}",
        t0.elapsed()
    );
    assert!(
        cache.clear("greeting").await.is_err(),
        "management calls report the outage"
    );
    assert!(!cache.set("k", &1, []).await.unwrap(), "not stored");
    assert_eq!(cache.get::<i32>("k").await.unwrap(), None);

    server.restart().await; // empty: no persistence
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let (_, status) = fetch(&cache, &runs).await;
        if status == CacheStatus::Computed {
            break;
        }
        assert!(Instant::now() < deadline, "caching did not resume");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(fetch(&cache, &runs).await.1, CacheStatus::Hit);
    server.stop().await;
}
