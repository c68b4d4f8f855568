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
use crate::telemetry::{self, Telemetry};
use smartcache_core::conn::Conn;
use smartcache_core::invalidate::invalidate;
use smartcache_core::keys::DepId;
use std::future::Future;
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::sync::Notify;
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
    if let Some(addr) = daemon.config.metrics_addr {
        let mut s = stop.clone();
        let server = telemetry::serve(
            addr,
            daemon.telemetry.clone(),
            async move { s.wait().await },
        );
        let server = tokio::spawn(server);
        // A port that cannot be bound is a configuration error, not
        // something to find out from a missing scrape.
        tokio::time::sleep(Duration::from_millis(50)).await;
        if server.is_finished() {
            let e = server
                .await?
                .err()
                .map(|e| e.to_string())
                .unwrap_or_default();
            return Err(ConfigError(format!("cannot serve /metrics on {addr}: {e}")).into());
        }
    }
    let canary = daemon.config.canary_interval.map(|every| {
        tokio::spawn(crate::canary::run(
            daemon.config.clone(),
            daemon.pg_config.clone(),
            daemon.redis.clone(),
            daemon.telemetry.clone(),
            daemon.canary_stalled.clone(),
            every,
            stop.clone(),
        ))
    });
    tokio::spawn(crate::markers::run(
        daemon.config.namespace.clone(),
        daemon.redis.clone(),
        daemon.telemetry.clone(),
        stop.clone(),
    ));
    if let Some(every) = daemon.config.sweep_interval {
        tokio::spawn(crate::sweep::run(
            daemon.config.namespace.clone(),
            daemon.redis.clone(),
            daemon.telemetry.clone(),
            every,
            stop.clone(),
        ));
    }
    let result = daemon.run(stop).await;
    if let Some(canary) = canary {
        // It removes its heartbeat row on the way out.
        let _ = tokio::time::timeout(Duration::from_secs(5), canary).await;
    }
    result
}

/// Longest a batch may take before the session is considered stuck (a
/// silently dead connection) and replaced.
const BATCH_TIMEOUT: Duration = Duration::from_secs(120);

/// First wait after activity before looking at the outbox again.
const QUICK_LOOK: Duration = Duration::from_millis(1);

/// Under load, a batch of [`COALESCE_FROM`] up to this many rows is
/// followed by a [`COALESCE`] pause.
const COALESCE_BELOW: u64 = 64;
/// Batches of fewer rows mean a trickle (≲ a few thousand commits/s):
/// the pause would then be most of each row's latency for little saving.
const COALESCE_FROM: u64 = 4;
const COALESCE: Duration = Duration::from_millis(1);
/// A batch of at least this many rows marks the daemon busy.
const BUSY_FROM: u64 = 2;

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
    redis: Conn,
    telemetry: Arc<Telemetry>,
    /// Rung by the canary when a heartbeat was not invalidated in time.
    canary_stalled: Arc<Notify>,
}

/// Statements of the hot path, prepared once per connection.
struct Statements {
    claim: Statement,
    dead_letter: Statement,
    busy: Statement,
    idle: Statement,
    backlog: Statement,
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
            backlog: client
                .prepare("SELECT coalesce(max(id) - min(id) + 1, 0) FROM smartcache.outbox")
                .await?,
        })
    }
}

impl Daemon {
    fn new(config: Config) -> anyhow::Result<Self> {
        let pg_config = pg::config(&config)?;
        let redis = crate::redis_ops::connect(&config)?;
        Ok(Self {
            config: Arc::new(config),
            pg_config,
            redis,
            telemetry: Arc::new(Telemetry::new()),
            canary_stalled: Arc::new(Notify::new()),
        })
    }

