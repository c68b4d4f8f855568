//! Configuration: TOML file, environment and flags, in that order of
//! precedence (flag > environment > file > default).
//!
//! Flags and environment variables are read by clap (`env = …`), so this
//! module only merges the file under them and validates the result. The
//! checks that need the database (tables and columns exist) live in
//! [`crate::catalog`].
//!
//! # URLs with passwords, from files
//!
//! A URL setting `X_url` can instead be given as a file that holds it,
//! `X_url_file` (flag `--X-url-file`, environment `X_URL_FILE`), as
//! container platforms mount secrets (`/run/secrets/…`). Each level of
//! precedence (flag, environment, config file) may give the URL or the
//! file; the highest level that gives either wins, a level that gives both
//! is a configuration error, and so is a file that cannot be read or is
//! empty. The file holds the URL alone; trailing whitespace (the newline
//! an editor or `echo` adds) is removed. A relative path is relative to the
//! working directory. See [`resolve_url`]. The value is kept as a
//! [`SecretUrl`], whose `Debug` and `Display` hide the password, and every
//! message shows it through [`crate::conninfo::redact`].

use serde::Deserialize;
use smartcache_core::keys::{Namespace, TableName};
use smartcache_core::tls::Tls;
use std::collections::BTreeSet;
use std::fmt;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

/// Default `database_url`.
pub const DEFAULT_DATABASE_URL: &str = "postgres://postgres@127.0.0.1:5432/postgres";
/// Default `redis_url`.
pub const DEFAULT_REDIS_URL: &str = "redis://127.0.0.1:6379/0";
/// Default NOTIFY channel.
pub const DEFAULT_CHANNEL: &str = "smartcache";
/// Config file read when `--config` is not given, if it exists.
pub const DEFAULT_CONFIG_FILE: &str = "smartcache.toml";

/// A configuration problem. The daemon exits with status 2 on it.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct ConfigError(pub String);

/// The file as written; every field optional so that flags and environment
/// can fill the gaps.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct FileConfig {
    database_url: Option<String>,
    database_url_file: Option<PathBuf>,
    redis_url: Option<String>,
    redis_cluster: Option<bool>,
    redis_url_file: Option<PathBuf>,
    redis_ca_file: Option<PathBuf>,
    redis_client_cert_file: Option<PathBuf>,
    redis_client_key_file: Option<PathBuf>,
    namespace: Option<String>,
    channel: Option<String>,
    batch_size: Option<usize>,
    poll_interval_ms: Option<u64>,
    canary_interval_ms: Option<u64>,
    sweep_interval_ms: Option<u64>,
    full_scan_interval_ms: Option<u64>,
    metrics_addr: Option<SocketAddr>,
    admin_token: Option<String>,
    daemon_role: Option<String>,
    capture_in_replica_mode: Option<bool>,
    doorbell_payload: Option<bool>,
    pg_timeout_ms: Option<u64>,
    replica_urls: Option<Vec<String>>,
    replica_wait_ms: Option<u64>,
    #[serde(default)]
    tables: Vec<FileTable>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct FileTable {
    name: String,
    #[serde(default)]
    keys: Vec<String>,
}

