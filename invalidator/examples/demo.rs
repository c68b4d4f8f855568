//! The main job in one minute: install triggers on a demo table, start the
//! daemon, change rows with plain SQL, watch the cached keys disappear and
//! time it. Uses DATABASE_URL and REDIS_URL (see `scripts/demo.sh`, which
//! starts throwaway servers when nothing answers there).
//!
//! Creates the database `smartcache_demo` and the namespace `demo`, and
//! removes both at the end.

use redis::AsyncCommands;
use smartcache_core::conn::Conn;
use smartcache_invalidator::config::{Config, Overrides};
use smartcache_invalidator::schema;
use std::path::Path;
use std::time::{Duration, Instant};
use tokio_postgres::NoTls;

const DB: &str = "smartcache_demo";

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let admin_url = std::env::var("DATABASE_URL")
        .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/postgres".into());
    let redis_url =
        std::env::var("REDIS_URL").unwrap_or_else(|_| "redis://127.0.0.1:6379/0".into());
    let db_url = format!(
        "{}/{DB}",
        admin_url.rsplit_once('/').expect("URL with /db").0
    );

    let admin = connect(&admin_url).await?;
    admin
        .batch_execute(&format!("DROP DATABASE IF EXISTS {DB} WITH (FORCE)"))
        .await?;
    admin
        .batch_execute(&format!("CREATE DATABASE {DB}"))
        .await?;
    let mut pg = connect(&db_url).await?;
    pg.batch_execute(
        "CREATE TABLE demo_products (id bigint PRIMARY KEY, name text NOT NULL,
                                     price_cents bigint NOT NULL, category_id int NOT NULL);
         INSERT INTO demo_products SELECT g, 'product ' || g, 100 * g, g % 10
           FROM generate_series(1, 1000) g;",
    )
    .await?;
    println!("1. created table demo_products (1000 rows) in database {DB}");

    let toml = format!(
        "database_url = {db_url:?}\nredis_url = {redis_url:?}\nnamespace = \"demo\"\n\
         [[tables]]\nname = \"demo_products\"\n\
         keys = [\"product:{{id}}\", \"category:{{category_id}}\", \"product_list\"]\n"
    );
    let config = Config::from_toml(&toml, Path::new("demo.toml"), &Overrides::default())?;
    let plan = schema::install_plan(&pg, &config).await?;
    schema::apply(&mut pg, &plan).await?;
    println!("2. smartcache-invalidator install:");
    for line in &plan.summary {
        println!("     {line}");
    }

    let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
    let daemon = tokio::spawn(smartcache_invalidator::run(config.clone(), async {
        let _ = stop_rx.await;
    }));
    // Started: it drained the outbox and now asks writers to ring.
    let listening = Instant::now();
    while !pg
        .query_one(
            "SELECT last_value > (extract(epoch FROM clock_timestamp()) * 1000)::bigint \
             FROM smartcache.doorbell",
            &[],
        )
        .await?
        .get::<_, bool>(0)
    {
        anyhow::ensure!(
            listening.elapsed() < Duration::from_secs(10),
            "the daemon did not start"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    println!(
        "3. daemon running (namespace `demo`, Redis {redis_url}), listening after {:.0} ms",
        ms(listening.elapsed())
    );

    let mut redis = Conn::open(&redis_url, &Default::default())?;
    let _: () = redis
        .set("demo:product:42", r#"{"id":42,"price_cents":4200}"#)
        .await?;
    let _: () = redis.set("demo:product:43", "untouched").await?;
    println!("4. cached demo:product:42 and demo:product:43 in Redis");

    let started = Instant::now();
    pg.batch_execute("UPDATE demo_products SET price_cents = 4999 WHERE id = 42")
        .await?;
    let took = wait_gone(&mut redis, "demo:product:42").await?;
    let survived: bool = redis.exists("demo:product:43").await?;
    println!(
        "5. UPDATE demo_products SET price_cents = 4999 WHERE id = 42\n     \
         -> demo:product:42 deleted {:.2} ms after COMMIT returned ({:.2} ms after the statement was sent); \
         demo:product:43 still cached: {survived}",
        ms(took),
        ms(started.elapsed())
    );

    let mut lags = Vec::new();
    for i in 0..200 {
        let id = 100 + i;
        let _: () = redis.set(format!("demo:product:{id}"), "v").await?;
        pg.batch_execute(&format!(
            "UPDATE demo_products SET price_cents = price_cents + 1 WHERE id = {id}"
        ))
        .await?;
        lags.push(wait_gone(&mut redis, &format!("demo:product:{id}")).await?);
    }
    lags.sort();
    println!(
        "6. 200 single-row commits, commit -> key deleted: p50 {:.2} ms, p99 {:.2} ms, max {:.2} ms",
        ms(lags[lags.len() / 2]),
        ms(lags[lags.len() * 99 / 100]),
        ms(lags[lags.len() - 1])
    );

    let mut pipe = redis::pipe();
    for id in 1..=1000 {
        pipe.set(format!("demo:product:{id}"), "v").ignore();
    }
    let _: () = pipe.query_async(&mut redis).await?;
    let started = Instant::now();
    pg.batch_execute("UPDATE demo_products SET price_cents = price_cents + 1")
        .await?;
    let committed = started.elapsed();
    let took = wait_gone(&mut redis, "demo:product:1000").await?;
    let left = count(&mut redis).await?;
    println!(
        "7. one UPDATE of all 1000 rows (commit took {:.1} ms): all product keys gone {:.1} ms after COMMIT; cached values left in namespace: {left}",
        ms(committed),
        ms(took)
    );

    let _ = stop_tx.send(());
    daemon.await??;
    let _: () = redis.set("demo:product:7", "v").await?;
    pg.batch_execute("UPDATE demo_products SET name = 'renamed' WHERE id = 7")
        .await?;
    println!(
        "8. daemon stopped; product 7 changed meanwhile (the change waits in smartcache.outbox)"
    );
    let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
    let restarted = Instant::now();
    let daemon = tokio::spawn(smartcache_invalidator::run(config.clone(), async {
        let _ = stop_rx.await;
    }));
    wait_gone(&mut redis, "demo:product:7").await?;
    println!(
        "9. daemon restarted: demo:product:7 deleted {:.1} ms after start; nothing was lost",
        ms(restarted.elapsed())
    );
    let _ = stop_tx.send(());
    daemon.await??;

    schema::uninstall(&mut pg).await?;
    drop(pg);
    admin
        .batch_execute(&format!("DROP DATABASE IF EXISTS {DB} WITH (FORCE)"))
        .await?;
    let keys = redis.scan_all("demo:*").await?;
    if !keys.is_empty() {
        for key in keys {
            let _: () = redis.unlink(key).await?;
        }
    }
    println!("10. cleaned up: uninstalled, dropped database {DB}, cleared namespace demo");
    Ok(())
}

async fn connect(url: &str) -> anyhow::Result<tokio_postgres::Client> {
    let (client, conn) = tokio_postgres::connect(url, NoTls)
        .await
        .map_err(|e| anyhow::anyhow!("cannot connect to {url}: {e}"))?;
    tokio::spawn(conn);
    Ok(client)
}

/// Polls until `key` is gone; returns how long that took.
async fn wait_gone(redis: &mut Conn, key: &str) -> anyhow::Result<Duration> {
    let start = Instant::now();
    loop {
        let exists: bool = redis.exists(key).await?;
        if !exists {
            return Ok(start.elapsed());
        }
        anyhow::ensure!(
            start.elapsed() < Duration::from_secs(10),
            "{key} still cached after 10 s: is the daemon running?"
        );
    }
}

/// Cached values left in the namespace (the daemon's own bookkeeping, such
/// as its list of recent batches, is not counted).
async fn count(redis: &mut Conn) -> anyhow::Result<usize> {
    let ns = smartcache_core::keys::Namespace::new("demo")?;
    let found = redis.scan_all(&ns.match_all()).await?;
    Ok(found
        .iter()
        .filter(|k| ns.cache_key_of(k).is_some())
        .count())
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}
