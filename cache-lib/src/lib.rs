#![doc = include_str!("../README.md")]
#![warn(missing_docs)]
#![forbid(unsafe_code)]
#![cfg_attr(docsrs, feature(doc_cfg))]

mod breaker;
mod cache;
mod dep;
mod entry;
mod error;
mod flight;
pub mod freshness;
mod inner;
mod lease;
mod local;
mod tracking;

#[cfg(feature = "axum")]
pub mod axum;

pub use cache::{Cache, CacheBuilder};
pub use dep::Dep;
pub use entry::{CacheStatus, Entry, Fetched};
pub use error::Error;
pub use local::LocalStats;
pub use smartcache_core::describe::KeyInfo;
pub use smartcache_core::keys::{DepId, InvalidName, Namespace};
pub use smartcache_core::tls::{Tls, TlsFileError};
