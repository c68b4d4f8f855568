//! smartcache: cache data in Redis forever; PostgreSQL says what changed.

pub mod invalidate;
pub mod keys;