/// Values given on the command line or in the environment; `None` means
/// "not given", so the file or the default applies.
#[derive(Debug, Default, Clone)]
pub struct Overrides {
    /// `--database-url`.
    pub database_url: Option<String>,
    /// `--database-url-file`.
    pub database_url_file: Option<PathBuf>,
    /// `DATABASE_URL`.
    pub database_url_env: Option<String>,
    /// `DATABASE_URL_FILE`.
    pub database_url_file_env: Option<PathBuf>,
    /// `--redis-url`.
    pub redis_url: Option<String>,
    /// `REDIS_URL`.
    pub redis_url_env: Option<String>,
    /// `REDIS_URL_FILE`.
    pub redis_url_file_env: Option<PathBuf>,
    /// `--redis-cluster` / `SMARTCACHE_REDIS_CLUSTER`.
    pub redis_cluster: Option<bool>,
    /// `--redis-url-file`: the URL (with its password) read from this file.
    pub redis_url_file: Option<PathBuf>,
    /// `--redis-ca-file` / `SMARTCACHE_REDIS_CA_FILE`.
    pub redis_ca_file: Option<PathBuf>,
    /// `--redis-client-cert-file` / `SMARTCACHE_REDIS_CLIENT_CERT_FILE`.
    pub redis_client_cert_file: Option<PathBuf>,
    /// `--redis-client-key-file` / `SMARTCACHE_REDIS_CLIENT_KEY_FILE`.
    pub redis_client_key_file: Option<PathBuf>,
    /// `--namespace` / `SMARTCACHE_NAMESPACE`.
    pub namespace: Option<String>,
    /// `--replica-url` (repeated) / `SMARTCACHE_REPLICA_URLS` (commas).
    pub replica_urls: Option<Vec<String>>,
    /// `run --metrics-addr`.
    pub metrics_addr: Option<SocketAddr>,
    /// `SMARTCACHE_ADMIN_TOKEN` (environment only: a flag would show in `ps`).
    pub admin_token: Option<String>,
}

/// The validated configuration of the daemon.
#[derive(Debug, Clone)]
pub struct Config {
    /// PostgreSQL connection string (URL or key=value form), with the
    /// libpq TLS parameters (see [`crate::conninfo`]).
    pub database_url: SecretUrl,
    /// Redis URL; with `redis_cluster`, comma-separated seed node URLs.
    pub redis_url: String,
    /// Speak the Redis Cluster protocol.
    pub redis_cluster: bool,
    /// CA and client certificate for `rediss://` (`redis_ca_file`,
    /// `redis_client_cert_file`, `redis_client_key_file`), read at load.
    pub redis_tls: Tls,
    /// Namespace of every Redis key we touch.
    pub namespace: Namespace,
    /// NOTIFY channel of the doorbell.
    pub channel: String,
    /// Outbox rows claimed per transaction.
    pub batch_size: usize,
    /// How often an idle daemon looks at the outbox without a doorbell.
    pub poll_interval: Duration,
    /// How often the canary commits a heartbeat through the trigger path;
    /// `None` turns it off.
    pub canary_interval: Option<Duration>,
    /// How often the sweeper removes registrations of expired or evicted
    /// entries, and of live ones under dependencies they no longer have;
    /// `None` turns it off.
    pub sweep_interval: Option<Duration>,
    /// How often the daemon scans the whole outbox below its position, the
    /// safety net for rows no snapshot accounted for (a peer that died
    /// holding them).
    pub full_scan_interval: Duration,
    /// Where `run` serves `/metrics` and `/healthz`, if anywhere.
    pub metrics_addr: Option<SocketAddr>,
    /// Token that the admin page's write actions (clear a key or a table)
    /// require; `None` disables them.
    pub admin_token: Option<AdminToken>,
    /// Role the daemon connects as; `install` grants it what `run` needs.
    pub daemon_role: Option<String>,
    /// Capture also in sessions with `session_replication_role = replica`
    /// (logical-replication apply workers, some restore tools): triggers
    /// are installed `ENABLE ALWAYS`.
    pub capture_in_replica_mode: bool,
    /// The doorbell carries the changed rows' key columns, so an idle
    /// daemon deletes before its claim. Off by default: any role that can
    /// connect may LISTEN and would read them.
    pub doorbell_payload: bool,
    /// Longest a daemon statement may run, and a daemon transaction may sit
    /// idle, before the server ends it: a frozen daemon's claimed rows go
    /// back to the queue after this, and nothing it abandons keeps running.
    pub pg_timeout: Duration,
    /// PostgreSQL replicas the applications read from: a batch's keys are
    /// deleted only once every one has replayed past the batch's commits.
    pub replica_urls: Vec<SecretUrl>,
    /// Longest a batch waits for a replica; a replica still behind (or
    /// unreachable) then gets the batch's deletions again once it caught up.
    pub replica_wait: Duration,
    /// Watched tables with their key templates.
    pub tables: Vec<TableSpec>,
    /// Where the file settings came from, for messages.
    pub source: Option<PathBuf>,
}

