//! The daemon's second session: it watches what the main loop cannot see
//! from inside a batch.
//!
//! - **Capture** ([`crate::capture`]): every [`CHECK_EVERY`], whether the
//!   catalog still matches what install created; problems go to `/healthz`,
//!   a metric and the log. A partition attached to or detached from a
//!   watched table moves rows without firing a trigger, so its keys are
//!   invalidated as a TRUNCATE would.
//! - **The vacuum horizon**: the age of the oldest snapshot and the
//!   outbox's dead rows, as metrics, with a warning.
//! - **The canary** ([`crate::canary`]).

use crate::canary::{self, Beat};
use crate::config::Config;
use crate::pg;
use crate::schema;
use crate::shutdown::Shutdown;
use crate::telemetry::Telemetry;
use smartcache_core::conn::Conn;
use std::collections::BTreeMap;
use std::sync::atomic::{AtomicI32, AtomicU8, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::sync::Notify;
use tracing::{debug, error, info, warn};

/// How often capture is checked against the catalog.
pub(crate) const CHECK_EVERY: Duration = Duration::from_secs(2);
/// How often Redis and PostgreSQL are checked for going back in time: at
/// most this long may a value undone by a restart stay cached.
const TRAVEL_EVERY: Duration = Duration::from_secs(1);
/// How often the vacuum horizon is sampled.
const HORIZON_EVERY: Duration = Duration::from_secs(5);
/// A snapshot older than this holds dead outbox rows: warn.
const HORIZON_WARN: Duration = Duration::from_secs(300);
/// First pause before acting on a second canary stall; doubles up to
/// [`STALL_BACKOFF_MAX`].
const STALL_BACKOFF: Duration = Duration::from_secs(15);
const STALL_BACKOFF_MAX: Duration = Duration::from_secs(600);

/// What the monitor shares with the main loop.
pub(crate) struct Shared {
    pub(crate) config: Arc<Config>,
    pub(crate) pg_config: pg::Target,
    pub(crate) redis: Conn,
    pub(crate) telemetry: Arc<Telemetry>,
    /// Rung when the canary finds the main session stuck.
    pub(crate) stalled: Arc<Notify>,
    /// The main session's backend pid (0: none).
    pub(crate) backend: Arc<AtomicI32>,
    /// Whether the main session found transaction pooling
    /// ([`crate::pooling::UNKNOWN`] until it looked).
    pub(crate) mode: Arc<AtomicU8>,
}

/// Runs until `stop`, then removes this daemon's canary row.
pub(crate) async fn run(shared: Shared, mut stop: Shutdown) {
    // Its own name, so operators (and tests) can tell the two sessions apart.
    let pg_config = shared
        .pg_config
        .clone()
        .named("smartcache-invalidator canary");
    let mut state = State {
        shared,
        canary: canary::Canary::new(),
        partitions: None,
        last_check: None,
        last_horizon: None,
        last_travel: None,
        generations: crate::time_travel::Generations::new(),
        last_beat: Instant::now(),
        stall_backoff: STALL_BACKOFF,
        last_reconnect_ask: None,
        reported: Vec::new(),
    };
    let mut session: Option<pg::Session> = None;
    loop {
        tokio::select! {
            _ = stop.wait() => break,
            _ = tokio::time::sleep(Duration::from_millis(250)) => {}
        }
        if session.as_ref().is_some_and(|s| s.driver.is_finished()) {
            session = None;
        }
        // Statements depend on it: see `tick`.
        let pooled = match state.shared.mode.load(Ordering::Relaxed) {
            crate::pooling::UNKNOWN => continue,
            mode => mode == crate::pooling::POOLED,
        };
        if session.is_none() {
            match pg::connect(&pg_config).await {
                Ok(s) => {
                    state.canary.connected(&s.client).await;
                    session = Some(s);
                }
                Err(e) => {
                    debug!(error = %e, "monitor: PostgreSQL unreachable");
                    continue;
                }
            }
        }
        let client = &session.as_ref().expect("connected above").client;
        if let Err(e) = state.tick(client, pooled).await {
            debug!(error = %pg::chain(&e), "monitor: PostgreSQL query failed; reconnecting");
            session = None;
        }
    }
    if let Some(s) = session {
        state.canary.remove(&s.client).await;
    }
}

struct State {
    shared: Shared,
    canary: canary::Canary,
    /// Partitions of each partitioned table as last seen.
    partitions: Option<BTreeMap<String, Vec<(String, String)>>>,
    last_check: Option<Instant>,
    last_horizon: Option<Instant>,
    last_travel: Option<Instant>,
    generations: crate::time_travel::Generations,
    last_beat: Instant,
    stall_backoff: Duration,
    last_reconnect_ask: Option<Instant>,
    /// Problems already logged.
    reported: Vec<String>,
}

/// `BEGIN` or `COMMIT` (which rolls a failed transaction back) around
/// one check, through transaction pooling only.
async fn pooled_tx(
    client: &tokio_postgres::Client,
    pooled: bool,
    sql: &str,
) -> Result<(), tokio_postgres::Error> {
    if pooled {
        client.batch_execute(sql).await?;
    }
    Ok(())
}

fn due(last: Option<Instant>, every: Duration) -> bool {
    last.is_none_or(|t| t.elapsed() >= every)
}

impl State {
    /// One round of checks. Through transaction pooling (`pooled`) each
    /// check is one transaction, so that its statements are prepared, run
    /// and closed on one backend; the canary's statements are unnamed.
    async fn tick(
        &mut self,
        client: &tokio_postgres::Client,
        pooled: bool,
    ) -> Result<(), tokio_postgres::Error> {
        if due(self.last_check, CHECK_EVERY) {
            pooled_tx(client, pooled, "BEGIN").await?;
            let checked = self.check_capture(client).await;
            pooled_tx(client, pooled, "COMMIT").await?;
            checked?;
            self.last_check = Some(Instant::now());
        }
        if due(self.last_travel, TRAVEL_EVERY) {
            pooled_tx(client, pooled, "BEGIN").await?;
            let checked = self.check_time_travel(client).await;
            pooled_tx(client, pooled, "COMMIT").await?;
            if let Err(e) = checked {
                debug!(error = %format!("{e:#}"), "monitor: checking for time travel failed; trying again");
            }
            self.last_travel = Some(Instant::now());
        }
        if due(self.last_horizon, HORIZON_EVERY) {
            pooled_tx(client, pooled, "BEGIN").await?;
            let sampled = self.sample_horizon(client).await;
            pooled_tx(client, pooled, "COMMIT").await?;
            sampled?;
            self.last_horizon = Some(Instant::now());
        }
        if let Some(every) = self.shared.config.canary_interval {
            if self.last_beat.elapsed() >= every {
                self.beat(client).await;
                self.last_beat = Instant::now();
            }
        }
        Ok(())
    }

    async fn check_capture(
        &mut self,
        client: &tokio_postgres::Client,
    ) -> Result<(), tokio_postgres::Error> {
        let config = &self.shared.config;
        let installed = schema::inspect(client).await?;
        let problems = crate::capture::problems(client, config, &installed).await?;
        for p in problems.iter().filter(|p| !self.reported.contains(p)) {
            error!(problem = %p, "capture does not match the installed objects");
        }
        for p in self.reported.iter().filter(|p| !problems.contains(p)) {
            info!(problem = %p, "resolved");
        }
        self.reported = problems.clone();
        self.shared.telemetry.set_capture_problems(problems);
        // Start from what install saw, so a partition attached while no
        // daemon ran is noticed too.
        let now = crate::capture::partitions(client, config).await?;
        let mut seen = self.partitions.take().unwrap_or_else(|| {
            installed
                .functions
                .values()
                .filter_map(|f| f.captured.as_ref())
                .filter(|c| c.partitioned)
                .map(|c| (c.table.clone(), c.partitions.clone()))
                .collect()
        });
        for (table, parts) in now {
            if seen.get(&table).is_some_and(|before| *before != parts) {
                match self.invalidate_table(&table).await {
                    Ok(n) => {
                        warn!(table = %table, deleted = n, "partitions were attached or detached: rows moved without a trigger, so every key of the table was invalidated");
                    }
                    Err(e) => {
                        warn!(table = %table, error = %format!("{e:#}"), "partitions changed but Redis is unreachable; retrying");
                        continue;
                    }
                }
            }
            seen.insert(table, parts);
        }
        self.partitions = Some(seen);
        Ok(())
    }

    async fn invalidate_table(&self, table: &str) -> anyhow::Result<u64> {
        let name = smartcache_core::keys::TableName::parse(table)?;
        let mut con = self.shared.redis.clone();
        let config = &self.shared.config;
        let (keys, mut deps) =
            crate::mapping::truncation_targets(&mut con, config, &name, &|| {}).await?;
        deps.push(name.table_dep());
        Ok(
            smartcache_core::invalidate::invalidate(&mut con, &config.namespace, &keys, &deps)
                .await?,
        )
    }

    async fn check_time_travel(&mut self, client: &tokio_postgres::Client) -> anyhow::Result<()> {
        use crate::time_travel::{check_postgres, check_redis, recover};
        let ns = &self.shared.config.namespace;
        let mut redis = self.shared.redis.clone();
        let keys = self.generations.keys(&redis, ns).await?.to_vec();
        let regressed = check_redis(client, &mut redis, ns, &keys).await?;
        let t = &self.shared.telemetry;
        if !regressed.is_empty() {
            let cause = format!(
                "a generation key of {} primary(ies) reads below the one recorded: Redis restarted from an \
                 older snapshot or a failover lost writes",
                regressed.len()
            );
            recover(&mut redis, ns, t, "redis", &cause, &regressed).await?;
        }
        if let Some(cause) = check_postgres(client, &mut redis, ns).await? {
            recover(&mut redis, ns, t, "postgres", &cause, &Vec::new()).await?;
        }
        Ok(())
    }

    async fn sample_horizon(
        &mut self,
        client: &tokio_postgres::Client,
    ) -> Result<(), tokio_postgres::Error> {
        // backend_xmin is visible for every session; xact_start only for
        // our own role's (or with pg_read_all_stats).
        let row = client
            .query_one(
                "SELECT (SELECT coalesce(max(age(backend_xmin)), 0)::int8 FROM pg_stat_activity \
                         WHERE backend_xmin IS NOT NULL), \
                        (SELECT coalesce(max(age(xmin)), 0)::int8 FROM pg_replication_slots WHERE xmin IS NOT NULL), \
                        (SELECT extract(epoch FROM coalesce(max(now() - xact_start), '0'))::float8 \
                         FROM pg_stat_activity WHERE backend_xmin IS NOT NULL AND pid <> pg_backend_pid()), \
                        (SELECT coalesce(n_dead_tup, 0) FROM pg_stat_all_tables \
                         WHERE relid = 'smartcache.outbox'::regclass)",
                &[],
            )
            .await?;
        let (xids, slot_xids, secs, dead): (i64, i64, f64, i64) =
            (row.get(0), row.get(1), row.get(2), row.get(3));
        let t = &self.shared.telemetry;
        t.horizon_xid_age.set(xids.max(slot_xids));
        t.horizon_seconds.set(secs as i64);
        t.outbox_dead_rows.set(dead);
        if secs >= HORIZON_WARN.as_secs_f64() {
            warn!(
                oldest_transaction_s = secs as u64,
                outbox_dead_rows = dead,
                "a transaction has held the vacuum horizon for a long time: dead outbox rows accumulate \
                 (claims stay fast); end idle-in-transaction sessions, see the README's operations section"
            );
        }
        Ok(())
    }

    async fn beat(&mut self, client: &tokio_postgres::Client) {
        let t = &self.shared.telemetry;
        let mut redis = self.shared.redis.clone();
        match self
            .canary
            .beat(client, &mut redis, t, &self.shared.config)
            .await
        {
            Beat::Done(lag) => {
                debug!(
                    lag_ms = lag.as_secs_f64() * 1e3,
                    "canary: heartbeat invalidated"
                );
                t.canary(Some(lag));
                self.stall_backoff = STALL_BACKOFF;
            }
            Beat::Skipped(why) => debug!(reason = %why, "canary: skipping this beat"),
            Beat::Stalled => self.stalled(client).await,
        }
    }

    /// A heartbeat was not invalidated in time while nothing progressed.
    async fn stalled(&mut self, client: &tokio_postgres::Client) {
        let t = &self.shared.telemetry;
        let pid = self.shared.backend.load(Ordering::Relaxed);
        let activity = if pid == 0 {
            None
        } else {
            client
                .query_typed_opt(
                    "SELECT state, coalesce(wait_event_type || ':' || wait_event, ''), \
                            extract(epoch FROM now() - state_change)::float8 \
                     FROM pg_stat_activity WHERE pid = $1",
                    &[(&pid, tokio_postgres::types::Type::INT4)],
                )
                .await
                .ok()
                .flatten()
                .map(|r| {
                    (
                        r.get::<_, Option<String>>(0),
                        r.get::<_, String>(1),
                        r.get::<_, Option<f64>>(2),
                    )
                })
        };
        t.canary(None);
        if let Some((Some(state), wait, secs)) = &activity {
            if state == "active" {
                // Slow for a reason the server can name: the statement
                // timeout bounds it, reconnecting would only add load.
                let cause = format!(
                    "the daemon's statement has run for {:.0} s (wait event {})",
                    secs.unwrap_or(0.0),
                    if wait.is_empty() { "none" } else { wait }
                );
                warn!(backend = pid, cause = %cause, "canary: heartbeat late, but the daemon is working; not reconnecting");
                t.set_canary_detail(format!("canary late: {cause}"));
                return;
            }
        }
        let cause = match &activity {
            None => "the daemon has no PostgreSQL session".to_owned(),
            Some((state, _, secs)) => format!(
                "the daemon's session is {} for {:.0} s",
                state.as_deref().unwrap_or("unknown"),
                secs.unwrap_or(0.0)
            ),
        };
        t.error(
            "canary",
            format!("heartbeat not invalidated in time: {cause}"),
        );
        let may_ask = self
            .last_reconnect_ask
            .is_none_or(|at| at.elapsed() >= self.stall_backoff);
        if may_ask {
            warn!(cause = %cause, "canary stalled: a committed heartbeat was not invalidated in time; reconnecting and replaying");
            t.set_canary_detail(format!("canary stalled: {cause}; reconnecting"));
            self.shared.stalled.notify_one();
            self.last_reconnect_ask = Some(Instant::now());
            self.stall_backoff = (self.stall_backoff * 2).min(STALL_BACKOFF_MAX);
        } else {
            let left = self.stall_backoff.saturating_sub(
                self.last_reconnect_ask
                    .map_or(Duration::ZERO, |a| a.elapsed()),
            );
            warn!(cause = %cause, next_reconnect_in_s = left.as_secs(), "canary stalled again; backing off before reconnecting");
            t.set_canary_detail(format!(
                "canary stalled repeatedly: {cause}; next reconnect in {} s",
                left.as_secs()
            ));
        }
    }
}
