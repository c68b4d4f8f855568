//! PostgreSQL connections whose notifications reach us.
//!
//! `tokio::spawn(connection)` would drop notifications; the driver task
//! here polls the connection with `poll_message` and rings a [`Notify`] on
//! each one.

use crate::config::{Config, ConfigError};
use std::future::poll_fn;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::Notify;
use tokio::task::JoinHandle;
use tokio_postgres::{AsyncMessage, Client, NoTls};

/// A connected client, its doorbell, and the task driving the connection
/// (it finishes when the connection is lost).
pub struct Session {
    /// The client.
    pub client: Client,
    /// Rung on every notification.
    pub doorbell: Arc<Notify>,
    /// Ends with the connection.
    pub driver: JoinHandle<Result<(), tokio_postgres::Error>>,
}

/// Parses the configured `database_url` and fills in our defaults where
/// the user set nothing: an application name, a connect timeout and TCP
/// keepalives, so a dead peer is noticed. A URL that does not parse is a
/// configuration error naming the setting.
pub fn config(settings: &Config) -> Result<tokio_postgres::Config, ConfigError> {
    let mut config: tokio_postgres::Config = settings.database_url.parse().map_err(|e| {
        ConfigError(format!(
            "{}: setting `database_url`: {e}",
            settings.origin()
        ))
    })?;
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
    Ok(config)
}

/// Connects and starts the driver task.
pub async fn connect(config: &tokio_postgres::Config) -> Result<Session, tokio_postgres::Error> {
    let (client, mut connection) = config.connect(NoTls).await?;
    let doorbell = Arc::new(Notify::new());
    let bell = doorbell.clone();
    let driver = tokio::spawn(async move {
        loop {
            match poll_fn(|cx| connection.poll_message(cx)).await {
                Some(Ok(AsyncMessage::Notification(_))) => bell.notify_one(),
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
        driver,
    })
}

/// Name of the daemon's main session in `pg_stat_activity`.
pub const DAEMON_APPLICATION: &str = "smartcache-invalidator";

/// Readies the daemon's session and returns its backend pid.
///
/// A lost outbox DELETE only replays an idempotent invalidation, so the
/// daemon's commits need not wait for the WAL flush. The server ends a
/// statement that runs, or a transaction that sits idle, longer than
/// `pg_timeout` (a frozen daemon's claimed rows go back to the queue), and
/// notices a client that went away mid-statement. The planner settings pin
/// the claim to index scans. `previous` is this daemon's last backend: if
/// it still runs (a connection we gave up on), it is ended, so nothing we
/// abandoned keeps working.
pub async fn prepare_daemon_session(
    client: &Client,
    config: &Config,
    previous: Option<i32>,
) -> Result<i32, tokio_postgres::Error> {
    let ms = config.pg_timeout.as_millis();
    client
        .batch_execute(&format!(
            "SET synchronous_commit = off; SET statement_timeout = {ms}; \
             SET idle_in_transaction_session_timeout = {ms}; \
             SET client_connection_check_interval = 2000; {}; LISTEN {}",
            crate::claim::PLANNER_SETTINGS,
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

/// Hides a password in a connection URL for messages.
///
/// ```
/// use smartcache_invalidator::pg::redact;
/// assert_eq!(redact("postgres://u:secret@h/db"), "postgres://u:***@h/db");
/// ```
pub fn redact(url: &str) -> String {
    match (url.find("://"), url.rfind('@')) {
        (Some(s), Some(at)) if at > s => {
            let creds = &url[s + 3..at];
            match creds.split_once(':') {
                Some((user, _)) => format!("{}{user}:***{}", &url[..s + 3], &url[at..]),
                None => url.to_owned(),
            }
        }
        _ => url.to_owned(),
    }
}