/// One watched table.
#[derive(Debug, Clone)]
pub struct TableSpec {
    /// Schema-qualified name.
    pub name: TableName,
    /// Key templates, e.g. `product:{id}`.
    pub keys: Vec<Template>,
}

impl TableSpec {
    /// Columns the templates read, sorted, without duplicates.
    pub fn template_columns(&self) -> BTreeSet<&str> {
        self.keys.iter().flat_map(|t| t.columns()).collect()
    }
}

impl Config {
    /// Loads `path` (or `smartcache.toml` if it exists when `path` is
    /// `None`) and applies `overrides` on top.
    pub fn load(path: Option<&Path>, overrides: &Overrides) -> Result<Self, ConfigError> {
        let (file, source) = match path {
            Some(p) => (read_file(p)?, Some(p.to_path_buf())),
            None if Path::new(DEFAULT_CONFIG_FILE).exists() => {
                let p = PathBuf::from(DEFAULT_CONFIG_FILE);
                (read_file(&p)?, Some(p))
            }
            None => (FileConfig::default(), None),
        };
        Self::from_parts(file, source, overrides)
    }

    /// Parses TOML text as if it were the file `source` (used by tests and
    /// by `load`).
    pub fn from_toml(
        text: &str,
        source: &Path,
        overrides: &Overrides,
    ) -> Result<Self, ConfigError> {
        let file = parse(text, source)?;
        Self::from_parts(file, Some(source.to_path_buf()), overrides)
    }

