//! The example shop: an axum server whose handlers cache with smartcache.
//!
//! ```text
//! DATABASE_URL=postgres://postgres@127.0.0.1:5432/postgres \
//! REDIS_URL=redis://127.0.0.1:6379/0 \
//!   cargo run -p smartcache --example shop
//! smartcache-invalidator --config cache-lib/examples/shop.toml install
//! smartcache-invalidator --config cache-lib/examples/shop.toml run
//! ```
//!
//! | route | cached as | depends on |
//! |---|---|---|
//! | `GET /products/{id}` | `product:{id}` | that row of `shop_products` |
//! | `GET /products` | `product_list` | the table `shop_products` |
//!
//! The app never clears the cache: the invalidator does, whoever writes.
//! On a Redis Cluster, set `SMARTCACHE_REDIS_CLUSTER=1` and list the seed
//! nodes in `REDIS_URL`, comma-separated.

use std::net::SocketAddr;

use anyhow::Context;
use axum::extract::{Path, State};
use axum::http::{HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::{Json, Router};
use deadpool_postgres::{Pool, Runtime};
use serde::{Deserialize, Serialize};
use smartcache::{Cache, CacheStatus, Dep};
use tokio_postgres::NoTls;
use tracing_subscriber::EnvFilter;

const TABLE: &str = "shop_products";

#[derive(Clone)]
struct Shop {
    db: Pool,
    cache: Cache,
}

#[derive(Debug, Serialize, Deserialize)]
struct Product {
    id: i64,
    name: String,
    price_cents: i64,
}

impl From<tokio_postgres::Row> for Product {
    fn from(row: tokio_postgres::Row) -> Self {
        Self {
            id: row.get("id"),
            name: row.get("name"),
            price_cents: row.get("price_cents"),
        }
    }
}

enum ShopError {
    NotFound,
    Internal(anyhow::Error),
}

impl<E: Into<anyhow::Error>> From<E> for ShopError {
    fn from(e: E) -> Self {
        ShopError::Internal(e.into())
    }
}

impl IntoResponse for ShopError {
    fn into_response(self) -> Response {
        let (status, message) = match self {
            ShopError::NotFound => (StatusCode::NOT_FOUND, "not found".to_owned()),
            ShopError::Internal(e) => {
                tracing::error!(error = format!("{e:#}"), "request failed");
                (
                    StatusCode::INTERNAL_SERVER_ERROR,
                    "internal error".to_owned(),
                )
            }
        };
        let body = Json(serde_json::json!({ "error": message }));
        with_x_cache(CacheStatus::Uncached, (status, body).into_response())
    }
}

fn with_x_cache(status: CacheStatus, mut resp: Response) -> Response {
    let v = if status.is_hit() { "hit" } else { "miss" };
    resp.headers_mut()
        .insert("x-cache", HeaderValue::from_static(v));
    resp
}

async fn product(State(shop): State<Shop>, Path(id): Path<String>) -> Result<Response, ShopError> {
    let id: i64 = id.parse().map_err(|_| ShopError::NotFound)?;
    let fetched = shop
        .cache
        .entry(format!("product:{id}"))
        .depends_on(Dep::row(TABLE, [id]))
        .fetch(|| async {
            let db = shop.db.get().await?;
            let row = db
                .query_opt(
                    "SELECT id, name, price_cents FROM shop_products WHERE id = $1",
                    &[&id],
                )
                .await?;
            // Not found is not cached: arbitrary ids must not fill Redis.
            row.map(Product::from).ok_or(ShopError::NotFound)
        })
        .await?;
    Ok(with_x_cache(
        fetched.status,
        Json(fetched.value).into_response(),
    ))
}

async fn products(State(shop): State<Shop>) -> Result<Response, ShopError> {
    let fetched = shop
        .cache
        .entry("product_list")
        .depends_on(Dep::table(TABLE))
        .fetch(|| async {
            let db = shop.db.get().await?;
            let rows = db
                .query(
                    "SELECT id, name, price_cents FROM shop_products ORDER BY id",
                    &[],
                )
                .await?;
            Ok::<_, ShopError>(rows.into_iter().map(Product::from).collect::<Vec<_>>())
        })
        .await?;
    Ok(with_x_cache(
        fetched.status,
        Json(fetched.value).into_response(),
    ))
}

/// Creates the table if missing and seeds ids 1..=1000 if it is empty.
async fn prepare(db: &Pool) -> anyhow::Result<()> {
    let db = db
        .get()
        .await
        .context("connecting to PostgreSQL (DATABASE_URL)")?;
    db.batch_execute(
        "CREATE TABLE IF NOT EXISTS shop_products (
             id bigint PRIMARY KEY,
             name text NOT NULL,
             price_cents bigint NOT NULL
         );
         INSERT INTO shop_products (id, name, price_cents)
         SELECT g, 'Product ' || g, g * 100 FROM generate_series(1, 1000) AS g
         WHERE NOT EXISTS (SELECT 1 FROM shop_products)
         ON CONFLICT DO NOTHING;",
    )
    .await
    .context("creating and seeding shop_products")?;
    Ok(())
}

fn env_or(name: &str, default: &str) -> String {
    std::env::var(name).unwrap_or_else(|_| default.to_owned())
}

async fn shutdown_signal() {
    let ctrl_c = tokio::signal::ctrl_c();
    #[cfg(unix)]
    {
        let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
            .expect("installing the SIGTERM handler");
        tokio::select! {
            _ = ctrl_c => {}
            _ = term.recv() => {}
        }
    }
    #[cfg(not(unix))]
    let _ = ctrl_c.await;
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    tracing_subscriber::fmt()
        .with_env_filter(EnvFilter::try_from_default_env().unwrap_or_else(|_| "info".into()))
        .init();
    let database_url = env_or(
        "DATABASE_URL",
        "postgres://postgres@127.0.0.1:5432/postgres",
    );
    let redis_url = env_or("REDIS_URL", "redis://127.0.0.1:6379/0");
    let namespace = env_or("SMARTCACHE_NAMESPACE", "cache");
    let cluster = matches!(
        env_or("SMARTCACHE_REDIS_CLUSTER", "").as_str(),
        "1" | "true"
    );
    let addr: SocketAddr = env_or("SHOP_ADDR", "127.0.0.1:3000")
        .parse()
        .context("SHOP_ADDR must be host:port")?;

    let db = deadpool_postgres::Config {
        url: Some(database_url),
        ..Default::default()
    }
    .create_pool(Some(Runtime::Tokio1), NoTls)
    .context("DATABASE_URL is not a valid PostgreSQL URL")?;
    prepare(&db).await?;

    // Lazy: the shop starts and serves (uncached) even while Redis is down.
    let cache = Cache::builder(&redis_url)
        .namespace(namespace)
        .cluster(cluster)
        .build_lazy()
        .await?;
    if let Err(e) = cache.ping().await {
        tracing::warn!(error = %e, "Redis is not answering yet; serving uncached until it does");
    }

    let app = Router::new()
        .route("/products", get(products))
        .route("/products/{id}", get(product))
        .with_state(Shop { db, cache });
    let listener = tokio::net::TcpListener::bind(addr)
        .await
        .with_context(|| format!("binding {addr} (SHOP_ADDR)"))?;
    tracing::info!(%addr, "shop listening");
    axum::serve(listener, app)
        .with_graceful_shutdown(shutdown_signal())
        .await?;
    Ok(())
}
