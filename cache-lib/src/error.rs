//! The library's one error type.

use std::time::Duration;

use smartcache_core::keys::InvalidName;

/// Everything that can go wrong in smartcache.
///
/// Request-path calls ([`Cache::get_or_compute`](crate::Cache::get_or_compute)
/// and friends) only return [`Error::InvalidName`]: Redis problems there are
/// logged and the value is computed uncached. Management calls (`clear*`,
/// `keys`, building a [`Cache`](crate::Cache)) report Redis problems, because
/// their caller needs to know the effect did not happen.
///
/// ```
/// use smartcache::{Cache, Error};
/// # async fn demo() {
/// match Cache::builder("redis://127.0.0.1:1/0").build().await {
///     Err(Error::Connect { .. }) => eprintln!("Redis is down"),
///     Err(e) => eprintln!("{e}"),
///     Ok(_) => {}
/// }
/// # }
/// ```
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// A namespace, cache key or table name is not usable.
    #[error(transparent)]
    InvalidName(#[from] InvalidName),

    /// The Redis URL could not be parsed, or does not fit the builder's
    /// other settings (the message says which).
    #[error(
        "invalid Redis URL {url:?}: {source}; expected redis://[user:password@]host[:port][/db], \
         rediss:// for TLS, redis+sentinel://host:port[,...]/service[/db] for Sentinel"
    )]
    InvalidUrl {
        /// The URL, with any password removed.
        url: String,
        /// The parser's complaint.
        #[source]
        source: redis::RedisError,
    },

    /// Redis could not be reached when building a [`Cache`](crate::Cache).
    #[error("could not connect to Redis at {url}: {cause}")]
    Connect {
        /// The URL, with any password removed.
        url: String,
        /// Why, and what to change: an untrusted CA, a certificate for
        /// another host name, TLS to a plain port or plain text to a TLS
        /// port, a missing client certificate, a refused password, nothing
        /// listening.
        cause: String,
        /// What the connection attempt said.
        #[source]
        source: redis::RedisError,
    },

    /// A TLS file given to [`CacheBuilder::ca_file`](crate::CacheBuilder::ca_file) or
    /// [`CacheBuilder::client_cert`](crate::CacheBuilder::client_cert) cannot be
    /// read or holds no PEM certificate or key.
    #[error("{setting}: {source}")]
    TlsFile {
        /// The builder method whose file it is.
        setting: &'static str,
        /// Which file, and what is wrong with it.
        #[source]
        source: smartcache_core::tls::TlsFileError,
    },

    /// A Redis command failed.
    #[error("Redis {op} failed; check the Redis server and its logs")]
    Redis {
        /// What smartcache was doing.
        op: &'static str,
        /// The Redis client's error.
        #[source]
        source: redis::RedisError,
    },

    /// Redis did not answer in time.
    #[error(
        "Redis {op} got no answer within {timeout:?}; Redis is down, overloaded or unreachable"
    )]
    Timeout {
        /// What smartcache was doing.
        op: &'static str,
        /// The time allowed.
        timeout: Duration,
    },

    /// Redis failed recently, so smartcache is not using it for a short
    /// cooling period (circuit breaker).
    #[error("Redis {op} skipped: Redis failed recently and is rested for a moment; retry shortly")]
    Unavailable {
        /// What smartcache was doing.
        op: &'static str,
    },

    /// A value could not be turned into JSON (for example a map with
    /// non-string keys).
    #[error("could not encode the value of {key:?} as JSON; use a type serde_json can write")]
    Encode {
        /// The cache key.
        key: String,
        /// serde_json's complaint.
        #[source]
        source: serde_json::Error,
    },
}

impl Error {
    /// True for errors that mean Redis is unreachable or failing (as
    /// opposed to a bad name or value).
    ///
    /// ```
    /// let e = smartcache::Error::Unavailable { op: "GET" };
    /// assert!(e.is_redis_unavailable());
    /// ```
    pub fn is_redis_unavailable(&self) -> bool {
        matches!(
            self,
            Error::Connect { .. }
                | Error::Redis { .. }
                | Error::Timeout { .. }
                | Error::Unavailable { .. }
        )
    }
}

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

/// Removes the password from a Redis URL before it goes into a message.
pub(crate) fn redact_url(url: &str) -> String {
    smartcache_core::diagnose::redact(url)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn passwords_never_reach_messages() {
        assert_eq!(redact_url("redis://u:secret@h:1/0"), "redis://u:***@h:1/0");
        assert_eq!(redact_url("redis://:secret@h:1/0"), "redis://***@h:1/0");
        assert_eq!(redact_url("redis://h:1/0"), "redis://h:1/0");
    }
}