    async fn run(mut self, mut stop: Shutdown) -> anyhow::Result<()> {
        let mut backoff = Backoff::default();
        let mut validated = false;
        let mut sessions = 0u64;
        while !stop.is_set() {
            let session = match pg::connect(&self.pg_config).await {
                Ok(s) => s,
                Err(e) => {
                    warn!(error = %e, "cannot connect to PostgreSQL; retrying");
                    self.telemetry.error("postgres", &e);
                    backoff.sleep(&mut stop).await;
                    continue;
                }
            };
            if !validated {
                // A connection lost while checking (a server restarting
                // under us) is retried like any other; a mismatch is not.
                if let Err(e) = self.validate(&session.client).await {
                    if !lost_connection(&e) {
                        return Err(e);
                    }
                    warn!(error = %e, "PostgreSQL connection lost while checking the config; retrying");
                    backoff.sleep(&mut stop).await;
                    continue;
                }
                validated = true;
                match crate::redis_ops::problems(&mut self.redis).await {
                    Ok((policy, problems)) => {
                        for problem in problems {
                            tracing::error!(%policy, "{problem}");
                        }
                    }
                    Err(e) => {
                        warn!(error = %e, "Redis unreachable at start; retrying as changes arrive")
                    }
                }
            }
            sessions += 1;
            if sessions > 1 {
                self.telemetry.reconnects.inc();
            }
            self.telemetry.set_pg_up(true);
            let result = self.session(session, &mut stop, &mut backoff).await;
            self.telemetry.set_pg_up(false);
            match result {
                Ok(()) => break,
                Err(e) => {
                    warn!(error = %e, "PostgreSQL session lost; reconnecting and replaying the outbox");
                    self.telemetry.error("postgres", &e);
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
        let mut backlog_sampled = Instant::now() - Duration::from_secs(1);
        loop {
            let drained = self.drain(&mut client, &st, stop).await?;
            if drained.marked_busy {
                client.execute(&st.idle, &[]).await?;
            }
            if backlog_sampled.elapsed() >= Duration::from_secs(1) {
                let backlog: i64 = client.query_one(&st.backlog, &[]).await?.get(0);
                self.telemetry.backlog.set(backlog);
                backlog_sampled = Instant::now();
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
                // Round the loop: the drain sees the stop, the check above ends the session.
                _ = stop.wait() => {}
                _ = doorbell.notified() => {}
                _ = tokio::time::sleep(wait) => {}
                _ = self.canary_stalled.notified() => {
                    return Err(anyhow::anyhow!("canary stalled: a heartbeat change was not invalidated in time"));
                }
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
    ) -> anyhow::Result<Drained> {
        let mut drained = Drained::default();
        let mut backoff = Backoff::default();
        while !stop.is_set() {
            let stalled = self.canary_stalled.clone();
            let batch = tokio::select! {
                batch = tokio::time::timeout(BATCH_TIMEOUT, self.batch(client, st)) => batch,
                _ = stalled.notified() => {
                    anyhow::bail!("canary stalled during a batch; replacing the PostgreSQL connection");
                }
            };
            let result = match batch {
                Ok(result) => result,
                Err(_) => {
                    // Ending the session drops the connection: the claimed
                    // rows roll back and are replayed on the next one.
                    anyhow::bail!(
                        "a batch took longer than {BATCH_TIMEOUT:?}; replacing the PostgreSQL connection"
                    );
                }
            };
            match result {
                Ok(0) => break,
                Ok(n) => {
                    drained.applied += n;
                    backoff.reset();
                    // Several rows arrived within one batch cycle: a write
                    // rate at which NOTIFYs would start to serialise
                    // commits. Ask writers to stop ringing. A trickle (a
                    // row or two per batch) keeps ringing, for latency.
                    if !drained.marked_busy && n >= BUSY_FROM {
                        client.execute(&st.busy, &[]).await?;
                        drained.marked_busy = true;
                    }
                    // A trickle: the short batch emptied the queue as of its
                    // claim, and writers ring for what comes next, so skip
                    // the empty claim. Under load keep claiming until the
                    // queue is empty: going idle would make writers ring.
                    if !drained.marked_busy && n < self.config.batch_size as u64 {
                        break;
                    }
                    // Under load, let a small batch grow for a moment:
                    // per-batch costs (round trips, commit) then spread
                    // over more rows.
                    if drained.marked_busy && (COALESCE_FROM..COALESCE_BELOW).contains(&n) {
                        tokio::select! {
                            _ = stop.wait() => {}
                            _ = tokio::time::sleep(COALESCE) => {}
                        }
                    }
                }
                Err(BatchError::Redis(e)) => {
                    warn!(error = %e, "Redis unavailable; outbox rows kept, retrying");
                    self.telemetry.set_redis_up(false);
                    self.telemetry.error("redis", &e);
                    backoff.sleep(stop).await;
                }
                Err(BatchError::Postgres(e)) => return Err(e.into()),
            }
        }
        Ok(drained)
    }

    /// Claims up to `batch_size` rows, deletes their keys in Redis, then
    /// deletes the rows, all in one transaction.
    async fn batch(&mut self, client: &mut Client, st: &Statements) -> Result<u64, BatchError> {
        let started = Instant::now();
        let limit = self.config.batch_size as i64;
        // BEGIN and the claim travel together: one round trip. `join`
        // polls BEGIN first, so it is sent first: the claim must never run
        // outside the transaction. A PostgreSQL error ends the session, and
        // with it the transaction; only a Redis error needs the explicit
        // ROLLBACK below.
        let params: [&(dyn tokio_postgres::types::ToSql + Sync); 1] = [&limit];
        let (begin, rows) = futures_util::future::join(
            client.batch_execute("BEGIN"),
            client.query(&st.claim, &params),
        )
        .await;
        begin?;
        let rows = rows?;
        if rows.is_empty() {
            client.batch_execute("ROLLBACK").await?;
            return Ok(0);
        }
        let mut work = Work::default();
        let mut dead = Vec::new();
        let mut ages = Vec::with_capacity(rows.len());
        for row in &rows {
            ages.push(row.get::<_, Option<f64>>(8).unwrap_or(0.0));
            match outbox::parse(row) {
                Ok(event) => work.add(&self.config, &event),
                Err(d) => dead.push(d),
            }
        }
        let applied = match self.expand(work).await {
            Ok((keys, deps)) => invalidate(&mut self.redis, &self.config.namespace, &keys, &deps)
                .await
                .map(|deleted| (keys, deps, deleted)),
            Err(e) => Err(e),
        };
        let (keys, deps, deleted) = match applied {
            Ok(done) => done,
            Err(e) => {
                // The rows go back to the queue.
                client.batch_execute("ROLLBACK").await?;
                return Err(e.into());
            }
        };
        self.telemetry.set_redis_up(true);
        let since_claim = started.elapsed().as_secs_f64();
        let lag_min = ages.iter().copied().fold(f64::INFINITY, f64::min) + since_claim;
        let lag_max = ages.iter().copied().fold(0.0, f64::max) + since_claim;
        for age in ages {
            self.telemetry.lag.observe(age + since_claim);
        }
        for d in &dead {
            warn!(outbox_id = d.id, error = %d.error, "unreadable outbox row moved to smartcache.dead_letter");
            self.telemetry.error("dead_letter", &d.error);
            client
                .execute(&st.dead_letter, &[&d.id, &d.event, &d.error])
                .await?;
        }
        client.batch_execute("COMMIT").await?;
        let summary = crate::recent::Batch::new(rows.len() as u64, deleted, lag_min, lag_max);
        crate::recent::record(&self.redis, &self.config.namespace, summary);
        self.telemetry.events.inc_by(rows.len() as u64);
        self.telemetry.keys_deleted.inc_by(deleted);
        self.telemetry.batch_size.observe(rows.len() as f64);
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
    async fn expand(&mut self, work: Work) -> redis::RedisResult<(Vec<String>, Vec<DepId>)> {
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

/// Whether `e` is the connection going away rather than an answer from
/// the server.
fn lost_connection(e: &anyhow::Error) -> bool {
    e.chain()
        .filter_map(|c| c.downcast_ref::<tokio_postgres::Error>())
        .any(|pe| {
            pe.is_closed()
                || pe
                    .as_db_error()
                    .is_none_or(|db| db.code().code().starts_with("57"))
        })
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
