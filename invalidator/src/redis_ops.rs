//! The daemon's Redis connection and the server settings it depends on.

use crate::config::{Config, ConfigError};
use redis::aio::{ConnectionLike, ConnectionManager};
use std::time::Duration;

/// A lazily connecting, self-reconnecting connection: the daemon starts
/// while Redis is down and backs off on its own schedule.
pub fn connect(config: &Config) -> Result<ConnectionManager, ConfigError> {
    let client = client(config)?;
    let manager_config = redis::aio::ConnectionManagerConfig::new()
        .set_connection_timeout(Some(Duration::from_secs(2)))
        .set_response_timeout(Some(Duration::from_secs(30)))
        .set_number_of_retries(1)
        .set_max_delay(Duration::from_millis(500));
    ConnectionManager::new_lazy_with_config(client, manager_config)
        .map_err(|e| ConfigError(format!("{}: setting `redis_url`: {e}", config.origin())))
}

/// A client for the configured `redis_url`; a URL that does not parse is a
/// configuration error naming the setting.
pub fn client(config: &Config) -> Result<redis::Client, ConfigError> {
    redis::Client::open(config.redis_url.as_str())
        .map_err(|e| ConfigError(format!("{}: setting `redis_url`: {e}", config.origin())))
}

/// A connection for a command-line or admin call, made now: an unreachable
/// Redis is an error naming the URL, after at most 5 s.
pub async fn connect_now(config: &Config) -> anyhow::Result<redis::aio::MultiplexedConnection> {
    let client = client(config)?;
    tokio::time::timeout(
        Duration::from_secs(5),
        client.get_multiplexed_async_connection(),
    )
    .await
    .map_err(|_| anyhow::anyhow!("timed out connecting to {}", config.redis_url))?
    .map_err(|e| anyhow::anyhow!("cannot connect to {}: {e}", config.redis_url))
}

/// Redis' `maxmemory-policy` (`unknown` where `CONFIG` is disabled).
pub async fn maxmemory_policy<C: ConnectionLike + Send>(con: &mut C) -> redis::RedisResult<String> {
    let reply: redis::RedisResult<(String, String)> = redis::cmd("CONFIG")
        .arg("GET")
        .arg("maxmemory-policy")
        .query_async(con)
        .await;
    match reply {
        Ok((_, policy)) => Ok(policy),
        Err(e) if e.is_io_error() || e.is_timeout() || e.is_connection_dropped() => Err(e),
        Err(_) => Ok("unknown".to_owned()),
    }
}

/// Why `policy` endangers invalidation, if it does: an `allkeys-*` policy
/// may evict dependency sets and leases, and then invalidations miss the
/// entries registered in them.
///
/// ```
/// use smartcache_invalidator::redis_ops::eviction_risk;
/// assert!(eviction_risk("allkeys-lru").is_some());
/// assert!(eviction_risk("noeviction").is_none());
/// ```
pub fn eviction_risk(policy: &str) -> Option<String> {
    policy.starts_with("allkeys-").then(|| {
        format!(
            "Redis maxmemory-policy is {policy}: Redis may evict smartcache's dependency sets and \
             leases, and invalidations then miss entries; use noeviction or a volatile-* policy"
        )
    })
}
