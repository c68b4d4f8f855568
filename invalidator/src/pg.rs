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