    fn from_parts(
        file: FileConfig,
        source: Option<PathBuf>,
        o: &Overrides,
    ) -> Result<Self, ConfigError> {
        let origin = Origin(source.as_deref());
        let (redis_url, redis_tls) = redis_settings(&origin, o, &file)?;
        let namespace_name = o
            .namespace
            .clone()
            .or(file.namespace)
            .unwrap_or_else(|| smartcache_core::keys::DEFAULT_NAMESPACE.to_owned());
        let namespace = Namespace::new(&namespace_name)
            .map_err(|e| ConfigError(format!("{origin}: setting `namespace`: {e}")))?;
        let channel = file.channel.unwrap_or_else(|| DEFAULT_CHANNEL.to_owned());
        if channel.is_empty() || channel.len() > 63 {
            return Err(ConfigError(format!(
                "{origin}: setting `channel`: {channel:?} must be 1-63 bytes"
            )));
        }
        let batch_size = file.batch_size.unwrap_or(5000);
        if !(1..=100_000).contains(&batch_size) {
            return Err(ConfigError(format!(
                "{origin}: setting `batch_size`: {batch_size} is outside 1..=100000"
            )));
        }
        let poll_ms = file.poll_interval_ms.unwrap_or(500);
        if !(10..=60_000).contains(&poll_ms) {
            return Err(ConfigError(format!(
                "{origin}: setting `poll_interval_ms`: {poll_ms} is outside 10..=60000"
            )));
        }
        let canary_ms = file.canary_interval_ms.unwrap_or(10_000);
        if canary_ms != 0 && !(100..=3_600_000).contains(&canary_ms) {
            return Err(ConfigError(format!(
                "{origin}: setting `canary_interval_ms`: {canary_ms} is outside 100..=3600000 (0 turns the canary off)"
            )));
        }
        let admin_token = match o.admin_token.clone().or(file.admin_token) {
            Some(t) if t.chars().count() < AdminToken::MIN_LEN => {
                return Err(ConfigError(format!(
                    "{origin}: setting `admin_token` (or SMARTCACHE_ADMIN_TOKEN): use at least {} \
                     characters, e.g. from `openssl rand -hex 16`; unset it to disable write actions",
                    AdminToken::MIN_LEN
                )));
            }
            t => t.map(AdminToken),
        };
        let sweep_ms = file.sweep_interval_ms.unwrap_or(60_000);
        if sweep_ms != 0 && !(100..=86_400_000).contains(&sweep_ms) {
            return Err(ConfigError(format!(
                "{origin}: setting `sweep_interval_ms`: {sweep_ms} is outside 100..=86400000 (0 turns the sweeper off)"
            )));
        }
        let full_scan_ms = file.full_scan_interval_ms.unwrap_or(10_000);
        if !(1_000..=86_400_000).contains(&full_scan_ms) {
            return Err(ConfigError(format!(
                "{origin}: setting `full_scan_interval_ms`: {full_scan_ms} is outside 1000..=86400000"
            )));
        }
        let redis_cluster = o.redis_cluster.or(file.redis_cluster).unwrap_or(false);
        let pg_timeout_ms = file.pg_timeout_ms.unwrap_or(30_000);
        if !(1_000..=3_600_000).contains(&pg_timeout_ms) {
            return Err(ConfigError(format!(
                "{origin}: setting `pg_timeout_ms`: {pg_timeout_ms} is outside 1000..=3600000"
            )));
        }
        let replica_urls = o
            .replica_urls
            .clone()
            .or(file.replica_urls)
            .unwrap_or_default();
        for url in &replica_urls {
            crate::pg::check_syntax("replica_urls", url)
                .map_err(|e| ConfigError(format!("{origin}: {e}")))?;
        }
        let replica_urls = replica_urls.into_iter().map(SecretUrl).collect();
        let database_url = resolve_url(
            "database_url",
            &[
                UrlLevel {
                    names: "flags --database-url and --database-url-file",
                    url: o.database_url.as_deref(),
                    file: o.database_url_file.as_deref(),
                },
                UrlLevel {
                    names: "environment variables DATABASE_URL and DATABASE_URL_FILE",
                    url: o.database_url_env.as_deref(),
                    file: o.database_url_file_env.as_deref(),
                },
                UrlLevel {
                    names: "settings `database_url` and `database_url_file`",
                    url: file.database_url.as_deref(),
                    file: file.database_url_file.as_deref(),
                },
            ],
            DEFAULT_DATABASE_URL,
        )
        .map_err(|e| ConfigError(format!("{origin}: {e}")))?;
        crate::pg::check_syntax("database_url", database_url.expose())
            .map_err(|e| ConfigError(format!("{origin}: {e}")))?;
        let replica_wait_ms = file
            .replica_wait_ms
            .unwrap_or_else(|| (pg_timeout_ms / 2).min(10_000));
        // The claim transaction stays open while it waits.
        if !(10..=600_000).contains(&replica_wait_ms) || replica_wait_ms >= pg_timeout_ms {
            return Err(ConfigError(format!(
                "{origin}: setting `replica_wait_ms`: {replica_wait_ms} must be 10..=600000 and below pg_timeout_ms ({pg_timeout_ms})"
            )));
        }
        if let Some(role) = &file.daemon_role {
            if role.is_empty() || role.len() > 63 {
                return Err(ConfigError(format!(
                    "{origin}: setting `daemon_role`: {role:?} must be a role name of 1-63 bytes"
                )));
            }
        }
        let mut tables: Vec<TableSpec> = Vec::new();
        for t in file.tables {
            let name = TableName::parse(&t.name)
                .map_err(|e| ConfigError(format!("{origin}: [[tables]] {:?}: {e}", t.name)))?;
            if tables.iter().any(|s| s.name == name) {
                return Err(ConfigError(format!(
                    "{origin}: table `{name}` is listed twice in [[tables]]; merge its keys into one entry"
                )));
            }
            let keys = t
                .keys
                .iter()
                .map(|k| {
                    Template::parse(k).map_err(|e| {
                        ConfigError(format!("{origin}: table `{name}`: key template {k:?}: {e}"))
                    })
                })
                .collect::<Result<_, _>>()?;
            tables.push(TableSpec { name, keys });
        }
        Ok(Self {
            database_url,
            redis_url,
            redis_cluster,
            redis_tls,
            namespace,
            channel,
            batch_size,
            poll_interval: Duration::from_millis(poll_ms),
            canary_interval: (canary_ms > 0).then(|| Duration::from_millis(canary_ms)),
            sweep_interval: (sweep_ms > 0).then(|| Duration::from_millis(sweep_ms)),
            full_scan_interval: Duration::from_millis(full_scan_ms),
            metrics_addr: o.metrics_addr.or(file.metrics_addr),
            admin_token,
            daemon_role: file.daemon_role,
            capture_in_replica_mode: file.capture_in_replica_mode.unwrap_or(false),
            doorbell_payload: file.doorbell_payload.unwrap_or(false),
            pg_timeout: Duration::from_millis(pg_timeout_ms),
            replica_urls,
            replica_wait: Duration::from_millis(replica_wait_ms),
            tables,
            source,
        })
    }

