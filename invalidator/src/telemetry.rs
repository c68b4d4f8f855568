//! What the daemon tells operators: Prometheus metrics on `/metrics` and a
//! health verdict on `/healthz`.

use prometheus_client::encoding::text::encode;
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::registry::Registry;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

/// Label of `smartcache_time_travel_total`.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct Store {
    /// `redis` or `postgres`.
    pub store: &'static str,
}

/// Label of `smartcache_errors_total`.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ErrorKind {
    /// `redis`, `postgres`, `dead_letter` or `canary`.
    pub kind: &'static str,
}

/// Counters, gauges and histograms of one daemon, plus its health.
///
/// ```
/// let t = smartcache_invalidator::telemetry::Telemetry::new();
/// t.events.inc_by(3);
/// assert!(t.render().contains("smartcache_events_total 3"));
/// ```
pub struct Telemetry {
    registry: Registry,
    /// Outbox rows applied (one per captured statement).
    pub events: Counter,
    /// Rows the applied events changed.
    pub rows: Counter,
    /// Redis values deleted.
    pub keys_deleted: Counter,
    /// Changes applied from a doorbell's payload before their claim.
    pub doorbell_events: Counter,
    /// Events per applied batch.
    pub batch_size: Histogram,
    /// Seconds from the writer's change to the keys being deleted.
    pub lag: Histogram,
    /// Errors by kind.
    pub errors: Family<ErrorKind, Counter>,
    /// PostgreSQL sessions started after the first.
    pub reconnects: Counter,
    /// Outbox rows pending (upper bound: ids from the oldest to the newest).
    pub backlog: Gauge,
    /// Milliseconds of the last canary round trip (commit → key deleted).
    pub canary_lag_ms: Gauge,
    /// Canary heartbeats that were invalidated.
    pub canary_beats: Counter,
    /// Registrations of gone entries removed by the sweeper.
    pub swept: Counter,
    /// Times part of Redis was found to have lost its data.
    pub data_loss: Counter,
    /// Times Redis or PostgreSQL was found to have gone back in time (every
    /// cached value then dropped).
    pub time_travel: Family<Store, Counter>,
    /// Problems with capture found in the catalog (see [`crate::capture`]).
    pub capture_problems: Gauge,
    /// Changes whose columns capture could not read as installed, so the
    /// keys of the affected templates were invalidated wholesale.
    pub degraded_events: Counter,
    /// Steps of long work inside a batch (scans), so a slow batch is not
    /// taken for a stall.
    pub steps: Counter,
    /// Age in transactions of the oldest snapshot holding the vacuum horizon.
    pub horizon_xid_age: Gauge,
    /// Seconds the oldest visible transaction holding the horizon has run.
    pub horizon_seconds: Gauge,
    /// Dead row versions in the outbox.
    pub outbox_dead_rows: Gauge,
    /// 1 while the session goes through transaction pooling (polling).
    pub pooled_session: Gauge,
    pooled: Mutex<Option<String>>,
    pg_up: AtomicBool,
    redis_up: AtomicBool,
    canary_ok: AtomicBool,
    canary_stalls: AtomicU64,
    canary_detail: Mutex<Option<String>>,
    capture: Mutex<Vec<String>>,
    last_error: Mutex<Option<String>>,
}

impl Default for Telemetry {
    fn default() -> Self {
        Self::new()
    }
}

