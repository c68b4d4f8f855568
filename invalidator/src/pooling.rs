//! Connection poolers: is the daemon's session its own server backend?
//!
//! The main loop needs a session: LISTEN for the doorbell, session
//! settings (timeouts, planner), prepared statements, one backend pid for
//! the canary. Through PgBouncer in session mode (or directly) it has
//! one. In transaction mode every transaction may run on another backend:
//! LISTEN silently does nothing, `SET` leaks to other clients, and a named
//! prepared statement may not exist on the next backend. So at the start
//! of each session the daemon checks, with a probe connection:
//!
//! 1. its backend pid, a probe's pid inside a transaction, and its own pid
//!    again: a pid handed to the probe, or a pid that changed, is pooling;
//! 2. a NOTIFY from the probe on a channel only this session LISTENs to
//!    must reach it within [`SELF_TEST`].
//!
//! When pooled, it runs without LISTEN, session settings or prepared
//! statements (the settings are `SET LOCAL` in each claim transaction, the
//! statements unnamed), asks writers never to ring, and polls every
//! `poll_interval_ms`. It says so in the log, in the
//! `smartcache_pooled_session` metric and on `/healthz`.

use crate::pg;
use std::time::Duration;
use tokio_postgres::types::{ToSql, Type};
use tokio_postgres::{Client, Row, SimpleQueryMessage, Statement};

/// The daemon's session has not been checked yet.
pub(crate) const UNKNOWN: u8 = 0;
/// It is a session of its own.
pub(crate) const SESSION: u8 = 1;
/// It goes through transaction pooling.
pub(crate) const POOLED: u8 = 2;

/// Longest the daemon waits for its own NOTIFY to come back.
pub(crate) const SELF_TEST: Duration = Duration::from_secs(2);

/// What the checks found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Mode {
    /// A backend of its own: LISTEN and session settings work.
    Session,
    /// Transaction pooling (the reason, for the log): poll instead.
    Pooled(String),
}

async fn backend_pid(client: &Client) -> Result<String, tokio_postgres::Error> {
    let rows = client.simple_query("SELECT pg_backend_pid()").await?;
    Ok(rows
        .iter()
        .find_map(|m| match m {
            SimpleQueryMessage::Row(r) => r.get(0).map(str::to_owned),
            _ => None,
        })
        .unwrap_or_default())
}

/// Finds out whether `session` has a backend of its own. Only simple
/// queries, so nothing here depends on the answer.
pub(crate) async fn detect(
    session: &pg::Session,
    target: &pg::Target,
) -> Result<Mode, anyhow::Error> {
    let main = &session.client;
    let probe = pg::connect(&target.clone().named("smartcache pooler probe")).await?;
    let first = backend_pid(main).await?;
    probe.client.batch_execute("BEGIN").await?;
    let probe_pid = backend_pid(&probe.client).await?;
    let again = backend_pid(main).await?;
    if probe_pid == first || again != first {
        probe.client.batch_execute("ROLLBACK").await?;
        return Ok(Mode::Pooled(format!(
            "backend pid {first} went to another client or changed to {again} between statements"
        )));
    }
    let channel = format!("smartcache_probe_{first}");
    main.batch_execute(&format!("LISTEN {channel}")).await?;
    let token = format!("{first}-{probe_pid}");
    probe
        .client
        .batch_execute(&format!("NOTIFY {channel}, '{token}'; COMMIT"))
        .await?;
    let arrived = tokio::time::timeout(SELF_TEST, async {
        loop {
            let seen = session
                .notifications
                .lock()
                .expect("not poisoned")
                .iter()
                .any(|(c, p)| *c == channel && *p == token);
            if seen {
                return;
            }
            session.doorbell.notified().await;
        }
    })
    .await
    .is_ok();
    main.batch_execute(&format!("UNLISTEN {channel}")).await?;
    Ok(if arrived {
        Mode::Session
    } else {
        Mode::Pooled(format!(
            "a NOTIFY on {channel} did not reach this session's LISTEN within {SELF_TEST:?}"
        ))
    })
}

/// A statement of the hot path: prepared once on a session of its own,
/// unnamed (sent whole each time, one round trip) when pooled, as a named
/// statement may not exist on the next backend.
pub(crate) struct Stmt {
    sql: String,
    types: Vec<Type>,
    prepared: Option<Statement>,
}

impl Stmt {
    /// Prepares `sql`; when `pooled`, only to learn its parameter types,
    /// inside a transaction so that preparing and closing meet one backend.
    pub(crate) async fn new(
        client: &Client,
        sql: &str,
        pooled: bool,
    ) -> Result<Self, tokio_postgres::Error> {
        if !pooled {
            let st = client.prepare(sql).await?;
            return Ok(Self {
                sql: sql.to_owned(),
                types: st.params().to_vec(),
                prepared: Some(st),
            });
        }
        client.batch_execute("BEGIN").await?;
        let types = client.prepare(sql).await?.params().to_vec();
        client.batch_execute("COMMIT").await?;
        Ok(Self {
            sql: sql.to_owned(),
            types,
            prepared: None,
        })
    }

    /// Runs it with `params`.
    pub(crate) async fn query(
        &self,
        client: &Client,
        params: &[&(dyn ToSql + Sync)],
    ) -> Result<Vec<Row>, tokio_postgres::Error> {
        match &self.prepared {
            Some(st) => client.query(st, params).await,
            None => {
                let typed: Vec<(&(dyn ToSql + Sync), Type)> = params
                    .iter()
                    .copied()
                    .zip(self.types.iter().cloned())
                    .collect();
                client.query_typed(&self.sql, &typed).await
            }
        }
    }
}

/// `BEGIN` of a claim transaction; when pooled, with the daemon's session
/// settings as `SET LOCAL` (a plain `SET` would stay on a backend that
/// other clients get next).
pub(crate) fn begin(pooled: bool, session_settings: &str) -> String {
    if !pooled {
        return "BEGIN".to_owned();
    }
    let local: Vec<String> = session_settings
        .split(';')
        .map(str::trim)
        .filter(|s| !s.is_empty())
        .map(|s| s.replacen("SET ", "SET LOCAL ", 1))
        .collect();
    format!("BEGIN; {}", local.join("; "))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pooled_claims_begin_with_local_settings() {
        assert_eq!(begin(false, "SET a = 1; SET b = 2"), "BEGIN");
        assert_eq!(
            begin(true, "SET a = 1; SET b = 2;"),
            "BEGIN; SET LOCAL a = 1; SET LOCAL b = 2"
        );
    }
}
