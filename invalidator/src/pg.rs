//! PostgreSQL connections: TLS as the connection string asks (see
//! [`crate::conninfo`] and [`crate::tls`]), failures explained in words
//! that name the setting to change, and notifications that reach us.
//!
//! `tokio::spawn(connection)` would drop notifications; the driver task
//! here polls the connection with `poll_message` and rings a [`Notify`] on
//! each one.

use crate::config::{Config, ConfigError};
use crate::conninfo::{self, SslMode, TlsParams};
use std::collections::VecDeque;
use std::future::poll_fn;
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::sync::Notify;
use tokio::task::JoinHandle;
use tokio_postgres::config::Host;
use tokio_postgres::{AsyncMessage, Client};
use tokio_postgres_rustls::MakeRustlsConnect;

/// A connected client, its doorbell, and the task driving the connection
/// (it finishes when the connection is lost).
pub struct Session {
    /// The client.
    pub client: Client,
    /// Rung on every notification.
    pub doorbell: Arc<Notify>,
    /// Notifications received and not yet taken: channel and payload.
    pub notifications: Arc<Mutex<VecDeque<(String, String)>>>,
    /// Ends with the connection.
    pub driver: JoinHandle<Result<(), tokio_postgres::Error>>,
}

/// Where and how to connect: the connection string as tokio-postgres
/// reads it, its TLS settings (see [`crate::conninfo`]) and its name for
/// messages, with the password hidden.
///
/// ```
/// use smartcache_invalidator::pg::Target;
/// let t = Target::parse("database_url", "postgres://u:secret@db.example.com/app?sslmode=require").unwrap();
/// assert_eq!(t.name(), "postgres://u:***@db.example.com/app?sslmode=require");
/// assert!(Target::parse("database_url", "postgres://h/db?sslmode=maybe").is_err());
/// ```
#[derive(Clone)]
pub struct Target {
    config: tokio_postgres::Config,
    tls: MakeRustlsConnect,
    params: TlsParams,
    name: String,
    setting: &'static str,
}

impl Target {
    /// Parses `conn`, the value of `setting`, and reads the certificate
    /// files it names. A bad value or an unreadable file is a
    /// configuration error naming the setting.
    pub fn parse(setting: &'static str, conn: &str) -> Result<Self, ConfigError> {
        let (config, params) = parse_conn(setting, conn)?;
        let tls = crate::tls::client_config(&params).map_err(|e| {
            ConfigError(format!(
                "setting `{setting}` ({}): {e}",
                conninfo::redact(conn)
            ))
        })?;
        Ok(Self {
            config,
            tls: MakeRustlsConnect::new(tls),
            params,
            name: conninfo::redact(conn),
            setting,
        })
    }

    /// The same server under another `application_name`.
    pub fn named(mut self, application_name: &str) -> Self {
        self.config.application_name(application_name);
        self
    }

    /// The connection string with its password hidden.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The connection settings tokio-postgres uses.
    pub fn config_mut(&mut self) -> &mut tokio_postgres::Config {
        &mut self.config
    }
}

/// Checks `conn` without reading any file: its TLS parameters and what
/// tokio-postgres makes of the rest.
pub fn check_syntax(setting: &'static str, conn: &str) -> Result<(), ConfigError> {
    parse_conn(setting, conn).map(|_| ())
}

fn parse_conn(
    setting: &'static str,
    conn: &str,
) -> Result<(tokio_postgres::Config, TlsParams), ConfigError> {
    let bad = |e: &dyn std::fmt::Display| {
        ConfigError(format!(
            "setting `{setting}` ({}): {e}",
            conninfo::redact(conn)
        ))
    };
    let info = conninfo::split(conn).map_err(|e| bad(&e))?;
    let mut config: tokio_postgres::Config = info.rest.parse().map_err(|e| bad(&e))?;
    config.ssl_mode(match info.tls.mode {
        SslMode::Disable => tokio_postgres::config::SslMode::Disable,
        SslMode::Prefer => tokio_postgres::config::SslMode::Prefer,
        SslMode::Require | SslMode::VerifyCa | SslMode::VerifyFull => {
            tokio_postgres::config::SslMode::Require
        }
    });
    Ok((config, info.tls))
}

