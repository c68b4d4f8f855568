//! Why a Redis connection failed, in one line that names the setting to
//! change: an untrusted CA, a certificate for another host, TLS spoken to a
//! plain port or plain text to a TLS port, a client certificate the server
//! wants or refuses, a refused password.
//!
//! The redis crate reports TLS failures as I/O errors wrapping rustls'
//! error; [`cause`] finds that error in the chain (and falls back on its
//! text), [`explain`] adds a probe for the one case the error alone cannot
//! tell: a plain connection that the server closed, because it wanted TLS.

use std::error::Error as StdError;
use std::sync::Arc;
use std::time::Duration;

use redis::RedisError;
use rustls::{AlertDescription, CertificateError};

use crate::conn::{Conn, Options};

/// The names of the settings a message tells the user to change, as the
/// caller's user knows them.
///
/// ```
/// use smartcache_core::diagnose::Settings;
/// let names = Settings::CONFIG;
/// assert_eq!(names.ca, "redis_ca_file");
/// ```
#[derive(Clone, Copy, Debug)]
pub struct Settings {
    /// The URL.
    pub url: &'static str,
    /// The CA file.
    pub ca: &'static str,
    /// The client certificate and key.
    pub client_cert: &'static str,
}

impl Settings {
    /// The daemon's config file settings (and their flags).
    pub const CONFIG: Settings = Settings {
        url: "redis_url",
        ca: "redis_ca_file",
        client_cert: "redis_client_cert_file and redis_client_key_file",
    };
    /// The library's `CacheBuilder` methods.
    pub const BUILDER: Settings = Settings {
        url: "the URL given to Cache::builder",
        ca: "CacheBuilder::ca_file",
        client_cert: "CacheBuilder::client_cert",
    };
}

