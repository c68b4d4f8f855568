//! A throwaway database on the shared PostgreSQL server, one per test.
//!
//! Also compiled into the invalidator's CLI tests (`#[path]`), so both
//! suites create and drop databases the same way.

use std::sync::atomic::{AtomicU32, Ordering};
use tokio_postgres::{Client, NoTls};

/// Admin connection string; `SMARTCACHE_TEST_DATABASE_URL` overrides it.
pub fn admin_url() -> String {
    std::env::var("SMARTCACHE_TEST_DATABASE_URL")
        .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/postgres".to_owned())
}

/// A uniquely named database, dropped (with its connections) on drop.
pub struct TestDb {
    /// Database name.
    pub name: String,
    /// Connection string of the database.
    pub url: String,
}

/// A name unique to this process and call: `{tag}_{pid}_{n}`.
pub fn unique_name(tag: &str) -> String {
    static N: AtomicU32 = AtomicU32::new(0);
    format!(
        "{}_{}_{}",
        tag.to_lowercase(),
        std::process::id(),
        N.fetch_add(1, Ordering::Relaxed)
    )
}

impl TestDb {
    /// Creates the database.
    pub async fn create(tag: &str) -> Self {
        let name = format!("sct_{}", unique_name(tag));
        let admin = connect(&admin_url()).await;
        admin
            .batch_execute(&format!("CREATE DATABASE \"{name}\""))
            .await
            .unwrap_or_else(|e| panic!("create database {name}: {e}"));
        let url = with_database(&admin_url(), &name);
        Self { name, url }
    }

    /// A new connection to the database.
    pub async fn connect(&self) -> Client {
        connect(&self.url).await
    }
}

impl Drop for TestDb {
    fn drop(&mut self) {
        let name = self.name.clone();
        block_on_side(async move {
            if let Ok((client, conn)) = tokio_postgres::connect(&admin_url(), NoTls).await {
                tokio::spawn(conn);
                let _ = client
                    .batch_execute(&format!("DROP DATABASE IF EXISTS \"{name}\" WITH (FORCE)"))
                    .await;
            }
        });
    }
}

/// Runs `cleanup` to completion from a `Drop`, which cannot await and runs
/// inside the test's runtime: on a fresh runtime on its own thread.
pub fn block_on_side(cleanup: impl std::future::Future<Output = ()> + Send + 'static) {
    let _ = std::thread::spawn(move || {
        tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("runtime")
            .block_on(cleanup);
    })
    .join();
}

/// Connects, spawning the connection task.
pub async fn connect(url: &str) -> Client {
    let (client, conn) = tokio_postgres::connect(url, NoTls)
        .await
        .unwrap_or_else(|e| panic!("connect to {url}: {e}"));
    tokio::spawn(conn);
    client
}

/// `url` with its database part replaced by `db`.
pub fn with_database(url: &str, db: &str) -> String {
    let (base, _) = url.rsplit_once('/').expect("URL with a /database part");
    format!("{base}/{db}")
}

/// `url` with its user replaced by `user` (trust authentication).
pub fn with_user(url: &str, user: &str) -> String {
    let (scheme, rest) = url.split_once("://").expect("URL with a scheme");
    let rest = rest.split_once('@').map_or(rest, |(_, host)| host);
    format!("{scheme}://{user}@{rest}")
}