    /// The spec of `table`, if configured.
    pub fn table(&self, table: &TableName) -> Option<&TableSpec> {
        self.tables.iter().find(|t| &t.name == table)
    }

    /// Names the config's origin in messages.
    pub fn origin(&self) -> impl fmt::Display + '_ {
        Origin(self.source.as_deref())
    }
}

/// A connection string that may hold a password: `Debug` and `Display`
/// show it with the password hidden, [`SecretUrl::expose`] gives it whole.
///
/// ```
/// use smartcache_invalidator::config::SecretUrl;
/// let url = SecretUrl::from("postgres://u:s3cret@h/db".to_owned());
/// assert_eq!(url.to_string(), "postgres://u:***@h/db");
/// assert!(!format!("{url:?}").contains("s3cret"));
/// assert_eq!(url.expose(), "postgres://u:s3cret@h/db");
/// ```
#[derive(Clone, PartialEq, Eq)]
pub struct SecretUrl(String);

impl SecretUrl {
    /// The connection string itself, password included: for connecting,
    /// never for a message.
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl From<String> for SecretUrl {
    fn from(url: String) -> Self {
        Self(url)
    }
}

impl fmt::Display for SecretUrl {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&crate::conninfo::redact(&self.0))
    }
}

impl fmt::Debug for SecretUrl {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "SecretUrl({self})")
    }
}

/// One level of precedence of a URL setting (see the module docs): the
/// URL, or a file holding it, as given there.
#[derive(Debug, Clone, Copy)]
pub struct UrlLevel<'a> {
    /// The flags, variables or settings of this level, for messages.
    pub names: &'a str,
    /// The URL, if given.
    pub url: Option<&'a str>,
    /// The file holding the URL, if given.
    pub file: Option<&'a Path>,
}

