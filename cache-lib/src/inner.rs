//! The state behind a [`Cache`](crate::Cache) handle, and how request
//! paths and management calls talk to Redis through it.

use std::future::Future;
use std::time::Duration;

use redis::{RedisError, RedisResult};
use smartcache_core::conn::Conn;
use smartcache_core::keys::{check_cache_key, check_cluster_key, InvalidName, Namespace};
use tracing::{info, warn};

use crate::breaker::{Breaker, LogLimiter};
use crate::error::{error_chain, Error};
use crate::flight::Flights;

pub(crate) struct Inner {
    pub(crate) con: Conn,
    pub(crate) ns: Namespace,
    pub(crate) url: String,
    pub(crate) lease_ttl: Duration,
    pub(crate) lease_wait: Duration,
    pub(crate) default_ttl: Option<Duration>,
    pub(crate) timeout: Duration,
    pub(crate) admin_timeout: Duration,
    pub(crate) breaker: Breaker,
    pub(crate) log: LogLimiter,
    pub(crate) flights: Flights,
}

impl std::fmt::Debug for Inner {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Cache")
            .field("namespace", &self.ns.name())
            .field("url", &self.url)
            .finish_non_exhaustive()
    }
}

/// Whether a Redis error means Redis is unreachable or broken (as opposed to
/// a command the server refused).
fn is_outage(e: &RedisError) -> bool {
    !matches!(
        e.kind(),
        redis::ErrorKind::Server(_)
            | redis::ErrorKind::UnexpectedReturnType
            | redis::ErrorKind::Extension
    ) || e.is_timeout()
}

impl Inner {
    /// Checks a cache key given by a caller (see [`check_cluster_key`]).
    pub(crate) fn check_key(&self, key: &str) -> Result<(), InvalidName> {
        if self.con.is_cluster() {
            check_cluster_key(key)
        } else {
            check_cache_key(key)
        }
    }

    /// Runs `fut` within `timeout`, feeding the outcome to the breaker.
    async fn bounded<T>(
        &self,
        op: &'static str,
        timeout: Duration,
        fut: impl Future<Output = RedisResult<T>>,
    ) -> Result<T, Error> {
        match tokio::time::timeout(timeout, fut).await {
            Ok(Ok(v)) => {
                if self.breaker.is_open() && self.breaker.success() {
                    info!(
                        namespace = self.ns.name(),
                        "Redis answers again; caching resumes"
                    );
                }
                Ok(v)
            }
            Ok(Err(source)) => {
                if is_outage(&source) {
                    self.breaker.failure();
                }
                Err(Error::Redis { op, source })
            }
            Err(_) => {
                self.breaker.failure();
                Err(Error::Timeout { op, timeout })
            }
        }
    }

    /// A Redis call on a request path: skipped while the breaker is open,
    /// bounded by the short timeout; a failure is logged (rate-limited) and
    /// becomes `None`, so the caller goes on without the cache.
    pub(crate) async fn try_redis<T>(
        &self,
        op: &'static str,
        fut: impl Future<Output = RedisResult<T>>,
    ) -> Option<T> {
        if !self.breaker.allow() {
            return None;
        }
        match self.bounded(op, self.timeout, fut).await {
            Ok(v) => Some(v),
            Err(e) => {
                self.warn_limited(&e, "Redis call failed; serving uncached");
                None
            }
        }
    }

    pub(crate) fn warn_limited(&self, e: &dyn std::error::Error, msg: &'static str) {
        if let Some(suppressed) = self.log.permit() {
            warn!(
                namespace = self.ns.name(),
                error = %error_chain(e),
                suppressed,
                "{msg}"
            );
        }
    }

    /// A management call: not skipped by the breaker, longer timeout,
    /// errors returned.
    pub(crate) async fn admin<T>(
        &self,
        op: &'static str,
        fut: impl Future<Output = RedisResult<T>>,
    ) -> Result<T, Error> {
        self.bounded(op, self.admin_timeout, fut).await
    }
}
