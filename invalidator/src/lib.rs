//! `smartcache-invalidator`: the daemon that learns of committed changes
//! from PostgreSQL (trigger → outbox → doorbell) and deletes exactly the
//! affected Redis keys.
//!
//! The binary is a thin shell around [`run`]; tests call the same function
//! with their own shutdown future. What it does in Redis (the key layout,
//! the scripts, draining and dropping, sweeping, the markers) is the
//! protocol in `smartcache-core`; the `keys`, `clear` and `admin` commands
//! list and clear through the `smartcache` library's public API.
//!
//! ```no_run
//! # async fn demo() -> anyhow::Result<()> {
//! use smartcache_invalidator::config::{Config, Overrides};
//! let config = Config::load(None, &Overrides::default())?;
//! smartcache_invalidator::run(config, async {
//!     tokio::signal::ctrl_c().await.ok();
//! })
//! .await
//! # }
//! ```

#![forbid(unsafe_code)]
#![warn(missing_docs)]

pub mod admin;
mod canary;
pub mod capture;
pub mod catalog;
pub mod claim;
pub mod cli;
pub mod config;
pub mod conninfo;
mod delivery;
mod doorbell;
pub mod mapping;
mod markers;
mod monitor;
pub mod outbox;
pub mod pg;
mod pooling;
pub mod recent;
pub mod redis_ops;
mod replicas;
pub mod schema;
pub mod shutdown;
pub mod sql;
mod sweep;
pub mod telemetry;
mod time_travel;
pub mod tls;

pub use delivery::run;
