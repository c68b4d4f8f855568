//! The libpq TLS parameters of a PostgreSQL connection string, which
//! tokio-postgres does not know (its parser takes `sslmode` = `disable`,
//! `prefer` or `require` only and refuses `sslrootcert`, `sslcert`,
//! `sslkey`), and hiding the password of a connection string in messages.
//!
//! Both forms libpq accepts are read: a URL
//! (`postgres://u:pw@host/db?sslmode=verify-full&sslrootcert=/ca.pem`,
//! values percent-encoded) and `key=value` words
//! (`host=h sslmode='verify-full'`, single quotes and `\` escapes). The
//! TLS parameters are taken out and everything else is left, as written,
//! for tokio-postgres.

use std::fmt;
use std::path::PathBuf;

/// libpq's `sslmode`. The default, as in libpq, is [`SslMode::Prefer`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum SslMode {
    /// Plain connections only.
    Disable,
    /// TLS when the server offers it, plain otherwise; the certificate is
    /// checked only against an `sslrootcert` that is given.
    #[default]
    Prefer,
    /// TLS or nothing; the certificate is checked only against an
    /// `sslrootcert` that is given (then as [`SslMode::VerifyCa`]).
    Require,
    /// TLS, the server's certificate chains to a trusted root; any host name.
    VerifyCa,
    /// TLS, trusted chain, and the certificate names the host connected to.
    VerifyFull,
}

impl SslMode {
    /// The word as written in a connection string.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Disable => "disable",
            Self::Prefer => "prefer",
            Self::Require => "require",
            Self::VerifyCa => "verify-ca",
            Self::VerifyFull => "verify-full",
        }
    }

    fn parse(value: &str) -> Result<Self, String> {
        Ok(match value {
            "disable" => Self::Disable,
            "prefer" => Self::Prefer,
            "require" => Self::Require,
            "verify-ca" => Self::VerifyCa,
            "verify-full" => Self::VerifyFull,
            // libpq knows `allow` (plain first, TLS if refused); nothing
            // here ever needs it, so it is refused by name.
            other => {
                return Err(format!(
                    "sslmode={other} is not one of disable, prefer, require, verify-ca, verify-full"
                ))
            }
        })
    }
}

impl fmt::Display for SslMode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Where the roots that a server certificate must chain to come from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RootCert {
    /// The operating system's trust store (`sslrootcert=system`, or no
    /// `sslrootcert` under `verify-ca`/`verify-full`).
    System,
    /// A PEM file of one or more CA certificates.
    File(PathBuf),
}

/// The TLS settings of one connection string.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct TlsParams {
    /// `sslmode`.
    pub mode: SslMode,
    /// `sslrootcert`, if given.
    pub root_cert: Option<RootCert>,
    /// `sslcert`: the client certificate (PEM), if given.
    pub cert: Option<PathBuf>,
    /// `sslkey`: its private key (PEM), if given.
    pub key: Option<PathBuf>,
}

impl TlsParams {
    /// Whether the server's chain is checked: under `verify-*`, and under
    /// `prefer`/`require` when an `sslrootcert` is given (as libpq does).
    pub fn verifies_chain(&self) -> bool {
        match self.mode {
            SslMode::Disable => false,
            SslMode::Prefer | SslMode::Require => self.root_cert.is_some(),
            SslMode::VerifyCa | SslMode::VerifyFull => true,
        }
    }

    /// The roots a verified chain must end in.
    pub fn roots(&self) -> RootCert {
        self.root_cert.clone().unwrap_or(RootCert::System)
    }
}

/// A connection string split in two: the TLS parameters, and the rest for
/// tokio-postgres.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConnInfo {
    /// The connection string without the TLS parameters.
    pub rest: String,
    /// The TLS parameters.
    pub tls: TlsParams,
}

const TLS_KEYS: [&str; 4] = ["sslmode", "sslrootcert", "sslcert", "sslkey"];

/// One parameter as found: its decoded key and value, and the text it
/// came from.
struct Param<'a> {
    key: String,
    value: String,
    raw: &'a str,
}