/// Parses the configured `database_url` and fills in our defaults where
/// the user set nothing: an application name, a connect timeout and TCP
/// keepalives, so a dead peer is noticed. A URL that does not parse, or a
/// certificate file that cannot be read, is a configuration error naming
/// the setting.
pub fn target(settings: &Config) -> Result<Target, ConfigError> {
    let mut target = Target::parse("database_url", settings.database_url.expose())
        .map_err(|e| ConfigError(format!("{}: {e}", settings.origin())))?;
    let config = &mut target.config;
    if config.get_application_name().is_none() {
        config.application_name("smartcache-invalidator");
    }
    if config.get_connect_timeout().is_none() {
        config.connect_timeout(Duration::from_secs(5));
    }
    config.keepalives(true);
    config.keepalives_idle(Duration::from_secs(10));
    config.keepalives_interval(Duration::from_secs(5));
    config.keepalives_retries(3);
    Ok(target)
}

/// A failed connection: what went wrong and what to change, in one line.
#[derive(Debug, thiserror::Error)]
#[error("cannot connect to PostgreSQL at {name}: {cause}; {advice}")]
pub struct ConnectError {
    name: String,
    cause: String,
    advice: String,
    /// Whether trying again cannot help until someone changes a setting
    /// (a refused certificate, TLS on one side only, pg_hba.conf, a
    /// password).
    pub permanent: bool,
}

/// Notifications a session keeps until they are taken.
const NOTIFICATIONS_KEPT: usize = 1024;

/// Connects and starts the driver task.
pub async fn connect(target: &Target) -> Result<Session, ConnectError> {
    let (client, mut connection) = target
        .config
        .connect(target.tls.clone())
        .await
        .map_err(|e| explain(target, e))?;
    let doorbell = Arc::new(Notify::new());
    let notifications = Arc::new(Mutex::new(VecDeque::new()));
    let (bell, queue) = (doorbell.clone(), notifications.clone());
    let driver = tokio::spawn(async move {
        loop {
            match poll_fn(|cx| connection.poll_message(cx)).await {
                Some(Ok(AsyncMessage::Notification(n))) => {
                    let mut queue = queue.lock().expect("not poisoned");
                    // Payloads only speed deletions up (the outbox has them
                    // all): past this many, the oldest go.
                    if queue.len() >= NOTIFICATIONS_KEPT {
                        queue.pop_front();
                    }
                    queue.push_back((n.channel().to_owned(), n.payload().to_owned()));
                    drop(queue);
                    bell.notify_one();
                }
                Some(Ok(AsyncMessage::Notice(n))) => {
                    tracing::debug!(notice = %n.message(), "PostgreSQL notice");
                }
                Some(Ok(_)) => {}
                Some(Err(e)) => return Err(e),
                None => return Ok(()),
            }
        }
    });
    Ok(Session {
        client,
        doorbell,
        notifications,
        driver,
    })
}

fn explain(target: &Target, e: tokio_postgres::Error) -> ConnectError {
    let setting = target.setting;
    let mode = target.params.mode;
    let host = match target.config.get_hosts().first() {
        Some(Host::Tcp(h)) => h.clone(),
        Some(Host::Unix(p)) => p.display().to_string(),
        None => "localhost".to_owned(),
    };
    let port = target.config.get_ports().first().copied().unwrap_or(5432);
    let cause = chain(&e);
    let (advice, permanent) = if let Some(tls) = crate::tls::rustls_error(&e) {
        (
            crate::tls::advice(tls, &target.params, &host).replace("database_url", setting),
            true,
        )
    } else if cause.contains("server does not support TLS") {
        (
            format!(
                "the server does not accept TLS (its ssl setting is off) but sslmode={mode} requires it: \
                 set sslmode=disable or prefer in {setting}, or turn ssl on at the server"
            ),
            true,
        )
    } else if let Some(db) = e.as_db_error() {
        let msg = db.message();
        let code = db.code().code();
        let advice = if msg.contains("no encryption") {
            format!(
                "the server accepts only TLS connections from here (pg_hba.conf hostssl) but sslmode={mode}: \
                 set sslmode=require, verify-ca or verify-full in {setting}"
            )
        } else if msg.contains("SSL encryption") || msg.contains("GSS encryption") {
            format!(
                "the server accepts only plain connections from here (pg_hba.conf hostnossl): set \
                 sslmode=disable in {setting}"
            )
        } else if msg.contains("requires a valid client certificate") {
            format!(
                "pg_hba.conf asks for a client certificate: set sslcert and sslkey in {setting}"
            )
        } else if msg.contains("certificate authentication failed") {
            format!(
                "the client certificate (sslcert) is not for this role: its common name (CN) must be \
                 the user in {setting}, or a pg_ident.conf map must allow it"
            )
        } else if code == "28P01" {
            format!("check the user and password in {setting} (or its _file)")
        } else if code == "3D000" {
            format!("check the database name in {setting}")
        } else if code.starts_with("28") {
            format!("pg_hba.conf refuses this connection: check the user, database and sslmode in {setting}")
        } else {
            return transient(target, cause, host, port);
        };
        (advice, true)
    } else {
        return transient(target, cause, host, port);
    };
    ConnectError {
        name: target.name.clone(),
        cause,
        advice,
        permanent,
    }
}

