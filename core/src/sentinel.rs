//! Redis Sentinel: the primary of a monitored service, found through the
//! sentinels and followed across failovers.
//!
//! The redis crate's `SentinelClient` finds the primary (and checks with
//! `ROLE` that it is one) but does not reconnect. The connection manager of
//! a single server would reconnect to the *old* address, which after a
//! failover is a replica that refuses writes and serves reads that may
//! lag. So here a connection that failed in a way that may mean the primary
//! moved (an I/O error, a timeout, `READONLY`) is dropped, and the next
//! request asks the sentinels again. As with the single server's connection
//! manager over RESP2, the request that finds the connection closed fails
//! (the library computes it uncached, the daemon retries its batch); the
//! next one reaches the new primary.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use redis::aio::MultiplexedConnection;
use redis::sentinel::{SentinelClient, SentinelClientBuilder, SentinelServerType};
use redis::{AsyncConnectionConfig, ConnectionAddr, ErrorKind, RedisError, RedisResult, TlsMode};

use crate::tls::Tls;

/// Port of a sentinel when the URL gives none.
const SENTINEL_PORT: u16 = 26379;

/// A parsed `redis+sentinel://` (or `rediss+sentinel://`) URL.
#[derive(Debug, PartialEq, Eq)]
pub(crate) struct SentinelUrl {
    pub(crate) tls: bool,
    pub(crate) sentinels: Vec<(String, u16)>,
    pub(crate) service: String,
    pub(crate) db: i64,
    pub(crate) username: Option<String>,
    pub(crate) password: Option<String>,
}

/// Whether `url` names a service through sentinels.
pub(crate) fn is_sentinel_url(url: &str) -> bool {
    url.starts_with("redis+sentinel://") || url.starts_with("rediss+sentinel://")
}

fn invalid(detail: String) -> RedisError {
    RedisError::from((
        ErrorKind::InvalidClientConfig,
        "invalid Sentinel URL",
        detail
            + "; expected redis+sentinel://[user:password@]host[:port][,host[:port]...]/service[/db] \
               (rediss+sentinel:// for TLS)",
    ))
}

fn decode(s: &str) -> String {
    percent_encoding::percent_decode_str(s)
        .decode_utf8_lossy()
        .into_owned()
}

impl SentinelUrl {
    pub(crate) fn parse(url: &str) -> RedisResult<Self> {
        let (tls, rest) = if let Some(r) = url.strip_prefix("rediss+sentinel://") {
            (true, r)
        } else if let Some(r) = url.strip_prefix("redis+sentinel://") {
            (false, r)
        } else {
            return Err(invalid("not a redis+sentinel:// URL".into()));
        };
        let (authority, path) = rest.split_once('/').unwrap_or((rest, ""));
        let (userinfo, hosts) = match authority.rsplit_once('@') {
            Some((u, h)) => (Some(u), h),
            None => (None, authority),
        };
        let (username, password) = match userinfo {
            None => (None, None),
            Some(u) => match u.split_once(':') {
                Some((user, pass)) => {
                    ((!user.is_empty()).then(|| decode(user)), Some(decode(pass)))
                }
                None => (None, Some(decode(u))),
            },
        };
        let mut sentinels = Vec::new();
        for host in hosts.split(',').map(str::trim) {
            let (name, port) = match host.rsplit_once(':') {
                Some((h, p)) => {
                    let port = p.parse().map_err(|_| {
                        invalid(format!("port {p:?} of sentinel {h:?} is not a number"))
                    })?;
                    (h, port)
                }
                None => (host, SENTINEL_PORT),
            };
            if name.is_empty() {
                return Err(invalid("a sentinel's host is empty".into()));
            }
            sentinels.push((name.trim_matches(['[', ']']).to_owned(), port));
        }
        let mut segments = path.split('/').filter(|s| !s.is_empty());
        let service = segments
            .next()
            .map(decode)
            .ok_or_else(|| invalid("the service (master) name is missing".into()))?;
        let db = match segments.next() {
            Some(d) => d
                .parse()
                .map_err(|_| invalid(format!("database {d:?} is not a number")))?,
            None => 0,
        };
        Ok(Self {
            tls,
            sentinels,
            service,
            db,
            username,
            password,
        })
    }
}

/// How often the sentinels are asked whether the primary moved.
const WATCH_EVERY: Duration = Duration::from_secs(1);

/// The connection to a service's current primary.
pub(crate) struct Sentinel {
    client: tokio::sync::Mutex<SentinelClient>,
    current: Mutex<Current>,
    config: AsyncConnectionConfig,
    connect_timeout: Duration,
}

/// The open connection, the primary it reaches, and its generation, so a
/// failure seen on an old connection does not drop a newer one.
#[derive(Default)]
struct Current {
    generation: u64,
    con: Option<(MultiplexedConnection, String)>,
    watching: bool,
}