/// `e` and its sources, each seen through the redis crate's shared
/// wrapper (an `Arc` around the I/O error).
fn chain(e: &RedisError) -> impl Iterator<Item = &(dyn StdError + 'static)> {
    let first: &(dyn StdError + 'static) = e;
    std::iter::successors(Some(first), |err: &&(dyn StdError + 'static)| {
        (*err).source()
    })
    .map(
        |err| match err.downcast_ref::<Arc<dyn StdError + Send + Sync>>() {
            Some(arc) => &**arc as &(dyn StdError + 'static),
            None => err,
        },
    )
}

/// The rustls error somewhere in `e`'s chain, behind the I/O error that
/// carries it.
fn rustls_error(e: &RedisError) -> Option<rustls::Error> {
    chain(e).find_map(|err| {
        err.downcast_ref::<rustls::Error>()
            .or_else(|| {
                err.downcast_ref::<std::io::Error>()
                    .and_then(|io| io.get_ref())
                    .and_then(|i| i.downcast_ref::<rustls::Error>())
            })
            .cloned()
    })
}

fn io_kind(e: &RedisError) -> Option<std::io::ErrorKind> {
    chain(e).find_map(|err| err.downcast_ref::<std::io::Error>().map(|io| io.kind()))
}

/// The whole chain's text, for the cases found only by their words.
fn text(e: &RedisError) -> String {
    let mut out = e.to_string();
    let mut next = e.source();
    while let Some(s) = next {
        let line = s.to_string();
        // The redis crate's shared error repeats the I/O error's text.
        if !out.ends_with(&line) {
            out.push_str(": ");
            out.push_str(&line);
        }
        next = s.source();
    }
    out
}

/// Why `e` happened and what to change, when it is one of the known
/// causes. `tls` says whether the URL asked for TLS, `options` what was
/// configured for it.
///
/// ```
/// use smartcache_core::conn::Options;
/// use smartcache_core::diagnose::{cause, Settings};
/// let e = redis::RedisError::from((redis::ErrorKind::AuthenticationFailed, "WRONGPASS"));
/// let why = cause(&e, false, &Options::default(), &Settings::CONFIG).unwrap();
/// assert!(why.contains("redis_url"), "{why}");
/// ```
pub fn cause(e: &RedisError, tls: bool, options: &Options, names: &Settings) -> Option<String> {
    let Settings {
        url,
        ca,
        client_cert,
    } = *names;
    if let Some(r) = rustls_error(e) {
        return Some(match r {
            rustls::Error::InvalidCertificate(c) => match c {
                CertificateError::UnknownIssuer | CertificateError::BadSignature => {
                    if options.tls.has_ca() {
                        format!(
                            "the server's certificate is not signed by the CA in {ca}: set {ca} \
                             to the CA that signed the server's certificate"
                        )
                    } else {
                        format!(
                            "the server's certificate is not signed by a CA the system trusts: \
                             set {ca} to the CA that signed it"
                        )
                    }
                }
                CertificateError::NotValidForName
                | CertificateError::NotValidForNameContext { .. } => {
                    format!(
                        "the server's certificate is not valid for the host name in {url} \
                         (hostname mismatch): connect by a name or address the certificate lists"
                    )
                }
                CertificateError::Expired | CertificateError::ExpiredContext { .. } => {
                    "the server's certificate has expired: renew it on the server".to_owned()
                }
                other => {
                    format!("the server's certificate was refused ({other:?}): check it, and {ca}")
                }
            },
            rustls::Error::InvalidMessage(_)
            | rustls::Error::InappropriateMessage { .. }
            | rustls::Error::InappropriateHandshakeMessage { .. } => format!(
                "the server does not speak TLS on this port: write {url} as redis:// or use the \
                 server's TLS port"
            ),
            rustls::Error::AlertReceived(AlertDescription::CertificateRequired)
            | rustls::Error::AlertReceived(AlertDescription::HandshakeFailure)
                if !options.tls.has_client_cert() =>
            {
                format!("the server requires a client certificate (mutual TLS): set {client_cert}")
            }
            rustls::Error::AlertReceived(alert) if options.tls.has_client_cert() => format!(
                "the server refused the client certificate ({alert:?}): set {client_cert} to a \
                 certificate signed by a CA the server trusts"
            ),
            rustls::Error::NoCertificatesPresented => {
                "the server presented no certificate".to_owned()
            }
            other => format!("TLS failed ({other}): check {url} and {ca}"),
        });
    }
    let text = text(e);
    if e.kind() == redis::ErrorKind::AuthenticationFailed
        || text.contains("WRONGPASS")
        || text.contains("invalid password")
    {
        return Some(format!(
            "the server refused the user name or password: correct them in {url}"
        ));
    }
    if text.contains("NOAUTH") {
        return Some(format!(
            "the server requires a password: put it in {url} (redis://:PASSWORD@host:port/db)"
        ));
    }
    if text.contains("InvalidDnsName") || text.contains("invalid dns name") {
        return Some(format!("the host in {url} is not a valid name for TLS"));
    }
    match io_kind(e) {
        Some(std::io::ErrorKind::ConnectionRefused) => Some(format!(
            "nothing listens at the address in {url}: check the host and port, and that Redis runs"
        )),
        Some(std::io::ErrorKind::UnexpectedEof | std::io::ErrorKind::ConnectionReset) if tls => {
            Some(format!(
                "the server closed the connection during the TLS handshake: if it requires a \
                 client certificate, set {client_cert}; check that the port in {url} is a TLS port"
            ))
        }
        _ => None,
    }
}

/// Like [`cause`], and when the error alone cannot tell, probes the same
/// address the other way: a plain connection that the server closed, or a
/// TLS handshake that got no answer, may mean the server speaks the other
/// protocol on that port. Always returns a line: the cause, or the error
/// itself.
///
/// ```no_run
/// # async fn demo(e: redis::RedisError) {
/// use smartcache_core::conn::Options;
/// use smartcache_core::diagnose::{explain, Settings};
/// let line = explain(&e, "redis://127.0.0.1:6380/0", &Options::default(), &Settings::CONFIG).await;
/// eprintln!("{line}");
/// # }
/// ```
pub async fn explain(e: &RedisError, url: &str, options: &Options, names: &Settings) -> String {
    let tls = url.starts_with("rediss");
    if let Some(why) = cause(e, tls, options, names) {
        return why;
    }
    let dropped = matches!(
        io_kind(e),
        Some(
            std::io::ErrorKind::UnexpectedEof
                | std::io::ErrorKind::ConnectionReset
                | std::io::ErrorKind::BrokenPipe
        )
    );
    let first = url.split(',').next().unwrap_or(url).trim();
    if !tls && dropped {
        if let Some(rest) = first.strip_prefix("redis://") {
            if answers(&format!("rediss://{rest}"), options).await {
                return format!(
                    "the server requires TLS: write {} as rediss:// (it closed the plain connection)",
                    names.url
                );
            }
        }
    }
    if tls && (e.is_timeout() || text(e).contains("timed out")) {
        if let Some(rest) = first.strip_prefix("rediss://") {
            let mut plain = options.clone();
            plain.tls = crate::tls::Tls::default();
            if answers(&format!("redis://{rest}"), &plain).await {
                return format!(
                    "the server does not speak TLS on this port (the handshake got no answer, \
                     plain text does): write {} as redis:// or use the server's TLS port",
                    names.url
                );
            }
        }
    }
    text(e)
}

/// Whether the first server of `url` answers over it: a reply, a refused
/// password, or (over TLS) a certificate it failed on all show a server
/// speaking that protocol.
async fn answers(url: &str, options: &Options) -> bool {
    let mut probe_options = options.clone();
    probe_options.cluster = false;
    probe_options.retries = 0;
    let Ok(mut con) = Conn::open(url, &probe_options) else {
        return false;
    };
    let ping = redis::cmd("PING");
    let reply =
        tokio::time::timeout(Duration::from_secs(3), ping.query_async::<String>(&mut con)).await;
    match reply {
        Ok(Ok(_)) => true,
        Ok(Err(e)) => match rustls_error(&e) {
            Some(
                rustls::Error::InvalidMessage(_)
                | rustls::Error::InappropriateMessage { .. }
                | rustls::Error::InappropriateHandshakeMessage { .. },
            ) => false,
            Some(_) => true,
            None => {
                let t = text(&e);
                t.contains("NOAUTH") || t.contains("WRONGPASS")
            }
        },
        Err(_) => false,
    }
}

/// `url` without its password, for messages and logs: each comma-separated
/// seed's `user:password@` becomes `user:***@` (a lone password `***@`).
///
/// ```
/// use smartcache_core::diagnose::redact;
/// assert_eq!(redact("rediss://:s3cret@h:6380/0"), "rediss://***@h:6380/0");
/// assert_eq!(redact("redis://app:s3cret@a:1,redis://app:s3cret@b:2"), "redis://app:***@a:1,redis://app:***@b:2");
/// assert_eq!(redact("redis+sentinel://:pw@s1,s2/mymaster"), "redis+sentinel://***@s1,s2/mymaster");
/// assert_eq!(redact("redis://h:1/0"), "redis://h:1/0");
/// ```
pub fn redact(url: &str) -> String {
    url.split(',')
        .map(|part| {
            let Some(scheme) = part.find("://") else {
                return part.to_owned();
            };
            let rest = &part[scheme + 3..];
            let authority_end = rest.find('/').unwrap_or(rest.len());
            match rest[..authority_end].rfind('@') {
                Some(at) => {
                    let user = rest[..at].split_once(':').map_or("", |(u, _)| u);
                    let user = if user.is_empty() {
                        String::new()
                    } else {
                        format!("{user}:")
                    };
                    format!("{}://{user}***@{}", &part[..scheme], &rest[at + 1..])
                }
                None => part.to_owned(),
            }
        })
        .collect::<Vec<_>>()
        .join(",")
}
