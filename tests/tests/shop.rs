//! The example app end to end: the daemon and the `shop` example run, a
//! price changes with plain SQL, and the next request is a miss with the
//! new price. The app itself never clears the cache.

use smartcache_invalidator::config::{Config, Overrides};
use smartcache_tests::{free_port, http_get, Env};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// The `shop` example binary, built by `cargo test --workspace`.
fn shop_binary() -> std::path::PathBuf {
    let exe = std::env::current_exe().unwrap();
    let dir = exe.parent().and_then(|d| d.parent()).unwrap();
    let bin = dir.join("examples").join("shop");
    assert!(
        bin.exists(),
        "{} is missing: run the tests with `cargo test --workspace` (scripts/test.sh), which builds the examples",
        bin.display()
    );
    bin
}

struct Shop {
    child: Child,
    addr: String,
}

impl Drop for Shop {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// GET: (status, x-cache, body).
async fn get(addr: &str, path: &str) -> std::io::Result<(u16, String, String)> {
    let r = http_get(addr, path).await?;
    Ok((r.status, r.header("x-cache").to_owned(), r.body))
}

async fn start_shop(env: &Env) -> Shop {
    let addr = format!("127.0.0.1:{}", free_port());
    let child = Command::new(shop_binary())
        .env("DATABASE_URL", &env.db.url)
        .env("REDIS_URL", &env.redis_url)
        .env(
            "SMARTCACHE_REDIS_CLUSTER",
            if env.redis_cluster { "1" } else { "0" },
        )
        .env("SMARTCACHE_NAMESPACE", env.ns.name())
        .env("SHOP_ADDR", &addr)
        .stdout(Stdio::null())
        .spawn()
        .expect("start the shop example");
    let shop = Shop { child, addr };
    let start = Instant::now();
    while get(&shop.addr, "/products/1").await.is_err() {
        assert!(
            start.elapsed() < Duration::from_secs(30),
            "shop did not start"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    shop
}

#[tokio::test]
async fn price_changed_with_plain_sql_is_a_miss_with_the_new_price() {
    let mut env = Env::new("shop", "").await;
    let shop = start_shop(&env).await;
    // The example's own daemon config, pointed at this test's servers the
    // way flags would.
    let overrides = Overrides {
        database_url: Some(env.db.url.clone()),
        redis_url: Some(env.redis_url.clone()),
        redis_cluster: Some(env.redis_cluster),
        namespace: Some(env.ns.name().to_owned()),
        ..Overrides::default()
    };
    let shop_toml = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../cache-lib/examples/shop.toml"
    );
    let config = Config::load(Some(std::path::Path::new(shop_toml)), &overrides).unwrap();
    env.install(&config).await;
    let daemon = env.start_daemon(&config);

    // Warm both routes.
    get(&shop.addr, "/products/7").await.unwrap();
    get(&shop.addr, "/products").await.unwrap();
    let (status, x_cache, body) = get(&shop.addr, "/products/7").await.unwrap();
    assert_eq!((status, x_cache.as_str()), (200, "hit"), "{body}");
    assert_eq!(get(&shop.addr, "/products").await.unwrap().1, "hit");
    let untouched = get(&shop.addr, "/products/8").await.unwrap();
    assert_eq!(get(&shop.addr, "/products/8").await.unwrap().1, "hit");

    env.pg
        .batch_execute("UPDATE shop_products SET price_cents = 123456 WHERE id = 7")
        .await
        .unwrap();
    env.wait_gone(&["product:7", "product_list"]).await;

    let (status, x_cache, body) = get(&shop.addr, "/products/7").await.unwrap();
    assert_eq!((status, x_cache.as_str()), (200, "miss"));
    assert!(body.contains("\"price_cents\":123456"), "{body}");
    assert_eq!(get(&shop.addr, "/products/7").await.unwrap().1, "hit");
    let (_, x_cache, list) = get(&shop.addr, "/products").await.unwrap();
    assert_eq!(x_cache, "miss");
    assert!(list.contains("123456"));
    let (_, x_cache, body) = get(&shop.addr, "/products/8").await.unwrap();
    assert_eq!(
        (x_cache.as_str(), body),
        ("hit", untouched.2),
        "another product stays cached"
    );

    env.pg
        .batch_execute("DELETE FROM shop_products WHERE id = 7")
        .await
        .unwrap();
    env.wait_gone(&["product:7"]).await;
    assert_eq!(get(&shop.addr, "/products/7").await.unwrap().0, 404);
    daemon.stop().await;
}