/// A connection string cut into its parts.
enum Parsed<'a> {
    /// `scheme://userinfo@hosts/db` and the parameters after `?`.
    Url {
        base: &'a str,
        params: Vec<Param<'a>>,
    },
    /// `key=value` words.
    Words(Vec<Param<'a>>),
}

/// A URL of any scheme (so that [`redact`] serves Redis URLs too): `://`
/// before any `=` or space.
fn is_url(s: &str) -> bool {
    s.find("://")
        .is_some_and(|i| !s[..i].contains(|c: char| c == '=' || c.is_whitespace()))
}

fn parse(s: &str) -> Option<Parsed<'_>> {
    if is_url(s) {
        let (base, query) = s.split_once('?').unwrap_or((s, ""));
        let params = query
            .split('&')
            .filter(|p| !p.is_empty())
            .map(|raw| {
                let (k, v) = raw.split_once('=').unwrap_or((raw, ""));
                let decode = |x: &str| {
                    percent_encoding::percent_decode_str(x)
                        .decode_utf8_lossy()
                        .into_owned()
                };
                Param {
                    key: decode(k),
                    value: decode(v),
                    raw,
                }
            })
            .collect();
        return Some(Parsed::Url { base, params });
    }
    words(s).map(Parsed::Words)
}

/// `key = value` words as libpq reads them; `None` when malformed (then
/// tokio-postgres gets the string untouched and names the problem).
fn words(s: &str) -> Option<Vec<Param<'_>>> {
    let bytes = s.as_bytes();
    let mut i = 0;
    let mut out = Vec::new();
    let skip_ws = |i: &mut usize| {
        while *i < bytes.len() && bytes[*i].is_ascii_whitespace() {
            *i += 1;
        }
    };
    loop {
        skip_ws(&mut i);
        if i >= bytes.len() {
            return Some(out);
        }
        let start = i;
        while i < bytes.len() && bytes[i] != b'=' && !bytes[i].is_ascii_whitespace() {
            i += 1;
        }
        let key = s[start..i].to_owned();
        skip_ws(&mut i);
        if bytes.get(i) != Some(&b'=') {
            return None;
        }
        i += 1;
        skip_ws(&mut i);
        let mut value = String::new();
        if bytes.get(i) == Some(&b'\'') {
            i += 1;
            loop {
                match bytes.get(i)? {
                    b'\'' => {
                        i += 1;
                        break;
                    }
                    b'\\' => {
                        i += 1;
                        value.push(char::from(*bytes.get(i)?));
                        i += 1;
                    }
                    _ => {
                        let c = s[i..].chars().next()?;
                        value.push(c);
                        i += c.len_utf8();
                    }
                }
            }
        } else {
            while i < bytes.len() && !bytes[i].is_ascii_whitespace() {
                if bytes[i] == b'\\' {
                    i += 1;
                    value.push(char::from(*bytes.get(i)?));
                    i += 1;
                } else {
                    let c = s[i..].chars().next()?;
                    value.push(c);
                    i += c.len_utf8();
                }
            }
        }
        out.push(Param {
            key,
            value,
            raw: &s[start..i],
        });
    }
}