fn transient(target: &Target, cause: String, host: String, port: u16) -> ConnectError {
    ConnectError {
        name: target.name.clone(),
        cause,
        advice: format!(
            "check {} and that the server is up and listening on {host} port {port}",
            target.setting
        ),
        permanent: false,
    }
}

/// Name of the daemon's main session in `pg_stat_activity`.
pub const DAEMON_APPLICATION: &str = "smartcache-invalidator";

/// The daemon's session settings, as `SET` statements.
///
/// A lost outbox DELETE only replays an idempotent invalidation, so the
/// daemon's commits need not wait for the WAL flush. The server ends a
/// statement that runs, or a transaction that sits idle, longer than
/// `pg_timeout` (a frozen daemon's claimed rows go back to the queue), and
/// notices a client that went away mid-statement. The planner settings pin
/// the claim to index scans.
pub fn session_settings(config: &Config) -> String {
    let ms = config.pg_timeout.as_millis();
    format!(
        "SET synchronous_commit = off; SET statement_timeout = {ms}; \
         SET idle_in_transaction_session_timeout = {ms}; \
         SET client_connection_check_interval = 2000; {}",
        crate::claim::PLANNER_SETTINGS
    )
}

/// Readies the daemon's session (its settings, LISTEN) and returns its
/// backend pid; through transaction pooling (`pooled`) there is no session
/// to ready (see [`crate::pooling`]) and no pid: 0.
///
/// `previous` is this daemon's last backend: if it still runs (a
/// connection we gave up on), it is ended, so nothing we abandoned keeps
/// working.
pub async fn prepare_daemon_session(
    client: &Client,
    config: &Config,
    previous: Option<i32>,
    pooled: bool,
) -> Result<i32, tokio_postgres::Error> {
    if pooled {
        return Ok(0);
    }
    client
        .batch_execute(&format!(
            "{}; LISTEN {}",
            session_settings(config),
            crate::sql::ident(&config.channel)
        ))
        .await?;
    let pid: i32 = client
        .query_one("SELECT pg_backend_pid()", &[])
        .await?
        .get(0);
    if let Some(old) = previous.filter(|old| *old != pid) {
        let ended: bool = client
            .query_one(
                "SELECT coalesce(bool_or(pg_terminate_backend(pid)), false) FROM pg_stat_activity \
                 WHERE pid = $1 AND usename = current_user AND application_name = $2",
                &[&old, &DAEMON_APPLICATION],
            )
            .await?
            .get(0);
        if ended {
            tracing::warn!(
                backend = old,
                "ended this daemon's previous PostgreSQL backend, which was still running"
            );
        }
    }
    Ok(pid)
}

/// An error with its causes, `: `-separated: `tokio_postgres::Error`
/// alone prints only "db error".
pub fn chain(e: &(dyn std::error::Error + 'static)) -> String {
    let mut out = e.to_string();
    let mut source = e.source();
    while let Some(s) = source {
        let text = s.to_string();
        if !out.contains(&text) {
            out.push_str(": ");
            out.push_str(&text);
        }
        source = s.source();
    }
    out
}
