//! The daemon: drain the outbox into Redis, sleep until the doorbell or the
//! poll timer, repeat; reconnect when PostgreSQL goes away, back off while
//! Redis is down. Nothing is deleted from the outbox before Redis has
//! applied it, so every failure ends in a replay, never a loss.

use crate::catalog;
use crate::config::{Config, ConfigError};
use crate::mapping::{truncation_targets, Work};
use crate::outbox::{self, CLAIM_SQL, DEAD_LETTER_SQL};
use crate::pg;
use crate::schema;
use crate::shutdown::Shutdown;
use redis::aio::ConnectionManager;
use smartcache::invalidate::invalidate;
use smartcache::keys::DepId;
use std::future::Future;
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio_postgres::{Client, Statement};
use tracing::{debug, info, warn};

const MAX_BACKOFF: Duration = Duration::from_secs(5);

/// Runs the daemon until `shutdown` completes. The batch in hand is
/// finished first; whatever is not applied stays in the outbox for the
/// next start.
///
/// ```no_run
/// # async fn demo() -> anyhow::Result<()> {
/// use smartcache_invalidator::config::{Config, Overrides};
/// let config = Config::load(None, &Overrides::default())?;
/// smartcache_invalidator::run(config, async { tokio::signal::ctrl_c().await.ok(); }).await
/// # }
/// ```
pub async fn run(
    config: Config,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> anyhow::Result<()> {
    let stop = Shutdown::new(shutdown);
    let daemon = Daemon::new(config)?;
    daemon.run(stop).await
}

/// First wait after activity before looking at the outbox again.
const QUICK_LOOK: Duration = Duration::from_millis(1);

/// Under load, a batch smaller than this is followed by a [`COALESCE`]
/// pause.
const COALESCE_BELOW: u64 = 64;
const COALESCE: Duration = Duration::from_millis(1);

/// What one drain did.
#[derive(Debug, Default)]
struct Drained {
    applied: u64,
    marked_busy: bool,
}

/// Why a batch failed; decides between backing off and reconnecting.
#[derive(Debug, thiserror::Error)]
enum BatchError {
    #[error("Redis: {0}")]
    Redis(#[from] redis::RedisError),
    #[error("PostgreSQL: {0}")]
    Postgres(#[from] tokio_postgres::Error),
}

struct Daemon {
    config: Arc<Config>,
    pg_config: tokio_postgres::Config,
    redis: ConnectionManager,
}

/// Statements of the hot path, prepared once per connection.
struct Statements {
    claim: Statement,
    dead_letter: Statement,
    busy: Statement,
    idle: Statement,
}

impl Statements {
    async fn prepare(client: &Client) -> Result<Self, tokio_postgres::Error> {
        Ok(Self {
            claim: client.prepare(CLAIM_SQL).await?,
            dead_letter: client.prepare(DEAD_LETTER_SQL).await?,
            busy: client
                .prepare("UPDATE smartcache.wakeup SET idle = false WHERE idle")
                .await?,
            idle: client
                .prepare("UPDATE smartcache.wakeup SET idle = true WHERE NOT idle")
                .await?,
        })
    }
}

impl Daemon {
    fn new(config: Config) -> anyhow::Result<Self> {
        let pg_config = pg::config(&config.database_url).map_err(|e| {
            ConfigError(format!("{}: setting `database_url`: {e}", config.origin()))
        })?;
        let client = redis::Client::open(config.redis_url.as_str())
            .map_err(|e| ConfigError(format!("{}: setting `redis_url`: {e}", config.origin())))?;
        let manager_config = redis::aio::ConnectionManagerConfig::new()
            .set_connection_timeout(Some(Duration::from_secs(2)))
            .set_response_timeout(Some(Duration::from_secs(30)))
            .set_number_of_retries(1)
            .set_max_delay(Duration::from_millis(500));
        let redis = ConnectionManager::new_lazy_with_config(client, manager_config)?;
        Ok(Self {
            config: Arc::new(config),
            pg_config,
            redis,
        })
    }

    async fn run(mut self, mut stop: Shutdown) -> anyhow::Result<()> {
        let mut backoff = Backoff::default();
        let mut validated = false;
        while !stop.is_set() {
            let session = match pg::connect(&self.pg_config).await {
                Ok(s) => s,
                Err(e) => {
                    warn!(error = %e, "cannot connect to PostgreSQL; retrying");
                    backoff.sleep(&mut stop).await;
                    continue;
                }
            };
            if !validated {
                self.validate(&session.client).await?;
                validated = true;
            }
            match self.session(session, &mut stop, &mut backoff).await {
                Ok(()) => break,
                Err(e) => {
                    warn!(error = %e, "PostgreSQL session lost; reconnecting and replaying the outbox");
                    backoff.sleep(&mut stop).await;
                }
            }
        }
        info!("stopped");
        Ok(())
    }

    /// Checks, once, that the config matches the database; a mismatch is
    /// a configuration error, drift in the triggers only a warning.
    async fn validate(&self, client: &Client) -> anyhow::Result<()> {
        let tables = catalog::resolve(client, &self.config).await?;
        let installed = schema::inspect(client).await?;
        if installed.version.is_none() {
            return Err(ConfigError(
                "smartcache is not installed in this database; run `smartcache-invalidator install` first"
                    .to_owned(),
            )
            .into());
        }
        for problem in schema::drift(&installed, &tables, &self.config.channel) {
            warn!(%problem, "installed triggers differ from the config; run `smartcache-invalidator install`");
        }
        Ok(())
    }

    /// One PostgreSQL connection's life: LISTEN, drain, wait, drain…
    async fn session(
        &mut self,
        session: pg::Session,
        stop: &mut Shutdown,
        backoff: &mut Backoff,
    ) -> anyhow::Result<()> {
        let pg::Session {
            mut client,
            doorbell,
            mut driver,
        } = session;
        // A lost outbox DELETE only replays an idempotent invalidation, so
        // our own commits need not wait for the WAL flush.
        client
            .batch_execute(&format!(
                "SET synchronous_commit = off; LISTEN {}",
                crate::sql::ident(&self.config.channel)
            ))
            .await?;
        let st = Statements::prepare(&client).await?;
        info!(channel = %self.config.channel, "listening; draining the outbox");
        backoff.reset();
        // After activity, look again soon: a writer whose trigger saw
        // `idle = false` just before we went idle committed without
        // ringing. The wait doubles up to the poll interval.
        let mut next_look = QUICK_LOOK;
        loop {
            let drained = self.drain(&mut client, &st, stop).await?;
            if drained.marked_busy {
                client.execute(&st.idle, &[]).await?;
            }
            if stop.is_set() {
                // Nobody listens now: writers should not ring.
                client.execute(&st.busy, &[]).await?;
                return Ok(());
            }
            if drained.applied > 0 {
                next_look = QUICK_LOOK;
            }
            let wait = next_look.min(self.config.poll_interval);
            next_look = (next_look * 2).min(self.config.poll_interval);
            tokio::select! {
                _ = stop.wait() => {
                    client.execute(&st.busy, &[]).await?;
                    return Ok(());
                }
                _ = doorbell.notified() => {}
                _ = tokio::time::sleep(wait) => {}
                end = &mut driver => {
                    return Err(match end {
                        Ok(Err(e)) => e.into(),
                        _ => anyhow::anyhow!("PostgreSQL closed the connection"),
                    });
                }
            }
        }
    }

    /// Applies batches until the outbox is empty or shutdown is asked for.
    /// Redis failures back off here, keeping the rows; PostgreSQL failures
    /// end the session.
    async fn drain(
        &mut self,
        client: &mut Client,
        st: &Statements,
        stop: &mut Shutdown,
    ) -> Result<Drained, tokio_postgres::Error> {
        let mut drained = Drained::default();
        let mut backoff = Backoff::default();
        let mut batches = 0;
        while !stop.is_set() {
            match self.batch(client, st).await {
                Ok(0) => break,
                Ok(n) => {
                    drained.applied += n;
                    batches += 1;
                    backoff.reset();
                    // Rows arrived while we worked: sustained load. Ask
                    // writers to stop ringing so their commits don't
                    // serialise on the notify queue.
                    if batches == 2 {
                        client.execute(&st.busy, &[]).await?;
                        drained.marked_busy = true;
                    }
                    // Under load, let a small batch grow for a moment:
                    // per-batch costs (round trips, commit) then spread
                    // over more rows.
                    if drained.marked_busy && n < COALESCE_BELOW {
                        tokio::select! {
                            _ = stop.wait() => {}
                            _ = tokio::time::sleep(COALESCE) => {}
                        }
                    }
                }
                Err(BatchError::Redis(e)) => {
                    warn!(error = %e, "Redis unavailable; outbox rows kept, retrying");
                    backoff.sleep(stop).await;
                }
                Err(BatchError::Postgres(e)) => return Err(e),
            }
        }
        Ok(drained)
    }

    /// Claims up to `batch_size` rows, deletes their keys in Redis, then
    /// deletes the rows, all in one transaction.
    async fn batch(&mut self, client: &mut Client, st: &Statements) -> Result<u64, BatchError> {
        let started = Instant::now();
        let tx = client.transaction().await?;
        let limit = self.config.batch_size as i64;
        let rows = tx.query(&st.claim, &[&limit]).await?;
        if rows.is_empty() {
            tx.rollback().await?;
            return Ok(0);
        }
        let mut work = Work::default();
        let mut dead = Vec::new();
        for row in &rows {
            match outbox::parse(row) {
                Ok(event) => work.add(&self.config, &event),
                Err(d) => dead.push(d),
            }
        }
        let (keys, deps) = self.expand(work).await?;
        let deleted = invalidate(&mut self.redis, &self.config.namespace, &keys, &deps).await?;
        for d in &dead {
            warn!(outbox_id = d.id, error = %d.error, "unreadable outbox row moved to smartcache.dead_letter");
            tx.execute(&st.dead_letter, &[&d.id, &d.event, &d.error])
                .await?;
        }
        tx.commit().await?;
        debug!(
            events = rows.len(),
            keys = keys.len(),
            dep_sets = deps.len(),
            deleted,
            elapsed_us = started.elapsed().as_micros() as u64,
            "batch applied"
        );
        Ok(rows.len() as u64)
    }

    /// Turns truncations into the keys and dependency sets that exist now.
    async fn expand(&mut self, work: Work) -> Result<(Vec<String>, Vec<DepId>), BatchError> {
        let mut keys: Vec<String> = work.keys.into_iter().collect();
        let mut deps: Vec<DepId> = work.deps.into_iter().collect();
        for table in &work.truncated {
            let (k, d) = truncation_targets(&mut self.redis, &self.config, table).await?;
            keys.extend(k);
            deps.extend(d);
        }
        Ok((keys, deps))
    }
}

/// Capped exponential backoff that shutdown interrupts.
#[derive(Debug)]
struct Backoff {
    next: Duration,
}

impl Default for Backoff {
    fn default() -> Self {
        Self {
            next: Duration::from_millis(50),
        }
    }
}

impl Backoff {
    fn reset(&mut self) {
        *self = Self::default();
    }

    async fn sleep(&mut self, stop: &mut Shutdown) {
        let wait = self.next;
        self.next = (self.next * 2).min(MAX_BACKOFF);
        tokio::select! {
            _ = stop.wait() => {}
            _ = tokio::time::sleep(wait) => {}
        }
    }
}