/// The value of URL setting `setting` from its `levels`, highest
/// precedence first, or `default`: the first level that gives the URL or
/// its file wins; one that gives both, or a file that cannot be read or
/// is empty, is an error naming what to change. An empty URL or path
/// counts as not given (`DATABASE_URL=` in a compose file).
///
/// ```
/// use smartcache_invalidator::config::{resolve_url, UrlLevel};
/// let dir = tempfile::tempdir().unwrap();
/// let secret = dir.path().join("url");
/// std::fs::write(&secret, "postgres://u:pw@h/db\n").unwrap();
/// let flag = UrlLevel { names: "flags", url: None, file: None };
/// let env = UrlLevel { names: "environment", url: None, file: Some(&secret) };
/// let file = UrlLevel { names: "config file", url: Some("postgres://other/db"), file: None };
/// let url = resolve_url("database_url", &[flag, env, file], "postgres://default/db").unwrap();
/// assert_eq!(url.expose(), "postgres://u:pw@h/db");
/// ```
pub fn resolve_url(
    setting: &str,
    levels: &[UrlLevel<'_>],
    default: &str,
) -> Result<SecretUrl, String> {
    for level in levels {
        let url = level.url.filter(|u| !u.is_empty());
        let file = level.file.filter(|f| !f.as_os_str().is_empty());
        match (url, file) {
            (Some(_), Some(_)) => {
                return Err(format!(
                    "setting `{setting}`: both the URL and its file are given by the {}; give one",
                    level.names
                ))
            }
            (Some(url), None) => return Ok(SecretUrl(url.to_owned())),
            (None, Some(path)) => {
                let text = std::fs::read_to_string(path).map_err(|e| {
                    format!(
                        "setting `{setting}_file`: cannot read {} ({e}); it must be a file holding the URL, readable by this user",
                        path.display()
                    )
                })?;
                let url = text.trim_end();
                if url.trim().is_empty() {
                    return Err(format!(
                        "setting `{setting}_file`: {} is empty; it must hold the URL",
                        path.display()
                    ));
                }
                return Ok(SecretUrl(url.to_owned()));
            }
            (None, None) => {}
        }
    }
    Ok(SecretUrl(default.to_owned()))
}

/// `redis_url` (or `redis_url_file`) and the TLS files, each by flag, then
/// environment, then file, then default; the files are read here, so a
/// missing or unreadable one is a configuration error.
fn redis_settings(
    origin: &Origin<'_>,
    o: &Overrides,
    file: &FileConfig,
) -> Result<(String, Tls), ConfigError> {
    let url = resolve_url(
        "redis_url",
        &[
            UrlLevel {
                names: "flags --redis-url and --redis-url-file",
                url: o.redis_url.as_deref(),
                file: o.redis_url_file.as_deref(),
            },
            UrlLevel {
                names: "environment variables REDIS_URL and REDIS_URL_FILE",
                url: o.redis_url_env.as_deref(),
                file: o.redis_url_file_env.as_deref(),
            },
            UrlLevel {
                names: "settings `redis_url` and `redis_url_file`",
                url: file.redis_url.as_deref(),
                file: file.redis_url_file.as_deref(),
            },
        ],
        DEFAULT_REDIS_URL,
    )
    .map_err(|e| ConfigError(format!("{origin}: {e}")))?
    .expose()
    .to_owned();
    let ca = o.redis_ca_file.as_ref().or(file.redis_ca_file.as_ref());
    let cert = o
        .redis_client_cert_file
        .as_ref()
        .or(file.redis_client_cert_file.as_ref());
    let key = o
        .redis_client_key_file
        .as_ref()
        .or(file.redis_client_key_file.as_ref());
    let client = match (cert, key) {
        (Some(c), Some(k)) => Some((c.as_path(), k.as_path())),
        (None, None) => None,
        _ => {
            return Err(ConfigError(format!(
                "{origin}: a client certificate needs its key: set both `redis_client_cert_file` \
                 and `redis_client_key_file` (or neither)"
            )))
        }
    };
    let tls = Tls::from_files(ca.map(PathBuf::as_path), client).map_err(|e| {
        let setting = match e.file {
            smartcache_core::tls::TlsFile::Ca => "redis_ca_file",
            smartcache_core::tls::TlsFile::ClientCert => "redis_client_cert_file",
            _ => "redis_client_key_file",
        };
        ConfigError(format!("{origin}: setting `{setting}`: {e}"))
    })?;
    let tls_url = url.split(',').all(|u| u.trim().starts_with("rediss"));
    if !tls.is_empty() && !tls_url {
        return Err(ConfigError(format!(
            "{origin}: `redis_ca_file` or a client certificate is set but `redis_url` ({}) does \
             not use TLS: write it as rediss:// (rediss+sentinel:// for Sentinel)",
            smartcache_core::diagnose::redact(&url)
        )));
    }
    Ok((url, tls))
}

/// The admin token: a secret, so `Debug` does not print it.
#[derive(Clone, PartialEq, Eq)]
pub struct AdminToken(String);

impl AdminToken {
    /// Shortest token accepted.
    pub const MIN_LEN: usize = 16;

    /// The token itself.
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for AdminToken {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("AdminToken(***)")
    }
}

struct Origin<'a>(Option<&'a Path>);

impl fmt::Display for Origin<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.0 {
            Some(p) => write!(f, "config file {}", p.display()),
            None => f.write_str("configuration (no config file)"),
        }
    }
}

fn read_file(path: &Path) -> Result<FileConfig, ConfigError> {
    let text = std::fs::read_to_string(path).map_err(|e| {
        ConfigError(format!(
            "cannot read config file {}: {e}; pass an existing file with --config",
            path.display()
        ))
    })?;
    parse(&text, path)
}

