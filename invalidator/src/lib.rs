//! The invalidator daemon.
