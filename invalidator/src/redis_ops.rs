//! The daemon's Redis connection and the server settings it depends on.

use crate::config::{Config, ConfigError};
use smartcache_core::conn::{Conn, Options};
use smartcache_core::diagnose::{explain, redact, Settings};
use std::time::Duration;

/// The connection settings of `config`: cluster mode and TLS.
pub fn options(config: &Config) -> Options {
    let mut options = Options::default();
    options.cluster = config.redis_cluster;
    options.tls = config.redis_tls.clone();
    options
}

/// A lazily connecting, self-reconnecting connection (to one server, a
/// cluster per `redis_cluster`, or a Sentinel service): the daemon starts
/// while Redis is down and backs off on its own schedule.
pub fn connect(config: &Config) -> Result<Conn, ConfigError> {
    Conn::open(&config.redis_url, &options(config)).map_err(|e| {
        ConfigError(format!(
            "{}: setting `redis_url` ({}): {e}",
            config.origin(),
            redact(&config.redis_url)
        ))
    })
}

/// A connection for a command-line or admin call, checked now: an
/// unreachable Redis is an error naming the (password-less) URL and the
/// cause, after at most 5 s.
pub async fn connect_now(config: &Config) -> anyhow::Result<Conn> {
    let mut con = connect(config)?;
    let ping = redis::cmd("PING");
    let url = redact(&config.redis_url);
    let e = match tokio::time::timeout(Duration::from_secs(5), ping.query_async::<()>(&mut con))
        .await
    {
        Ok(Ok(())) => return Ok(con),
        Ok(Err(e)) => e,
        Err(_) => anyhow::bail!("cannot connect to Redis at {url}: no answer within 5 s; check redis_url and that Redis runs"),
    };
    Err(anyhow::anyhow!(
        "cannot connect to Redis at {url}: {}",
        explain_failure(config, &e).await
    ))
}

/// One line naming why `e` happened and the setting to change.
pub async fn explain_failure(config: &Config, e: &redis::RedisError) -> String {
    explain(e, &config.redis_url, &options(config), &Settings::CONFIG).await
}

/// Redis' `maxmemory-policy` (`unknown` where `CONFIG` is disabled); on a
/// cluster, the riskiest policy of any primary.
pub async fn maxmemory_policy(con: &mut Conn) -> redis::RedisResult<String> {
    let mut cmd = redis::cmd("CONFIG");
    cmd.arg("GET").arg("maxmemory-policy");
    let reply: redis::RedisResult<Vec<(String, String)>> = con.each_primary(&cmd).await;
    match reply {
        Ok(policies) => Ok(policies
            .into_iter()
            .map(|(_, p)| p)
            .max_by_key(|p| eviction_risk(p).is_some())
            .unwrap_or_else(|| "unknown".to_owned())),
        Err(e) if e.is_io_error() || e.is_timeout() || e.is_connection_dropped() => Err(e),
        Err(_) => Ok("unknown".to_owned()),
    }
}

/// Redis' `maxmemory-policy` and what in the server's settings endangers
/// invalidation: an evicting policy, a cluster node spoken to as a single
/// server.
pub async fn problems(con: &mut Conn) -> redis::RedisResult<(String, Vec<String>)> {
    let policy = maxmemory_policy(con).await?;
    let mut found: Vec<String> = eviction_risk(&policy).into_iter().collect();
    found.extend(cluster_mismatch(con).await?);
    Ok((policy, found))
}

/// Whether the server is a cluster node while `redis_cluster` is off: every
/// key of another slot would fail with `MOVED`.
pub async fn cluster_mismatch(con: &mut Conn) -> redis::RedisResult<Option<String>> {
    if con.is_cluster() {
        return Ok(None);
    }
    let info: String = redis::cmd("INFO").arg("cluster").query_async(con).await?;
    Ok(info.contains("cluster_enabled:1").then(|| {
        "redis_url points at a Redis Cluster node but `redis_cluster` is off; \
         set redis_cluster = true (or --redis-cluster)"
            .to_owned()
    }))
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