fn parse(text: &str, path: &Path) -> Result<FileConfig, ConfigError> {
    toml::from_str(text).map_err(|e| {
        let line = e
            .span()
            .map(|s| format!(", line {}", text[..s.start].matches('\n').count() + 1))
            .unwrap_or_default();
        ConfigError(format!(
            "config file {}{line}: {}",
            path.display(),
            e.message()
        ))
    })
}

/// A key template such as `product:{id}`: literal text and `{column}`
/// placeholders; `{{` and `}}` stand for literal braces.
///
/// ```
/// use smartcache_invalidator::config::Template;
/// let t = Template::parse("category:{category_id}").unwrap();
/// assert_eq!(t.columns().collect::<Vec<_>>(), ["category_id"]);
/// assert_eq!(t.render(|c| (c == "category_id").then(|| "7")), Some("category:7".into()));
/// ```
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Template {
    source: String,
    parts: Vec<Part>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum Part {
    Literal(String),
    Column(String),
}

impl Template {
    /// Parses a template; the error says what is wrong with it.
    pub fn parse(s: &str) -> Result<Self, String> {
        let mut parts = Vec::new();
        let mut lit = String::new();
        let mut chars = s.chars().peekable();
        while let Some(c) = chars.next() {
            match c {
                '{' if chars.peek() == Some(&'{') => {
                    chars.next();
                    lit.push('{');
                }
                '}' if chars.peek() == Some(&'}') => {
                    chars.next();
                    lit.push('}');
                }
                '{' => {
                    let mut col = String::new();
                    loop {
                        match chars.next() {
                            Some('}') => break,
                            Some('{') => return Err("`{` inside a `{column}` placeholder".into()),
                            Some(c) => col.push(c),
                            None => {
                                return Err("unclosed `{`; write `{{` for a literal brace".into())
                            }
                        }
                    }
                    if col.is_empty() {
                        return Err("empty placeholder `{}`; write `{column}`".into());
                    }
                    if !lit.is_empty() {
                        parts.push(Part::Literal(std::mem::take(&mut lit)));
                    }
                    parts.push(Part::Column(col));
                }
                '}' => return Err("unmatched `}`; write `}}` for a literal brace".into()),
                c => lit.push(c),
            }
        }
        if !lit.is_empty() {
            parts.push(Part::Literal(lit));
        }
        if parts.is_empty() {
            return Err("template is empty".into());
        }
        let t = Self {
            source: s.to_owned(),
            parts,
        };
        if let Some(Part::Literal(l)) = t.parts.first() {
            if l.starts_with(smartcache_core::keys::RESERVED_MARKER) {
                return Err(format!(
                    "keys starting with {:?} are reserved for smartcache's bookkeeping",
                    smartcache_core::keys::RESERVED_MARKER
                ));
            }
        }
        Ok(t)
    }

    /// The template as written.
    pub fn as_str(&self) -> &str {
        &self.source
    }

    /// The columns it reads, in order of appearance.
    pub fn columns(&self) -> impl Iterator<Item = &str> {
        self.parts.iter().filter_map(|p| match p {
            Part::Column(c) => Some(c.as_str()),
            Part::Literal(_) => None,
        })
    }

    /// Builds the key from column values; `None` when a column is NULL
    /// (no key is produced for a NULL value).
    pub fn render<'a>(&self, value: impl Fn(&str) -> Option<&'a str>) -> Option<String> {
        let mut out = String::new();
        for p in &self.parts {
            match p {
                Part::Literal(l) => out.push_str(l),
                Part::Column(c) => out.push_str(value(c)?),
            }
        }
        Some(out)
    }

    /// `SCAN MATCH` pattern (without namespace) for every key the template
    /// can produce: literals escaped, placeholders as `*`.
    pub fn scan_pattern(&self) -> String {
        self.parts
            .iter()
            .map(|p| match p {
                Part::Literal(l) => smartcache_core::keys::glob_escape(l),
                Part::Column(_) => "*".to_owned(),
            })
            .collect()
    }
}