/// Splits the TLS parameters out of `conn`. The error says what is wrong
/// (an unknown `sslmode`, a key without its certificate, …); the caller
/// names the setting.
///
/// ```
/// use smartcache_invalidator::conninfo::{split, SslMode};
/// let c = split("postgres://u@db.example.com/app?sslmode=verify-full&sslrootcert=%2Fca.pem").unwrap();
/// assert_eq!(c.rest, "postgres://u@db.example.com/app");
/// assert_eq!(c.tls.mode, SslMode::VerifyFull);
/// ```
pub fn split(conn: &str) -> Result<ConnInfo, String> {
    let Some(parsed) = parse(conn) else {
        return Ok(ConnInfo {
            rest: conn.to_owned(),
            tls: TlsParams::default(),
        });
    };
    let params = match &parsed {
        Parsed::Url { params, .. } | Parsed::Words(params) => params,
    };
    let mut tls = TlsParams::default();
    let mut mode = None;
    let path = |v: &str| (!v.is_empty()).then(|| PathBuf::from(v));
    for p in params.iter().filter(|p| TLS_KEYS.contains(&p.key.as_str())) {
        match p.key.as_str() {
            "sslmode" => mode = Some(SslMode::parse(&p.value)?),
            "sslrootcert" if p.value == "system" => tls.root_cert = Some(RootCert::System),
            "sslrootcert" => tls.root_cert = path(&p.value).map(RootCert::File),
            "sslcert" => tls.cert = path(&p.value),
            _ => tls.key = path(&p.value),
        }
    }
    // As libpq 16: the system's roots only make sense with the host name
    // checked, since any public CA would otherwise do.
    tls.mode = match (mode, &tls.root_cert) {
        (None, Some(RootCert::System)) => SslMode::VerifyFull,
        (Some(m), Some(RootCert::System)) if m != SslMode::VerifyFull => {
            return Err(format!(
                "sslrootcert=system needs sslmode=verify-full (got sslmode={m}): any public CA would be trusted for any host"
            ))
        }
        (m, _) => m.unwrap_or_default(),
    };
    match (&tls.cert, &tls.key) {
        (Some(_), None) => return Err("sslcert is given without sslkey (its private key)".into()),
        (None, Some(_)) => return Err("sslkey is given without sslcert (its certificate)".into()),
        _ => {}
    }
    let keep = |p: &&Param<'_>| !TLS_KEYS.contains(&p.key.as_str());
    let rest = match &parsed {
        Parsed::Url { base, params } => {
            let kept: Vec<&str> = params.iter().filter(keep).map(|p| p.raw).collect();
            if kept.is_empty() {
                (*base).to_owned()
            } else {
                format!("{base}?{}", kept.join("&"))
            }
        }
        Parsed::Words(params) => params
            .iter()
            .filter(keep)
            .map(|p| p.raw)
            .collect::<Vec<_>>()
            .join(" "),
    };
    Ok(ConnInfo { rest, tls })
}

/// `conn` with every password replaced by `***`: the one in a URL's
/// user part, and `password=` parameters in either form. Use it for every
/// message that shows a connection string.
///
/// ```
/// use smartcache_invalidator::conninfo::redact;
/// assert_eq!(redact("postgres://u:secret@h/db?sslmode=require"), "postgres://u:***@h/db?sslmode=require");
/// assert_eq!(redact("host=h password='s e c' user=u"), "host=h password=*** user=u");
/// ```
pub fn redact(conn: &str) -> String {
    match parse(conn) {
        Some(Parsed::Url { base, params }) => {
            let base = redact_userinfo(base);
            let params: Vec<&str> = params.iter().map(shown).collect();
            if params.is_empty() {
                base
            } else {
                format!("{base}?{}", params.join("&"))
            }
        }
        Some(Parsed::Words(params)) => params.iter().map(shown).collect::<Vec<_>>().join(" "),
        // Malformed: nothing safe can be shown of it.
        None if conn.contains("password") => "(a connection string that does not parse)".into(),
        None => conn.to_owned(),
    }
}

/// A parameter as a message may show it.
fn shown<'a>(p: &Param<'a>) -> &'a str {
    if p.key == "password" {
        "password=***"
    } else {
        p.raw
    }
}

