//! The state behind a [`Cache`](crate::Cache) handle, and how request
//! paths and management calls talk to Redis through it.

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use redis::{AsyncCommands, RedisError, RedisResult};
use smartcache_core::conn::Conn;
use smartcache_core::keys::{check_cache_key, check_cluster_key, InvalidName, Namespace};
use tracing::{info, warn};

use crate::breaker::{Breaker, LogLimiter};
use crate::error::{error_chain, Error};
use crate::flight::Flights;
use crate::tracking::{tracked_get, Tracking};

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
    /// The local tier, if turned on.
    pub(crate) tier: Option<Tracking>,
}

/// A value read on a request path.
pub(crate) enum Got {
    /// A copy from the local tier.
    Local(Arc<[u8]>),
    /// The reply of a `GET`.
    Redis(Vec<u8>),
}

impl Got {
    pub(crate) fn as_slice(&self) -> &[u8] {
        match self {
            Got::Local(b) => b,
            Got::Redis(b) => b,
        }
    }

    pub(crate) fn into_vec(self) -> Vec<u8> {
        match self {
            Got::Local(b) => b.to_vec(),
            Got::Redis(b) => b,
        }
    }
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

    /// The local tier's copy of `key`, if it holds one it may serve (and
    /// `key` is valid: an invalid one must still get its error).
    pub(crate) fn local_copy(&self, key: &str) -> Option<std::sync::Arc<[u8]>> {
        let tier = self.tier.as_ref()?;
        self.check_key(key).ok()?;
        tier.local().get(key)
    }

    /// The value of `key` on a request path: the local tier's copy, else
    /// one `GET` (on the tracking connection when the local tier is on, so
    /// the reply can be kept). `None` on a miss or when Redis is unavailable.
    pub(crate) async fn read(&self, key: &str) -> Option<Got> {
        if let Some(tier) = &self.tier {
            if let Some(bytes) = tier.local().get(key) {
                return Some(Got::Local(bytes));
            }
        }
        let vkey = self.ns.value_key(key);
        if let Some(tier) = &self.tier {
            if let Some(con) = tier.route(&vkey) {
                if !self.breaker.allow() {
                    return None;
                }
                let ticket = tier.local().ticket(key);
                match tokio::time::timeout(self.timeout, tracked_get(con, &vkey)).await {
                    Ok(Ok((bytes, pttl))) => {
                        if let Some(bytes) = &bytes {
                            tier.local().fill(key, bytes, pttl, ticket);
                        }
                        return bytes.map(Got::Redis);
                    }
                    // A redirection (the slot moved) or a tracking
                    // connection that just closed: read through the main
                    // connection, which follows redirections and
                    // reconnects, and have tracking rebuilt.
                    Ok(Err(_)) => tier.redirected(),
                    Err(_) => {
                        self.breaker.failure();
                        let e = Error::Timeout {
                            op: "GET",
                            timeout: self.timeout,
                        };
                        self.warn_limited(&e, "Redis call failed; serving uncached");
                        return None;
                    }
                }
            }
        }
        let mut con = self.con.clone();
        self.try_redis("GET", con.get::<_, Option<Vec<u8>>>(&vkey))
            .await
            .flatten()
            .map(Got::Redis)
    }

    /// This process changed `key` in Redis: its own later reads must not
    /// see the copy from before, even before Redis's invalidation arrives.
    pub(crate) fn forget(&self, key: &str) {
        if let Some(tier) = &self.tier {
            tier.local().invalidate(key);
        }
    }

    /// This process cleared an unknown set of keys.
    pub(crate) fn forget_all(&self) {
        if let Some(tier) = &self.tier {
            tier.local().flush("cleared by this process");
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
