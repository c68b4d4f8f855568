#![doc = include_str!("../README.md")]
#![warn(missing_docs)]
#![forbid(unsafe_code)]

pub mod conn;
pub mod describe;
pub mod diagnose;
pub mod fill;
pub mod fingerprint;
pub mod invalidate;
pub mod keys;
pub mod markers;
pub mod registry;
mod scripts;
mod sentinel;
pub mod sweep;
pub mod tls;
pub mod upgrade;