impl fmt::Display for Template {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.source)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn load(text: &str) -> Result<Config, ConfigError> {
        Config::from_toml(text, Path::new("x.toml"), &Overrides::default())
    }

    #[test]
    fn the_commented_sample_config_is_valid() {
        let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("../deploy/smartcache.toml");
        let c = Config::load(Some(&path), &Overrides::default()).unwrap();
        assert_eq!(c.tables.len(), 2);
        assert_eq!(c.canary_interval, Some(Duration::from_secs(10)));
    }

    #[test]
    fn redis_cluster_comes_from_the_file_or_the_flag() {
        assert!(!load("").unwrap().redis_cluster);
        assert!(load("redis_cluster = true").unwrap().redis_cluster);
        let flag = Overrides {
            redis_cluster: Some(true),
            ..Overrides::default()
        };
        let c = Config::from_toml("redis_cluster = false", Path::new("x.toml"), &flag).unwrap();
        assert!(c.redis_cluster);
        let e = load("redis_cluster = \"yes\"").unwrap_err().0;
        assert!(e.contains("line 1") && e.contains("boolean"), "{e}");
    }

    #[test]
    fn defaults_apply_to_an_empty_file() {
        let c = load("").unwrap();
        assert_eq!(c.database_url.expose(), DEFAULT_DATABASE_URL);
        assert_eq!(c.redis_url, DEFAULT_REDIS_URL);
        assert_eq!(c.namespace.name(), "cache");
        assert_eq!(c.channel, "smartcache");
    }

    #[test]
    fn full_scan_interval_is_read_and_range_checked() {
        let c = load("full_scan_interval_ms = 5000").unwrap();
        assert_eq!(c.full_scan_interval, Duration::from_secs(5));
        assert_eq!(
            load("").unwrap().full_scan_interval,
            Duration::from_secs(10)
        );
        for bad in ["999", "86400001", "0"] {
            let e = load(&format!("full_scan_interval_ms = {bad}"))
                .unwrap_err()
                .0;
            assert!(
                e.contains("full_scan_interval_ms") && e.contains("1000..=86400000"),
                "{e}"
            );
        }
    }

    #[test]
    fn overrides_beat_the_file() {
        let o = Overrides {
            namespace: Some("flag".into()),
            ..Overrides::default()
        };
        let c = Config::from_toml("namespace = \"file\"", Path::new("x.toml"), &o).unwrap();
        assert_eq!(c.namespace.name(), "flag");
    }

    #[test]
    fn admin_token_is_secret_and_not_too_short() {
        let c = load("admin_token = \"0123456789abcdef\"").unwrap();
        assert_eq!(c.admin_token.as_ref().unwrap().expose(), "0123456789abcdef");
        assert!(!format!("{c:?}").contains("0123456789abcdef"));
        let e = load("admin_token = \"short\"").unwrap_err().0;
        assert!(e.contains("admin_token") && e.contains("16"), "{e}");
        assert!(load("").unwrap().admin_token.is_none());
    }

    #[test]
    fn unknown_key_names_file_and_line() {
        let e = load("namespace = \"a\"\n\nbogus = 1\n").unwrap_err().0;
        assert!(
            e.contains("x.toml") && e.contains("line 3") && e.contains("bogus"),
            "{e}"
        );
    }

    #[test]
    fn bad_template_names_the_table() {
        let e = load("[[tables]]\nname = \"products\"\nkeys = [\"p:{id\"]\n")
            .unwrap_err()
            .0;
        assert!(
            e.contains("public.products") && e.contains("unclosed"),
            "{e}"
        );
    }

    #[test]
    fn template_renders_and_skips_nulls() {
        let t = Template::parse("c:{a}:{{x}}").unwrap();
        assert_eq!(t.render(|_| Some("1")), Some("c:1:{x}".into()));
        assert_eq!(t.render(|_| None), None);
    }

    #[test]
    fn scan_pattern_escapes_literals() {
        let t = Template::parse("a*[{id}]").unwrap();
        assert_eq!(t.scan_pattern(), r"a\*\[*\]");
    }

    #[test]
    fn template_errors() {
        for bad in ["", "{}", "a}", "{a{b}}", "@sc:x"] {
            assert!(Template::parse(bad).is_err(), "{bad}");
        }
    }
}
