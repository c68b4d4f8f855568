//! `smartcache-core`: the coherence protocol that the `smartcache` library
//! and the `smartcache-invalidator` daemon share. It is not meant for
//! request handlers (use the `smartcache` crate there): several of its
//! calls delete a whole dependency's entries, or every value of a
//! namespace.
//!
//! | module | holds |
//! |---|---|
//! | [`keys`] | the Redis key layout: the only place that builds key names |
//! | [`conn`] | one connection type for a single Redis server or a Redis Cluster |
//! | [`fill`] | the miss path: take the fill lease, register, fill or release; an unconditional store |
//! | [`invalidate`] | drain dependency sets and drop entries with their bookkeeping |
//! | [`sweep`] | remove registrations of entries that are gone, behind a fence |
//! | [`markers`] | the marker keys that tell when part of Redis lost its data |
//! | [`describe`] | size, dependencies and age of entries, for the admin view |
//!
//! The Lua scripts are the files of `core/lua/`, built in with
//! `include_str!`; each opens with the invariant it keeps. Every script
//! touches the keys of one hash slot only, so the same code serves a
//! single server and a cluster.
//!
//! ```no_run
//! # async fn demo() -> redis::RedisResult<()> {
//! use smartcache_core::conn::{Conn, Options};
//! use smartcache_core::keys::{Namespace, TableName};
//!
//! let mut con = Conn::open("redis://127.0.0.1:6379/0", &Options::default())?;
//! let ns = Namespace::new("cache").unwrap();
//! // What the daemon does for a committed UPDATE of products row 1.
//! let table = TableName::parse("products").unwrap();
//! let deps = [table.table_dep(), table.row_dep(&["1"])];
//! let deleted = smartcache_core::invalidate::invalidate(&mut con, &ns, &["product:1".into()], &deps).await?;
//! # Ok(()) }
//! ```

#![warn(missing_docs)]
#![forbid(unsafe_code)]

pub mod conn;
pub mod describe;
pub mod fill;
pub mod invalidate;
pub mod keys;
pub mod markers;
mod scripts;
pub mod sweep;