fn redact_userinfo(url: &str) -> String {
    let Some(s) = url.find("://") else {
        return url.to_owned();
    };
    let authority_end = url[s + 3..].find('/').map_or(url.len(), |i| s + 3 + i);
    match url[..authority_end].rfind('@') {
        Some(at) if at > s => match url[s + 3..at].split_once(':') {
            Some((user, _)) => format!("{}{user}:***{}", &url[..s + 3], &url[at..]),
            None => url.to_owned(),
        },
        _ => url.to_owned(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn without_tls_parameters_the_string_is_unchanged_and_prefer_applies() {
        for s in [
            "postgres://u:p@h:5432/db",
            "postgres://u@h/db?application_name=x&connect_timeout=3",
            "host=h port=5432 user=u dbname=db",
        ] {
            let c = split(s).unwrap();
            assert_eq!(c.rest, s);
            assert_eq!(c.tls, TlsParams::default());
            assert_eq!(c.tls.mode, SslMode::Prefer);
        }
    }

    #[test]
    fn url_parameters_are_taken_out_and_decoded() {
        let c = split(
            "postgresql://u@h/db?application_name=a&sslmode=verify-ca&sslrootcert=%2Fetc%2Fca%20b.pem&sslcert=c.pem&sslkey=k.pem&connect_timeout=2",
        )
        .unwrap();
        assert_eq!(
            c.rest,
            "postgresql://u@h/db?application_name=a&connect_timeout=2"
        );
        assert_eq!(c.tls.mode, SslMode::VerifyCa);
        assert_eq!(
            c.tls.root_cert,
            Some(RootCert::File("/etc/ca b.pem".into()))
        );
        assert_eq!(c.tls.cert, Some("c.pem".into()));
        assert_eq!(c.tls.key, Some("k.pem".into()));
        assert!(c.rest.parse::<tokio_postgres::Config>().is_ok());
    }

    #[test]
    fn key_value_words_are_taken_out_with_quotes_and_escapes() {
        let c = split(
            "host=h sslmode = 'verify-full' sslrootcert='/a b/c\\'a.pem' user=u password='x y'",
        )
        .unwrap();
        assert_eq!(c.rest, "host=h user=u password='x y'");
        assert_eq!(c.tls.mode, SslMode::VerifyFull);
        assert_eq!(c.tls.root_cert, Some(RootCert::File("/a b/c'a.pem".into())));
        let cfg: tokio_postgres::Config = c.rest.parse().unwrap();
        assert_eq!(cfg.get_password(), Some(&b"x y"[..]));
    }

    #[test]
    fn bad_values_are_refused_with_the_reason() {
        let e = split("postgres://h/db?sslmode=verify_full").unwrap_err();
        assert!(
            e.contains("sslmode=verify_full") && e.contains("verify-full"),
            "{e}"
        );
        let e = split("host=h sslcert=c.pem").unwrap_err();
        assert!(e.contains("sslkey"), "{e}");
        let e = split("postgres://h/db?sslkey=k.pem").unwrap_err();
        assert!(e.contains("sslcert"), "{e}");
        let e = split("postgres://h/db?sslrootcert=system&sslmode=require").unwrap_err();
        assert!(e.contains("verify-full"), "{e}");
    }

    #[test]
    fn libpq_rules_for_the_roots() {
        let c = split("postgres://h/db?sslrootcert=system").unwrap();
        assert_eq!(c.tls.mode, SslMode::VerifyFull);
        assert_eq!(c.tls.roots(), RootCert::System);
        assert!(!split("postgres://h/db?sslmode=require")
            .unwrap()
            .tls
            .verifies_chain());
        assert!(split("postgres://h/db?sslmode=require&sslrootcert=ca.pem")
            .unwrap()
            .tls
            .verifies_chain());
        assert!(split("postgres://h/db?sslmode=verify-ca")
            .unwrap()
            .tls
            .verifies_chain());
        assert!(!split("postgres://h/db?sslmode=disable&sslrootcert=ca.pem")
            .unwrap()
            .tls
            .verifies_chain());
    }

    #[test]
    fn passwords_are_redacted_in_every_form() {
        assert_eq!(
            redact("postgres://u:s3cret@h:5432/db"),
            "postgres://u:***@h:5432/db"
        );
        assert_eq!(redact("postgres://u@h/db"), "postgres://u@h/db");
        assert_eq!(
            redact("postgres://u@h/db?password=s3cret&sslmode=require"),
            "postgres://u@h/db?password=***&sslmode=require"
        );
        assert_eq!(redact("postgres://u:p%40ss@h/db"), "postgres://u:***@h/db");
        assert_eq!(
            redact("user=u password=s3cret host=h"),
            "user=u password=*** host=h"
        );
        assert_eq!(
            redact("rediss://:s3cret@h:6380/0"),
            "rediss://:***@h:6380/0"
        );
        assert!(!redact("user=u password='s3cret").contains("s3cret"));
        // An @ in the path or query is not a user part.
        assert_eq!(
            redact("postgres://h/db?application_name=a@b"),
            "postgres://h/db?application_name=a@b"
        );
    }
}
