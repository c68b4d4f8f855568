//! `smartcache-invalidator`: the daemon that learns of committed changes
//! from PostgreSQL (trigger → outbox → doorbell) and deletes exactly the
//! affected Redis keys.
//!
//! The binary is a thin shell around [`run`]; tests call the same function
//! with their own shutdown future.

#![forbid(unsafe_code)]
#![warn(missing_docs)]

pub mod admin;
mod canary;
pub mod capture;
pub mod catalog;
pub mod claim;
pub mod cli;
pub mod config;
mod delivery;
mod doorbell;
pub mod mapping;
mod markers;
mod monitor;
pub mod outbox;
pub mod pg;
pub mod recent;
pub mod redis_ops;
pub mod schema;
pub mod shutdown;
pub mod sql;
mod sweep;
pub mod telemetry;

pub use delivery::run;