impl Telemetry {
    /// A fresh set, registered under `smartcache_*`.
    pub fn new() -> Self {
        let mut registry = Registry::with_prefix("smartcache");
        let events = Counter::default();
        let keys_deleted = Counter::default();
        let doorbell_events = Counter::default();
        let rows = Counter::default();
        let batch_size = Histogram::new([1.0, 2.0, 5.0, 10.0, 50.0, 100.0, 500.0, 1000.0, 5000.0]);
        let lag = Histogram::new([
            0.0005, 0.001, 0.002, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 5.0, 30.0,
        ]);
        let errors = Family::<ErrorKind, Counter>::default();
        let reconnects = Counter::default();
        let backlog = Gauge::default();
        let canary_lag_ms = Gauge::default();
        let canary_beats = Counter::default();
        let swept = Counter::default();
        let data_loss = Counter::default();
        let time_travel = Family::<Store, Counter>::default();
        registry.register(
            "time_travel",
            "Times Redis or PostgreSQL went back in time (a restart from a snapshot, a failover that lost writes, a restore) and every cached value was dropped",
            time_travel.clone(),
        );
        let capture_problems = Gauge::default();
        let degraded_events = Counter::default();
        let steps = Counter::default();
        let horizon_xid_age = Gauge::default();
        let horizon_seconds = Gauge::default();
        let outbox_dead_rows = Gauge::default();
        let pooled_session = Gauge::default();
        registry.register(
            "pooled_session",
            "1 while the daemon's PostgreSQL session goes through transaction pooling: it polls the outbox instead of listening",
            pooled_session.clone(),
        );
        registry.register(
            "capture_problems",
            "Problems with capture found in the catalog (renamed or retyped columns, disabled triggers…); see /healthz",
            capture_problems.clone(),
        );
        registry.register(
            "capture_degraded_events",
            "Changes whose columns capture could not read as installed; their templates' keys were invalidated wholesale",
            degraded_events.clone(),
        );
        registry.register(
            "horizon_xid_age",
            "Age in transactions of the oldest snapshot holding the vacuum horizon",
            horizon_xid_age.clone(),
        );
        registry.register(
            "horizon_seconds",
            "Seconds the oldest visible transaction holding the vacuum horizon has run",
            horizon_seconds.clone(),
        );
        registry.register(
            "outbox_dead_rows",
            "Dead row versions in smartcache.outbox (kept while a snapshot holds the horizon)",
            outbox_dead_rows.clone(),
        );
        registry.register(
            "events",
            "Outbox rows applied (one per captured statement)",
            events.clone(),
        );
        registry.register(
            "rows_changed",
            "Rows changed by the applied events (one event per statement)",
            rows.clone(),
        );
        registry.register("keys_deleted", "Redis values deleted", keys_deleted.clone());
        registry.register(
            "doorbell_events",
            "Changes applied straight from the doorbell's payload at rest, before their outbox row was claimed (the claim applies them again)",
            doorbell_events.clone(),
        );
        registry.register("batch_size", "Events per applied batch", batch_size.clone());
        registry.register(
            "commit_to_delete_seconds",
            "Seconds from the change (trigger time) to its keys being deleted",
            lag.clone(),
        );
        registry.register("errors", "Errors by kind", errors.clone());
        registry.register(
            "reconnects",
            "PostgreSQL sessions started after the first",
            reconnects.clone(),
        );
        registry.register(
            "outbox_backlog",
            "Pending outbox rows (upper bound)",
            backlog.clone(),
        );
        registry.register(
            "canary_lag_milliseconds",
            "Last canary round trip, commit to key deleted",
            canary_lag_ms.clone(),
        );
        registry.register(
            "canary_beats",
            "Canary heartbeats invalidated",
            canary_beats.clone(),
        );
        registry.register(
            "swept",
            "Registrations of expired or evicted entries removed from dependency sets",
            swept.clone(),
        );
        registry.register(
            "redis_data_loss",
            "Times some marker keys were gone (part of Redis lost its data) and every cached value was dropped",
            data_loss.clone(),
        );
        Self {
            registry,
            events,
            rows,
            keys_deleted,
            doorbell_events,
            batch_size,
            lag,
            errors,
            reconnects,
            backlog,
            canary_lag_ms,
            canary_beats,
            swept,
            data_loss,
            time_travel,
            capture_problems,
            degraded_events,
            steps,
            horizon_xid_age,
            horizon_seconds,
            outbox_dead_rows,
            pooled_session,
            pooled: Mutex::new(None),
            pg_up: AtomicBool::new(false),
            redis_up: AtomicBool::new(true),
            canary_ok: AtomicBool::new(true),
            canary_stalls: AtomicU64::new(0),
            canary_detail: Mutex::new(None),
            capture: Mutex::new(Vec::new()),
            last_error: Mutex::new(None),
        }
    }

    /// Counts an error of `kind` and remembers it for `/healthz`.
    pub fn error(&self, kind: &'static str, message: impl std::fmt::Display) {
        self.errors.get_or_create(&ErrorKind { kind }).inc();
        *self.last_error.lock().expect("not poisoned") = Some(format!("{kind}: {message}"));
    }

    /// Records whether PostgreSQL answers.
    pub fn set_pg_up(&self, up: bool) {
        self.pg_up.store(up, Ordering::Relaxed);
    }

    /// Records whether Redis answers.
    pub fn set_redis_up(&self, up: bool) {
        self.redis_up.store(up, Ordering::Relaxed);
    }

    /// Work done so far: applied outbox rows and steps of long batches.
    pub fn progress(&self) -> u64 {
        self.events.get() + self.steps.get()
    }

    /// Counts `store` going back in time.
    pub fn time_travel(&self, store: &'static str) {
        self.time_travel.get_or_create(&Store { store }).inc();
    }

