//! The daemon: drain the outbox into Redis, wait for the doorbell or the
//! poll timer, repeat; reconnect when PostgreSQL goes away, back off while
//! Redis is down. Nothing is deleted from the outbox before Redis has
//! applied it, so every failure ends in a replay, never a loss.

use crate::claim::{self, Cursor, Snapshot};
use crate::config::{Config, ConfigError};
use crate::doorbell::Doorbell;
use crate::mapping::{self, Work};
use crate::outbox::{self, DEAD_LETTER_SQL};
use crate::pg;
use crate::pooling::{self, Mode, Stmt};
use crate::replicas::Replicas;
use crate::schema;
use crate::shutdown::Shutdown;
use crate::telemetry::{self, Telemetry};
use crate::time_travel::{self, Generations, Regressed};
use futures_util::future::BoxFuture;
use smartcache_core::conn::Conn;
use smartcache_core::invalidate::invalidate;
use smartcache_core::keys::DepId;
use smartcache_core::markers;
use std::future::Future;
use std::sync::atomic::AtomicU8;
use std::sync::atomic::{AtomicI32, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::sync::Notify;
use tokio_postgres::Client;
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
    let monitor = tokio::spawn(crate::monitor::run(
        crate::monitor::Shared {
            config: daemon.config.clone(),
            pg_config: daemon.pg_config.clone(),
            redis: daemon.redis.clone(),
            telemetry: daemon.telemetry.clone(),
            stalled: daemon.canary_stalled.clone(),
            backend: daemon.backend.clone(),
            mode: daemon.mode.clone(),
        },
        stop.clone(),
    ));
    tokio::spawn(crate::markers::run(
        daemon.config.namespace.clone(),
        daemon.redis.clone(),
        daemon.telemetry.clone(),
        stop.clone(),
    ));
    tokio::spawn(crate::sweep::upgrade(
        daemon.config.namespace.clone(),
        daemon.redis.clone(),
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
    // It removes its heartbeat row on the way out.
    let _ = tokio::time::timeout(Duration::from_secs(5), monitor).await;
    result
}

/// How long the outbox must stay empty before the daemon asks writers to
/// ring again. Under a steady write rate rows keep coming within it, so
/// writers never ring (a NOTIFY serialises commits); after it, a single
/// commit is picked up by the doorbell at once.
const HOLD: Duration = Duration::from_millis(250);

/// While writers are asked not to ring: first look after activity, doubled
/// up to [`LOOK_MAX`] while nothing comes.
const LOOK_MIN: Duration = Duration::from_millis(1);
const LOOK_MAX: Duration = Duration::from_millis(32);

/// A batch of this many rows while writers ring means a write rate at
/// which NOTIFYs would start to serialise commits: ask them to stop.
const BUSY_FROM: usize = 2;

/// Keys and dependency sets gathered before a batch's rows are applied to
/// Redis: a statement over more rows goes in several steps.
const CHUNK: usize = 20_000;

/// What applying (part of) a batch did.
#[derive(Debug, Default)]
struct Applied {
    keys: usize,
    deps: usize,
    deleted: u64,
}

impl Applied {
    fn add(&mut self, other: Applied) {
        self.keys += other.keys;
        self.deps += other.deps;
        self.deleted += other.deleted;
    }
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
    pg_config: pg::Target,
    redis: Conn,
    telemetry: Arc<Telemetry>,
    /// Rung by the canary when a heartbeat was not invalidated in time.
    canary_stalled: Arc<Notify>,
    /// Backend pid of the current session (0: none), for the canary.
    backend: Arc<AtomicI32>,
    /// The generation keys bumped after each batch.
    generations: Generations,
    /// Replicas the applications read from.
    replicas: Replicas,
    /// Whether the session is pooled, for the monitor (see [`pooling::UNKNOWN`]).
    mode: Arc<AtomicU8>,
}

/// Statements of the hot path, prepared once per connection (unnamed
/// through transaction pooling, see [`crate::pooling`]).
struct Statements {
    begin: String,
    claim: Stmt,
    record: Stmt,
    dead_letter: Stmt,
    last_id: Stmt,
}

impl Statements {
    async fn prepare(
        client: &Client,
        config: &Config,
        pooled: bool,
    ) -> Result<Self, tokio_postgres::Error> {
        Ok(Self {
            begin: pooling::begin(pooled, &pg::session_settings(config)),
            claim: Stmt::new(client, &claim::claim_sql(), pooled).await?,
            record: Stmt::new(client, crate::time_travel::RECORD_SQL, pooled).await?,
            dead_letter: Stmt::new(client, DEAD_LETTER_SQL, pooled).await?,
            last_id: Stmt::new(
                client,
                "SELECT last_value FROM smartcache.outbox_id_seq",
                pooled,
            )
            .await?,
        })
    }
}

impl Daemon {
    fn new(config: Config) -> anyhow::Result<Self> {
        let pg_config = pg::target(&config)?;
        let redis = crate::redis_ops::connect(&config)?;
        let replicas = Replicas::new(&config.replica_urls, config.replica_wait)?;
        Ok(Self {
            config: Arc::new(config),
            pg_config,
            redis,
            telemetry: Arc::new(Telemetry::new()),
            canary_stalled: Arc::new(Notify::new()),
            backend: Arc::new(AtomicI32::new(0)),
            generations: Generations::new(),
            replicas,
            mode: Arc::new(AtomicU8::new(pooling::UNKNOWN)),
        })
    }

    async fn run(mut self, mut stop: Shutdown) -> anyhow::Result<()> {
        let mut backoff = Backoff::default();
        let mut validated = false;
        let mut sessions = 0u64;
        let mut previous: Option<i32> = None;
        while !stop.is_set() {
            let session = match pg::connect(&self.pg_config).await {
                Ok(s) => s,
                // Nothing but a changed setting helps a first connection
                // refused for its certificate, TLS or pg_hba.conf: exit (1)
                // and say so, rather than retry quietly for ever.
                Err(e) if e.permanent && sessions == 0 => return Err(e.into()),
                Err(e) => {
                    warn!(error = %e, "cannot connect to PostgreSQL; retrying");
                    self.telemetry.error("postgres", e.to_string());
                    backoff.sleep(&mut stop).await;
                    continue;
                }
            };
            let pooled = match pooling::detect(&session, &self.pg_config).await {
                Ok(mode) => self.report_mode(mode),
                Err(e) => {
                    warn!(error = %format!("{e:#}"), "PostgreSQL session lost while checking for a pooler; retrying");
                    backoff.sleep(&mut stop).await;
                    continue;
                }
            };
            if !validated {
                // A connection lost while checking (a server restarting
                // under us) is retried like any other; a mismatch is not.
                if let Err(e) = self.validate(&session.client, pooled).await {
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
                        let cause = crate::redis_ops::explain_failure(&self.config, &e).await;
                        warn!(error = %e, %cause, "Redis unreachable at start; retrying as changes arrive")
                    }
                }
            }
            sessions += 1;
            if sessions > 1 {
                self.telemetry.reconnects.inc();
            }
            let result = self
                .session(session, pooled, &mut previous, &mut stop, &mut backoff)
                .await;
            self.telemetry.set_pg_up(false);
            self.backend.store(0, Ordering::Relaxed);
            match result {
                Ok(()) => break,
                Err(e) => {
                    warn!(error = %format!("{e:#}"), "PostgreSQL session lost; reconnecting and replaying the outbox");
                    self.telemetry.error("postgres", format!("{e:#}"));
                    backoff.sleep(&mut stop).await;
                }
            }
        }
        info!("stopped");
        Ok(())
    }

    /// Logs and shows what [`pooling::detect`] found when it changes;
    /// returns whether the session is pooled.
    fn report_mode(&self, mode: Mode) -> bool {
        let pooled = matches!(mode, Mode::Pooled(_));
        let code = if pooled {
            pooling::POOLED
        } else {
            pooling::SESSION
        };
        if self.mode.swap(code, Ordering::Relaxed) != code {
            match &mode {
                Mode::Session => info!("PostgreSQL session of its own: LISTEN for the doorbell"),
                Mode::Pooled(reason) => warn!(
                    reason = %reason,
                    poll_interval_ms = self.config.poll_interval.as_millis() as u64,
                    "transaction pooling detected (e.g. PgBouncer pool_mode = transaction): LISTEN cannot work, \
                     polling the outbox every poll_interval_ms instead; point database_url at session pooling \
                     or the server for invalidation within milliseconds"
                ),
            }
        }
        self.telemetry.set_pooled(match mode {
            Mode::Session => None,
            Mode::Pooled(reason) => Some(reason),
        });
        pooled
    }

    /// Checks, once, that smartcache is installed; how well capture matches
    /// the config is the monitor's job, reported while running.
    async fn validate(&self, client: &Client, pooled: bool) -> anyhow::Result<()> {
        // One backend for the statements and their prepare/close.
        if pooled {
            client.batch_execute("BEGIN").await?;
        }
        let installed = schema::inspect(client).await;
        if pooled {
            client.batch_execute("COMMIT").await?;
        }
        let installed = installed?;
        match installed.version {
            None => Err(ConfigError(
                "smartcache is not installed in this database; run `smartcache-invalidator install` first"
                    .to_owned(),
            )
            .into()),
            Some(v) if v != schema::SCHEMA_VERSION => Err(ConfigError(format!(
                "the database has smartcache schema version {v}, this binary needs {}; \
                 run `smartcache-invalidator install` with this binary to upgrade",
                schema::SCHEMA_VERSION
            ))
            .into()),
            Some(_) => Ok(()),
        }
    }

    /// One PostgreSQL connection's life: drain, wait, drain…
    async fn session(
        &mut self,
        session: pg::Session,
        pooled: bool,
        previous: &mut Option<i32>,
        stop: &mut Shutdown,
        backoff: &mut Backoff,
    ) -> anyhow::Result<()> {
        let pg::Session {
            mut client,
            doorbell: rung,
            notifications,
            mut driver,
        } = session;
        let pid =
            pg::prepare_daemon_session(&client, &self.config, previous.take(), pooled).await?;
        *previous = (!pooled).then_some(pid);
        self.backend.store(pid, Ordering::Relaxed);
        self.telemetry.set_pg_up(true);
        let st = Statements::prepare(&client, &self.config, pooled).await?;
        // Through transaction pooling nobody would hear a ring: writers
        // are never asked to.
        let mut bell = if pooled {
            info!("polling; draining the outbox");
            None
        } else {
            info!(channel = %self.config.channel, backend = pid, "listening; draining the outbox");
            Some(Doorbell::prepare(&client).await?)
        };
        backoff.reset();
        let mut cursor = Cursor::new(self.config.full_scan_interval);
        let mut last_rows: Option<Instant> = None;
        let mut look = LOOK_MIN;
        let mut backlog_sampled = Instant::now() - Duration::from_secs(1);
        loop {
            let n = self.drain(&mut client, &st, &mut cursor, stop).await?;
            if stop.is_set() {
                // Nobody listens now: writers should not ring.
                if let Some(bell) = bell.as_mut() {
                    bell.quiet(&client).await?;
                }
                return Ok(());
            }
            if n > 0 {
                last_rows = Some(Instant::now());
                look = LOOK_MIN;
            }
            if let Err(e) = self.repay().await {
                warn!(error = %e, "Redis unavailable while applying deletions owed to replicas; retrying");
            }
            if backlog_sampled.elapsed() >= Duration::from_secs(1) {
                let last: i64 = st
                    .last_id
                    .query(&client, &[])
                    .await?
                    .first()
                    .map_or(0, |r| r.get(0));
                self.telemetry
                    .backlog
                    .set((last - cursor.position()).max(0));
                backlog_sampled = Instant::now();
            }
            let idle = last_rows.is_none_or(|t| t.elapsed() >= HOLD);
            if let Some(bell) = bell.as_mut() {
                if bell.ringing() && n >= BUSY_FROM {
                    bell.quiet(&client).await?;
                } else if !bell.ringing() && idle {
                    // Writers that captured just before this see "quiet" and
                    // commit without ringing: look once more right away.
                    bell.ring(&client).await?;
                    continue;
                } else if bell.ringing() {
                    bell.renew_if_due(&client).await?;
                }
            }
            let wait = match &bell {
                Some(bell) if bell.ringing() => self.config.poll_interval.min(bell.renew_in()),
                None if idle => self.config.poll_interval,
                _ => {
                    let wait = look;
                    look = (look * 2).min(LOOK_MAX);
                    wait
                }
            };
            tokio::select! {
                // Round the loop: the drain sees the stop, the check above ends the session.
                _ = stop.wait() => {}
                _ = rung.notified() => {
                    let taken: Vec<_> = notifications.lock().expect("not poisoned").drain(..).collect();
                    self.early(taken, &cursor).await;
                }
                _ = tokio::time::sleep(wait) => {}
                _ = self.canary_stalled.notified() => {
                    return Err(anyhow::anyhow!("canary stalled: a heartbeat change was not invalidated in time"));
                }
                end = &mut driver => {
                    return Err(match end {
                        Ok(Err(e)) => anyhow::Error::new(e).context("PostgreSQL connection failed"),
                        _ => anyhow::anyhow!("PostgreSQL closed the connection"),
                    });
                }
            }
        }
    }

    /// Applies batches until a claim comes back short (the queue is empty
    /// as of its snapshot) or shutdown is asked for; returns the rows
    /// applied. Redis failures back off here, keeping the rows; PostgreSQL
    /// failures end the session.
    async fn drain(
        &mut self,
        client: &mut Client,
        st: &Statements,
        cursor: &mut Cursor,
        stop: &mut Shutdown,
    ) -> anyhow::Result<usize> {
        let mut applied = 0;
        let mut backoff = Backoff::default();
        while !stop.is_set() {
            let stalled = self.canary_stalled.clone();
            let result = tokio::select! {
                result = self.batch(client, st, cursor) => result,
                _ = stalled.notified() => {
                    anyhow::bail!("canary stalled during a batch; replacing the PostgreSQL connection");
                }
            };
            match result {
                Ok((n, more)) => {
                    applied += n;
                    backoff.reset();
                    if !more {
                        break;
                    }
                }
                Err(BatchError::Redis(e)) => {
                    let cause = smartcache_core::diagnose::cause(
                        &e,
                        self.config.redis_url.starts_with("rediss"),
                        &crate::redis_ops::options(&self.config),
                        &smartcache_core::diagnose::Settings::CONFIG,
                    );
                    warn!(error = %e, cause = cause.as_deref().unwrap_or("-"), "Redis unavailable; outbox rows kept, retrying");
                    self.telemetry.set_redis_up(false);
                    self.telemetry.error("redis", &e);
                    backoff.sleep(stop).await;
                }
                Err(BatchError::Postgres(e)) => {
                    return Err(anyhow::Error::new(e).context("claiming outbox rows"))
                }
            }
        }
        Ok(applied)
    }

    /// Claims up to `batch_size` rows, deletes their keys in Redis, then
    /// deletes the rows, all in one transaction. Returns the rows applied
    /// and whether more may be waiting.
    async fn batch(
        &mut self,
        client: &mut Client,
        st: &Statements,
        cursor: &mut Cursor,
    ) -> Result<(usize, bool), BatchError> {
        let started = Instant::now();
        let limit = self.config.batch_size as i64;
        let plan = cursor.plan();
        // BEGIN and the claim travel together: one round trip. `join`
        // polls BEGIN first, so it is sent first: the claim must never run
        // outside the transaction. A PostgreSQL error ends the session, and
        // with it the transaction; only a Redis error needs the explicit
        // ROLLBACK below.
        let params: [&(dyn tokio_postgres::types::ToSql + Sync); 4] =
            [&plan.lo, &plan.hi, &plan.cursor, &limit];
        let (begin, rows) = futures_util::future::join(
            client.batch_execute(&st.begin),
            st.claim.query(client, &params),
        )
        .await;
        begin?;
        let rows = rows?;
        let claimed_at = started.elapsed();
        let snapshot = rows
            .first()
            .and_then(|r| Snapshot::parse(r.get::<_, &str>(0)))
            .unwrap_or_default();
        let lsn: String = rows.first().map(|r| r.get(1)).unwrap_or_default();
        let claimed: Vec<&tokio_postgres::Row> = rows
            .iter()
            .filter(|r| r.get::<_, Option<i64>>(2).is_some())
            .collect();
        let ids: Vec<i64> = claimed.iter().map(|r| r.get(2)).collect();
        if claimed.is_empty() {
            client.batch_execute("COMMIT").await?;
            cursor.claimed(plan, snapshot, &ids, self.config.batch_size, None);
            return Ok((0, false));
        }
        // The deletions and the generation increment that vouches for them
        // must reach one server; a Sentinel failover may move the
        // connection between them (see `Conn::epoch`).
        let epoch = self.redis.epoch();
        // Replicas first: a fill that reads one after our deletion must see
        // these changes.
        let mut owed = None;
        if self.replicas.any() {
            let behind = self
                .replicas
                .wait_for(&lsn, client, self.config.pg_timeout / 4)
                .await?;
            if !behind.is_empty() {
                warn!(replicas = ?behind, "applying a batch before every replica replayed it; it is applied again once they have");
                owed = Some((Vec::new(), Vec::new()));
            }
        }
        let config = self.config.clone();
        let mut work = Work::default();
        let mut done = Applied::default();
        let mut dead = Vec::new();
        let mut ages = Vec::with_capacity(claimed.len());
        let mut changed = 0u64;
        let keepalive = self.config.pg_timeout / 4;
        let mut inflight: Option<BoxFuture<'static, redis::RedisResult<Applied>>> = None;
        for row in &claimed {
            let event = match outbox::parse(row, 2) {
                Ok(event) => event,
                Err(d) => {
                    dead.push(d);
                    continue;
                }
            };
            ages.push(event.age);
            changed += event.changed as u64;
            if !event.broken.is_empty() {
                self.telemetry.degraded(&event.table, &event.broken);
            }
            let rows = work.begin(&config, &event);
            for image in event.rows() {
                match image {
                    Ok(image) => work.add_row(&rows, &image),
                    Err(e) => {
                        dead.push(outbox::dead_letter(row, 2, e));
                        break;
                    }
                }
                // A statement over many rows is applied in chunks: memory
                // stays bounded, and Redis deletes one chunk while the next
                // is read (at most one in flight).
                if work.len() >= CHUNK {
                    let (keys, deps) = work.take_rows();
                    if let Some((k, d)) = owed.as_mut() {
                        k.extend(keys.iter().cloned());
                        d.extend(deps.iter().cloned());
                    }
                    if let Some(previous) = inflight.take() {
                        match with_keepalive(client, keepalive, previous).await? {
                            Ok(a) => done.add(a),
                            Err(e) => return self.give_back(client, cursor, &ids, e).await,
                        }
                    }
                    let mut next = apply_chunk(
                        self.redis.clone(),
                        config.namespace.clone(),
                        self.telemetry.clone(),
                        keys,
                        deps,
                    );
                    // Polled once, its commands are queued; the yield lets
                    // the connection write them before the CPU-bound
                    // reading of the next chunk.
                    match futures_util::poll!(&mut next) {
                        std::task::Poll::Ready(Ok(a)) => done.add(a),
                        std::task::Poll::Ready(Err(e)) => {
                            return self.give_back(client, cursor, &ids, e).await
                        }
                        std::task::Poll::Pending => {
                            inflight = Some(next);
                            tokio::task::yield_now().await;
                        }
                    }
                }
            }
        }
        if let Some(previous) = inflight.take() {
            match with_keepalive(client, keepalive, previous).await? {
                Ok(a) => done.add(a),
                Err(e) => return self.give_back(client, cursor, &ids, e).await,
            }
        }
        match with_keepalive(client, keepalive, self.apply(work, owed.as_mut())).await? {
            Ok(a) => done.add(a),
            Err(e) => return self.give_back(client, cursor, &ids, e).await,
        }
        let Applied {
            keys,
            deps,
            deleted,
        } = done;
        let applied_at = started.elapsed();
        // After the deletions: see `time_travel`.
        let ns = self.config.namespace.clone();
        let generations = match self.generations.keys(&self.redis, &ns).await {
            Ok(keys) => keys.to_vec(),
            Err(e) => return self.give_back(client, cursor, &ids, e).await,
        };
        let values = match markers::bump_generations(&mut self.redis, &generations).await {
            Ok(v) if self.redis.epoch() == epoch => v,
            Ok(_) => {
                let moved = redis::RedisError::from((
                    redis::ErrorKind::Io,
                    "the Redis primary changed during the batch (a failover); applying it again",
                ));
                return self.give_back(client, cursor, &ids, moved).await;
            }
            Err(e) => return self.give_back(client, cursor, &ids, e).await,
        };
        let regressed: Regressed = st
            .record
            .query(client, &[&ns.name(), &generations, &values])
            .await?
            .iter()
            .map(|r| (r.get(0), r.get(1)))
            .collect();
        self.telemetry.set_redis_up(true);
        let since_claim = started.elapsed().as_secs_f64();
        let lag_min = ages.iter().copied().fold(f64::INFINITY, f64::min) + since_claim;
        let lag_max = ages.iter().copied().fold(0.0, f64::max) + since_claim;
        for age in &ages {
            self.telemetry.lag.observe(age + since_claim);
        }
        for d in &dead {
            warn!(outbox_id = d.id, error = %d.error, "unreadable outbox row moved to smartcache.dead_letter");
            self.telemetry.error("dead_letter", &d.error);
            st.dead_letter
                .query(client, &[&d.id, &d.event, &d.error])
                .await?;
        }
        let committing_at = started.elapsed();
        let own = commit_with_xid(client).await?;
        cursor.claimed(plan, snapshot, &ids, self.config.batch_size, own);
        if let Some((keys, deps)) = owed {
            self.replicas.owe(&lsn, keys, deps);
        }
        if !regressed.is_empty() {
            let cause = format!(
                "a generation key of {} primary(ies) did not grow past the one recorded: Redis lost writes",
                regressed.len()
            );
            time_travel::recover(
                &mut self.redis,
                &ns,
                &self.telemetry,
                "redis",
                &cause,
                &regressed,
            )
            .await?;
        }
        let n = claimed.len();
        let summary = crate::recent::Batch::new(n as u64, deleted, lag_min, lag_max);
        crate::recent::record(&self.redis, &self.config.namespace, summary);
        self.telemetry.events.inc_by(n as u64);
        self.telemetry.rows.inc_by(changed);
        self.telemetry.keys_deleted.inc_by(deleted);
        self.telemetry.batch_size.observe(n as f64);
        debug!(
            events = n,
            keys,
            dep_sets = deps,
            deleted,
            lag_max_ms = (lag_max * 1000.0) as u64,
            plan = ?plan,
            claim_us = claimed_at.as_micros() as u64,
            redis_us = (applied_at - claimed_at).as_micros() as u64,
            commit_from_us = committing_at.as_micros() as u64,
            elapsed_us = started.elapsed().as_micros() as u64,
            "batch applied"
        );
        // A full claim, or a rescan stopped by its limit: more may wait.
        let hot = ids.iter().filter(|id| **id > plan.cursor).count();
        let more = hot.max(ids.len() - hot) >= self.config.batch_size;
        Ok((n, more))
    }

    /// Deletes the keys of the changes the doorbell's notifications carry
    /// (see `schema::capture_function_body`), before the claim: at rest
    /// that saves the claim's round trip. Only ever in addition to the
    /// claim, which applies the same rows again, so whatever is skipped
    /// here (junk anyone may NOTIFY, a truncation, a template that needs a
    /// scan, the canary, which must travel the outbox, rows already
    /// claimed) or fails is simply left to it. Not with replicas: a fill
    /// could read one that has not replayed the change yet.
    async fn early(&mut self, notifications: Vec<(String, String)>, cursor: &Cursor) {
        if self.replicas.any() {
            return;
        }
        let started = Instant::now();
        let config = self.config.clone();
        let mut work = Work::default();
        let mut events = 0;
        for (channel, payload) in &notifications {
            if *channel != config.channel || payload.is_empty() {
                continue;
            }
            let event = match outbox::from_payload(payload) {
                Ok(e) if e.id > cursor.position() => e,
                Ok(_) => continue,
                Err(e) => {
                    debug!(error = %e, "doorbell payload ignored");
                    continue;
                }
            };
            if event.table.schema() == "smartcache" {
                continue;
            }
            // An unreadable row is the claim's to set aside; the rows
            // before it were added.
            let _ = work.add(&config, &event);
            events += 1;
        }
        let (keys, deps) = work.take_rows();
        if keys.is_empty() && deps.is_empty() {
            return;
        }
        // The values first, in one plain UNLINK (as fast as a `DEL`); their
        // leases and stamps are the claim's to drop, so this only ever
        // deletes sooner, never lets a fill in flight through that the
        // claim would have stopped. Then what the library's dependency
        // sets name.
        let ns = &config.namespace;
        let values = keys.iter().map(|k| ns.value_key(k)).collect();
        let applied = async {
            smartcache_core::invalidate::unlink(&mut self.redis, values).await?;
            if deps.is_empty() {
                return Ok(0);
            }
            invalidate(&mut self.redis, ns, &[], &deps).await
        };
        match applied.await {
            Ok(deleted) => {
                self.telemetry.doorbell_events.inc_by(events);
                debug!(
                    events,
                    keys = keys.len(),
                    dep_sets = deps.len(),
                    deleted,
                    elapsed_us = started.elapsed().as_micros() as u64,
                    "applied from the doorbell"
                );
            }
            Err(e) => {
                debug!(error = %e, "deleting from the doorbell's payload failed; the claim applies it")
            }
        }
    }

    /// Deletes what `work` names in Redis; `keep` gathers it for a replica
    /// that was behind.
    async fn apply(
        &mut self,
        work: Work,
        keep: Option<&mut (Vec<String>, Vec<DepId>)>,
    ) -> redis::RedisResult<Applied> {
        if work.is_empty() {
            return Ok(Applied::default());
        }
        let (keys, deps) = self.expand(work).await?;
        let deleted = invalidate(&mut self.redis, &self.config.namespace, &keys, &deps).await?;
        self.telemetry.steps.inc();
        let applied = Applied {
            keys: keys.len(),
            deps: deps.len(),
            deleted,
        };
        if let Some((k, d)) = keep {
            k.extend(keys);
            d.extend(deps);
        }
        Ok(applied)
    }

    /// Applies again the deletions owed to replicas that were behind, once
    /// they have replayed past them.
    async fn repay(&mut self) -> redis::RedisResult<()> {
        if !self.replicas.owed() {
            return Ok(());
        }
        let due = self.replicas.due().await;
        let ns = &self.config.namespace;
        if due.drop_all {
            smartcache_core::invalidate::drop_all_values(&mut self.redis, ns).await?;
        }
        if !due.keys.is_empty() || !due.deps.is_empty() {
            let deleted = invalidate(&mut self.redis, ns, &due.keys, &due.deps).await?;
            debug!(
                deleted,
                "applied again the deletions owed to replicas that were behind"
            );
        }
        Ok(())
    }

    /// Redis failed mid-batch: the claimed rows go back to the queue.
    async fn give_back(
        &mut self,
        client: &Client,
        cursor: &mut Cursor,
        ids: &[i64],
        e: redis::RedisError,
    ) -> Result<(usize, bool), BatchError> {
        client.batch_execute("ROLLBACK").await?;
        cursor.returned(ids);
        Err(e.into())
    }

    /// Turns truncations and templates that could not be rendered into the
    /// keys and dependency sets that exist now; each `SCAN` step counts as
    /// progress for the canary.
    async fn expand(&mut self, work: Work) -> redis::RedisResult<(Vec<String>, Vec<DepId>)> {
        let telemetry = self.telemetry.clone();
        let progress = move || {
            telemetry.steps.inc();
        };
        let progress: &(dyn Fn() + Sync) = &progress;
        let mut keys: Vec<String> = work.keys.into_iter().collect();
        let mut deps: Vec<DepId> = work.deps.into_iter().collect();
        for table in &work.truncated {
            let (k, d) =
                mapping::truncation_targets(&mut self.redis, &self.config, table, progress).await?;
            keys.extend(k);
            deps.extend(d);
        }
        for (table, template) in &work.unrenderable {
            if work.truncated.contains(table) {
                continue;
            }
            let Some(t) = self
                .config
                .table(table)
                .and_then(|s| s.keys.iter().find(|t| t.as_str() == template))
            else {
                continue;
            };
            keys.extend(
                mapping::template_targets(&mut self.redis, &self.config, &[t], progress).await?,
            );
        }
        for table in &work.all_rows {
            if !work.truncated.contains(table) {
                deps.extend(
                    mapping::row_dep_targets(&mut self.redis, &self.config, table, progress)
                        .await?,
                );
            }
        }
        Ok((keys, deps))
    }
}

/// Deletes a chunk of a batch's keys and dependency sets; owns what it
/// needs, so it can run while the next chunk is read.
fn apply_chunk(
    mut redis: Conn,
    ns: smartcache_core::keys::Namespace,
    telemetry: Arc<Telemetry>,
    keys: Vec<String>,
    deps: Vec<DepId>,
) -> BoxFuture<'static, redis::RedisResult<Applied>> {
    Box::pin(async move {
        let deleted = invalidate(&mut redis, &ns, &keys, &deps).await?;
        telemetry.steps.inc();
        Ok(Applied {
            keys: keys.len(),
            deps: deps.len(),
            deleted,
        })
    })
}

/// Runs `work` (Redis work inside a claim transaction), touching the
/// session every `every` meanwhile: the server ends a transaction that sits
/// idle longer than `pg_timeout_ms`, which must hit a frozen daemon only,
/// never one scanning a big namespace.
async fn with_keepalive<T>(
    client: &Client,
    every: Duration,
    work: impl Future<Output = T>,
) -> Result<T, tokio_postgres::Error> {
    tokio::pin!(work);
    loop {
        tokio::select! {
            out = &mut work => return Ok(out),
            _ = tokio::time::sleep(every) => client.batch_execute("SELECT 1").await?,
        }
    }
}

/// Commits the claim's transaction; returns its transaction id (it has
/// one: it deleted rows), which bounds the writers that were in progress
/// when it took its snapshot (see [`Cursor::claimed`]). One round trip.
async fn commit_with_xid(client: &Client) -> Result<Option<u64>, tokio_postgres::Error> {
    let messages = client
        .simple_query("SELECT pg_current_xact_id_if_assigned()::text; COMMIT")
        .await?;
    Ok(messages.iter().find_map(|m| match m {
        tokio_postgres::SimpleQueryMessage::Row(r) => r.get(0).and_then(|x| x.parse().ok()),
        _ => None,
    }))
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