impl Sentinel {
    pub(crate) fn open(
        url: &str,
        tls: &Tls,
        connect_timeout: Duration,
        response_timeout: Duration,
    ) -> RedisResult<Self> {
        let parsed = SentinelUrl::parse(url)?;
        let addrs = parsed.sentinels.iter().map(|(host, port)| {
            if parsed.tls {
                ConnectionAddr::TcpTls {
                    host: host.clone(),
                    port: *port,
                    insecure: false,
                    tls_params: None,
                }
            } else {
                ConnectionAddr::Tcp(host.clone(), *port)
            }
        });
        let mut builder =
            SentinelClientBuilder::new(addrs, &parsed.service, SentinelServerType::Master)?
                .set_client_to_redis_db(parsed.db);
        if let Some(user) = &parsed.username {
            builder = builder.set_client_to_redis_username(user);
        }
        if let Some(password) = &parsed.password {
            builder = builder.set_client_to_redis_password(password);
        }
        if parsed.tls {
            crate::tls::install_crypto_provider();
            builder = builder.set_client_to_redis_tls_mode(TlsMode::Secure);
            if !tls.is_empty() {
                builder = builder
                    .set_client_to_redis_certificates(tls.certificates())
                    .set_client_to_sentinel_certificates(tls.certificates());
            }
        }
        let config = AsyncConnectionConfig::new()
            .set_connection_timeout(Some(connect_timeout))
            .set_response_timeout(Some(response_timeout));
        Ok(Self {
            client: tokio::sync::Mutex::new(builder.build()?),
            current: Mutex::new(Current::default()),
            config,
            connect_timeout,
        })
    }

    fn current(&self) -> std::sync::MutexGuard<'_, Current> {
        self.current.lock().expect("not poisoned")
    }

    /// The primary the sentinels name now (checked with `ROLE`), as a
    /// client and its address.
    async fn named(&self, client: &mut SentinelClient) -> RedisResult<(redis::Client, String)> {
        let named = tokio::time::timeout(self.connect_timeout * 3, client.async_get_client())
            .await
            .map_err(|_| {
                RedisError::from((
                    ErrorKind::Io,
                    "timed out asking the sentinels for the primary",
                ))
            })??;
        let addr = named.get_connection_info().addr().to_string();
        Ok((named, addr))
    }

    /// The connection to the primary, asking the sentinels for it when
    /// there is none; with the generation to report a failure under.
    pub(crate) async fn get(self: &Arc<Self>) -> RedisResult<(u64, MultiplexedConnection)> {
        if let Current {
            generation,
            con: Some((con, _)),
            ..
        } = &*self.current()
        {
            return Ok((*generation, con.clone()));
        }
        let mut client = self.client.lock().await;
        let generation = {
            let current = self.current();
            if let Some((con, _)) = &current.con {
                return Ok((current.generation, con.clone()));
            }
            current.generation + 1
        };
        let (named, addr) = self.named(&mut client).await?;
        let con = tokio::time::timeout(
            self.connect_timeout * 3,
            named.get_multiplexed_async_connection_with_config(&self.config),
        )
        .await
        .map_err(|_| RedisError::from((ErrorKind::Io, "timed out connecting to the primary")))??;
        let mut current = self.current();
        current.generation = generation;
        current.con = Some((con.clone(), addr));
        if !std::mem::replace(&mut current.watching, true) {
            tokio::spawn(watch(Arc::downgrade(self)));
        }
        Ok((generation, con))
    }

    /// The generation of the current (or last) connection.
    pub(crate) fn epoch(&self) -> u64 {
        self.current().generation
    }

    fn forget(&self, generation: u64) {
        let mut current = self.current();
        if current.generation == generation {
            current.con = None;
        }
    }

    /// Forgets the connection of `generation` when `e` may mean the primary
    /// moved, so the next request asks the sentinels again.
    pub(crate) fn failed(&self, generation: u64, e: &RedisError) {
        if primary_may_have_moved(e) {
            self.forget(generation);
        }
    }
}

/// Every [`WATCH_EVERY`], while the connection lives, asks the sentinels
/// which server is the primary and forgets the open connection when it
/// reaches another one. After a failover the old primary may accept writes
/// until the sentinels reconfigure it; what the daemon deletes there is
/// lost, and what the library reads there misses the daemon's deletions
/// on the new primary. This bounds that to about a second.
async fn watch(me: std::sync::Weak<Sentinel>) {
    let mut tick = tokio::time::interval(WATCH_EVERY);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        let Some(me) = me.upgrade() else {
            return;
        };
        let (generation, addr) = match &*me.current() {
            Current {
                generation,
                con: Some((_, addr)),
                ..
            } => (*generation, addr.clone()),
            _ => continue,
        };
        let named = {
            let mut client = me.client.lock().await;
            me.named(&mut client).await
        };
        if let Ok((_, now)) = named {
            if now != addr {
                me.forget(generation);
            }
        }
    }
}

fn primary_may_have_moved(e: &RedisError) -> bool {
    e.is_io_error()
        || e.is_timeout()
        || e.is_connection_dropped()
        || e.is_unrecoverable_error()
        || matches!(
            e.kind(),
            ErrorKind::Server(redis::ServerErrorKind::ReadOnly)
                | ErrorKind::Server(redis::ServerErrorKind::MasterDown)
        )
        || e.code() == Some("READONLY")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls_parse() {
        let u = SentinelUrl::parse("redis+sentinel://:s3cret@10.0.0.1:26380,10.0.0.2/mymaster/2")
            .unwrap();
        assert_eq!(
            u,
            SentinelUrl {
                tls: false,
                sentinels: vec![("10.0.0.1".into(), 26380), ("10.0.0.2".into(), 26379)],
                service: "mymaster".into(),
                db: 2,
                username: None,
                password: Some("s3cret".into()),
            }
        );
        let u = SentinelUrl::parse("rediss+sentinel://app:p%40ss@h:1/svc").unwrap();
        assert!(u.tls);
        assert_eq!(u.username.as_deref(), Some("app"));
        assert_eq!(u.password.as_deref(), Some("p@ss"));
        assert_eq!(u.db, 0);
        for bad in [
            "redis+sentinel://h:1",
            "redis+sentinel://h:x/svc",
            "redis+sentinel://,h/svc",
            "redis+sentinel://h/svc/x",
        ] {
            assert!(SentinelUrl::parse(bad).is_err(), "{bad}");
        }
    }
}
