#![doc = include_str!("../README.md")]
#![warn(missing_docs)]
#![forbid(unsafe_code)]
#![cfg_attr(docsrs, feature(doc_cfg))]

mod breaker;
mod cache;
pub mod conn;
mod dep;
mod entry;
mod error;
mod flight;
pub mod invalidate;
pub mod keys;
mod lease;

#[cfg(feature = "axum")]
pub mod axum;

pub use cache::{Cache, CacheBuilder, KeyInfo};
pub use dep::Dep;
pub use entry::{CacheStatus, Entry, Fetched};
pub use error::Error;

/// An error and its sources, joined with `: ` for a log line.
pub(crate) fn error_chain(e: &dyn std::error::Error) -> String {
    let mut out = e.to_string();
    let mut source = e.source();
    while let Some(s) = source {
        out.push_str(": ");
        out.push_str(&s.to_string());
        source = s.source();
    }
    out
}