    /// Records why the session is pooled (`None`: a session of its own).
    pub fn set_pooled(&self, reason: Option<String>) {
        self.pooled_session.set(i64::from(reason.is_some()));
        *self.pooled.lock().expect("not poisoned") = reason;
    }

    /// Facts for `/healthz` that do not make the daemon unhealthy.
    pub fn notes(&self) -> Vec<String> {
        self.pooled
            .lock()
            .expect("not poisoned")
            .iter()
            .map(|r| format!("note: transaction pooling ({r}): polling every poll_interval_ms instead of LISTEN"))
            .collect()
    }

    /// Replaces the list of capture problems.
    pub fn set_capture_problems(&self, problems: Vec<String>) {
        self.capture_problems.set(problems.len() as i64);
        *self.capture.lock().expect("not poisoned") = problems;
    }

    /// Counts a change whose `broken` columns capture could not read.
    pub fn degraded(
        &self,
        table: &smartcache_core::keys::TableName,
        broken: &std::collections::BTreeSet<String>,
    ) {
        self.degraded_events.inc();
        tracing::error!(
            table = %table,
            columns = ?broken,
            "a change arrived without columns the key templates need (renamed, dropped or retyped): \
             every key those templates can produce was invalidated"
        );
    }

    /// What the canary found last, for `/healthz`.
    pub fn set_canary_detail(&self, detail: String) {
        *self.canary_detail.lock().expect("not poisoned") = Some(detail);
    }

    /// Records a canary round trip (`None`: it stalled).
    pub fn canary(&self, lag: Option<Duration>) {
        match lag {
            Some(lag) => {
                self.canary_ok.store(true, Ordering::Relaxed);
                *self.canary_detail.lock().expect("not poisoned") = None;
                self.canary_lag_ms.set(lag.as_millis() as i64);
                self.canary_beats.inc();
            }
            None => {
                self.canary_ok.store(false, Ordering::Relaxed);
                self.canary_stalls.fetch_add(1, Ordering::Relaxed);
            }
        }
    }

    /// Problems that make the daemon unhealthy; empty when healthy.
    pub fn problems(&self) -> Vec<String> {
        let mut out = Vec::new();
        if !self.pg_up.load(Ordering::Relaxed) {
            out.push("postgresql: not connected".to_owned());
        }
        if !self.redis_up.load(Ordering::Relaxed) {
            out.push("redis: unreachable".to_owned());
        }
        if !self.canary_ok.load(Ordering::Relaxed) {
            out.push(
                self.canary_detail
                    .lock()
                    .expect("not poisoned")
                    .clone()
                    .unwrap_or_else(|| {
                        "canary: a heartbeat change was not invalidated in time; reconnecting and replaying"
                            .to_owned()
                    }),
            );
        }
        for p in self.capture.lock().expect("not poisoned").iter() {
            out.push(format!("capture: {p}"));
        }
        if !out.is_empty() {
            if let Some(e) = self.last_error.lock().expect("not poisoned").as_ref() {
                out.push(format!("last error: {e}"));
            }
        }
        out
    }

    /// The metrics in Prometheus text format.
    pub fn render(&self) -> String {
        let mut out = String::new();
        encode(&mut out, &self.registry).expect("writing to a String cannot fail");
        out
    }
}

/// Serves `/metrics` and `/healthz` on `addr` until `shutdown` completes.
pub async fn serve(
    addr: SocketAddr,
    telemetry: Arc<Telemetry>,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    use axum::http::{header, StatusCode};
    use axum::response::IntoResponse;
    use axum::routing::get;

    let metrics = {
        let t = telemetry.clone();
        move || {
            let t = t.clone();
            async move {
                (
                    [(
                        header::CONTENT_TYPE,
                        "application/openmetrics-text; version=1.0.0; charset=utf-8",
                    )],
                    t.render(),
                )
            }
        }
    };
    let healthz = move || {
        let t = telemetry.clone();
        async move {
            let problems = t.problems();
            let notes: String = t.notes().iter().map(|n| format!("{n}\n")).collect();
            if problems.is_empty() {
                (StatusCode::OK, format!("ok\n{notes}")).into_response()
            } else {
                (
                    StatusCode::SERVICE_UNAVAILABLE,
                    format!("unhealthy\n{}\n{notes}", problems.join("\n")),
                )
                    .into_response()
            }
        }
    };
    let app = axum::Router::new()
        .route("/metrics", get(metrics))
        .route("/healthz", get(healthz));
    let listener = tokio::net::TcpListener::bind(addr).await?;
    tracing::info!(addr = %listener.local_addr()?, "serving /metrics and /healthz");
    axum::serve(listener, app)
        .with_graceful_shutdown(shutdown)
        .await
}
