//! Read replicas: a batch's keys are deleted only once every replica the
//! applications read from has replayed past the batch's commits.
//!
//! Otherwise a fill reading a lagging replica right after the deletion
//! would cache the old row forever. The daemon takes the primary's WAL
//! insert position with its claim (every claimed change committed before
//! it) and waits until each replica's `pg_last_wal_replay_lsn()` reaches
//! it, up to `replica_wait_ms`. A replica that is unreachable or still
//! behind by then does not hold the cache up: the batch is applied, and
//! applied again once that replica has replayed past it (up to
//! [`REDO_MAX`] keys are remembered; beyond, every value of the namespace
//! is dropped once the replicas caught up).

use crate::config::{ConfigError, SecretUrl};
use crate::pg;
use smartcache_core::keys::DepId;
use std::time::{Duration, Instant};
use tokio_postgres::Client;
use tracing::{info, warn};

/// Keys and dependency sets remembered for replicas that were behind.
pub(crate) const REDO_MAX: usize = 200_000;

/// First pause between two looks at a replica; doubles up to [`LOOK_MAX`].
const LOOK_MIN: Duration = Duration::from_millis(1);
const LOOK_MAX: Duration = Duration::from_millis(20);

struct Replica {
    /// The URL without its password, for messages.
    name: String,
    target: pg::Target,
    client: Option<Client>,
}

/// Deletions to repeat once every replica has replayed past `lsn`.
struct Redo {
    lsn: String,
    keys: Vec<String>,
    deps: Vec<DepId>,
}

/// The replicas and the deletions owed to those that were behind.
pub(crate) struct Replicas {
    replicas: Vec<Replica>,
    wait: Duration,
    redo: Vec<Redo>,
    /// Too much to remember: drop every value once replicas reach this.
    drop_all_at: Option<String>,
}

impl Replicas {
    pub(crate) fn new(urls: &[SecretUrl], wait: Duration) -> Result<Self, ConfigError> {
        let replicas = urls
            .iter()
            .map(|url| {
                let mut target = pg::Target::parse("replica_urls", url.expose())?
                    .named("smartcache-invalidator replica");
                target.config_mut().connect_timeout(Duration::from_secs(2));
                Ok(Replica {
                    name: target.name().to_owned(),
                    target,
                    client: None,
                })
            })
            .collect::<Result<_, ConfigError>>()?;
        Ok(Self {
            replicas,
            wait,
            redo: Vec::new(),
            drop_all_at: None,
        })
    }

    /// Whether any replica is configured.
    pub(crate) fn any(&self) -> bool {
        !self.replicas.is_empty()
    }

    /// Deletions owed to replicas that were behind.
    pub(crate) fn owed(&self) -> bool {
        !self.redo.is_empty() || self.drop_all_at.is_some()
    }

    /// Waits until every replica replayed past `lsn`, up to the configured
    /// wait, keeping `primary`'s transaction from looking idle; returns
    /// the replicas still behind (or unreachable).
    pub(crate) async fn wait_for(
        &mut self,
        lsn: &str,
        primary: &Client,
        keepalive: Duration,
    ) -> Result<Vec<String>, tokio_postgres::Error> {
        let deadline = Instant::now() + self.wait;
        let mut touched = Instant::now();
        let mut behind = Vec::new();
        for r in &mut self.replicas {
            let mut look = LOOK_MIN;
            loop {
                match r.replayed(lsn).await {
                    Some(true) => break,
                    None => {
                        behind.push(format!("{} (unreachable)", r.name));
                        break;
                    }
                    Some(false) if Instant::now() >= deadline => {
                        behind.push(format!("{} (still behind after {:?})", r.name, self.wait));
                        break;
                    }
                    Some(false) => {}
                }
                if touched.elapsed() >= keepalive {
                    primary.batch_execute("SELECT 1").await?;
                    touched = Instant::now();
                }
                tokio::time::sleep(look).await;
                look = (look * 2).min(LOOK_MAX);
            }
        }
        Ok(behind)
    }

    /// Remembers a batch's deletions for the replicas that were behind.
    pub(crate) fn owe(&mut self, lsn: &str, keys: Vec<String>, deps: Vec<DepId>) {
        let held: usize = self.redo.iter().map(|r| r.keys.len() + r.deps.len()).sum();
        if self.drop_all_at.is_some() || held + keys.len() + deps.len() > REDO_MAX {
            self.redo.clear();
            self.drop_all_at = Some(lsn.to_owned());
            return;
        }
        self.redo.push(Redo {
            lsn: lsn.to_owned(),
            keys,
            deps,
        });
    }

    /// The deletions now due (every replica replayed past them), oldest
    /// first; `drop_all` when everything must go.
    pub(crate) async fn due(&mut self) -> Due {
        let mut due = Due::default();
        if let Some(lsn) = self.drop_all_at.clone() {
            if self.all_replayed(&lsn).await {
                self.drop_all_at = None;
                due.drop_all = true;
                info!("replicas caught up: dropping every value, as too many deletions were owed to remember");
            }
            return due;
        }
        while let Some(first) = self.redo.first() {
            let lsn = first.lsn.clone();
            if !self.all_replayed(&lsn).await {
                break;
            }
            let r = self.redo.remove(0);
            due.keys.extend(r.keys);
            due.deps.extend(r.deps);
        }
        due
    }

    async fn all_replayed(&mut self, lsn: &str) -> bool {
        for r in &mut self.replicas {
            if r.replayed(lsn).await != Some(true) {
                return false;
            }
        }
        true
    }
}

/// Deletions to apply again.
#[derive(Debug, Default)]
pub(crate) struct Due {
    pub(crate) keys: Vec<String>,
    pub(crate) deps: Vec<DepId>,
    pub(crate) drop_all: bool,
}

impl Replica {
    /// `Some(true)` once replayed past `lsn`; `None` when unreachable.
    async fn replayed(&mut self, lsn: &str) -> Option<bool> {
        if self.client.as_ref().is_none_or(Client::is_closed) {
            match pg::connect(&self.target).await {
                Ok(s) => self.client = Some(s.client),
                Err(e) => {
                    warn!(replica = %self.name, error = %e, "replica unreachable");
                    self.client = None;
                    return None;
                }
            }
        }
        let client = self.client.as_ref()?;
        match client
            .query_one(
                "SELECT coalesce(pg_last_wal_replay_lsn() >= $1::text::pg_lsn, true)",
                &[&lsn],
            )
            .await
        {
            Ok(row) => Some(row.get(0)),
            Err(e) => {
                warn!(replica = %self.name, error = %pg::chain(&e), "replica unreachable");
                self.client = None;
                None
            }
        }
    }
}
