//! A debug-mode check of what a compute closure reads (README: "What a
//! compute closure must read"): the lease protects a read that is newer
//! than the call, not one from a snapshot taken before it, nor the
//! caller's own uncommitted writes.
//!
//! Run [`PROBE_SQL`] on the connection the closure reads with, as its last
//! statement, and hand the row to [`check`] with the time since the closure
//! was called. Both ages are durations measured on one clock each (the
//! server's for the transaction, the process's for the call), so clock skew
//! between the application and PostgreSQL does not matter.
//!
//! ```no_run
//! # async fn demo(cache: smartcache::Cache, db: tokio_postgres::Client) -> Result<(), Box<dyn std::error::Error>> {
//! use smartcache::freshness::{check, Probe, PROBE_SQL};
//! let name: String = cache
//!     .get_or_compute("product:1", [smartcache::Dep::row("products", [1])], || async {
//!         let called = std::time::Instant::now();
//!         let row = db.query_one("SELECT name FROM products WHERE id = 1", &[]).await?;
//!         if cfg!(debug_assertions) {
//!             let p = db.query_one(PROBE_SQL, &[]).await?;
//!             check(&Probe { isolation: p.get(0), wrote: p.get(1), transaction_age_ms: p.get(2) }, called.elapsed())
//!                 .expect("the compute closure reads fresh data");
//!         }
//!         Ok::<_, Box<dyn std::error::Error>>(row.get::<_, String>(0))
//!     })
//!     .await?;
//! # Ok(()) }
//! ```

use std::time::Duration;

/// What [`check`] needs from the compute's connection: its isolation level,
/// whether its transaction has written, and how long ago that transaction
/// began (milliseconds, from the server's clock). Columns: `text`, `bool`,
/// `bigint`.
pub const PROBE_SQL: &str = "SELECT current_setting('transaction_isolation'), \
     pg_current_xact_id_if_assigned() IS NOT NULL, \
     (extract(epoch FROM clock_timestamp() - now()) * 1000)::bigint";

/// The row [`PROBE_SQL`] returns.
///
/// ```
/// let p = smartcache::freshness::Probe { isolation: "read committed".into(), wrote: false, transaction_age_ms: 0 };
/// assert!(smartcache::freshness::check(&p, std::time::Duration::ZERO).is_ok());
/// ```
#[derive(Debug, Clone)]
pub struct Probe {
    /// `transaction_isolation` of the session.
    pub isolation: String,
    /// The transaction has an id: it wrote something not yet committed.
    pub wrote: bool,
    /// Milliseconds since the transaction began (`clock_timestamp() - now()`).
    pub transaction_age_ms: i64,
}

/// Why a compute closure's read may be older than its lease.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum Unsafe {
    /// A `REPEATABLE READ` or `SERIALIZABLE` transaction older than the
    /// call: its snapshot may predate a commit whose invalidation already
    /// ran, and the value would be cached stale.
    #[error(
        "the compute closure reads in a {isolation} transaction that began {age_ms} ms before \
         it was called: its snapshot may predate a change already invalidated; read in a fresh \
         READ COMMITTED statement or transaction instead"
    )]
    OldSnapshot {
        /// The isolation level.
        isolation: String,
        /// How much older the transaction is than the call.
        age_ms: i64,
    },
    /// The transaction has uncommitted writes, which the closure may read
    /// and which may roll back.
    #[error(
        "the compute closure reads in a transaction with uncommitted writes: they may roll back, \
         and a value cached from them would outlive them; fill the cache after the commit"
    )]
    UncommittedWrites,
}

/// Slack between the server's transaction start and the process's clock
/// for the call (a round trip; `now()` is taken at the first statement).
const SLACK_MS: i64 = 5;

/// Tells whether the read that `probe` describes is safe to cache, for a
/// closure called `since_call` ago. A `READ COMMITTED` read is always as
/// new as its statement, so only the two cases of [`Unsafe`] are refused.
///
/// ```
/// use smartcache::freshness::{check, Probe, Unsafe};
/// use std::time::Duration;
/// let old = Probe { isolation: "repeatable read".into(), wrote: false, transaction_age_ms: 900 };
/// assert!(matches!(check(&old, Duration::from_millis(10)), Err(Unsafe::OldSnapshot { .. })));
/// let own = Probe { isolation: "read committed".into(), wrote: true, transaction_age_ms: 1 };
/// assert_eq!(check(&own, Duration::from_millis(10)), Err(Unsafe::UncommittedWrites));
/// ```
pub fn check(probe: &Probe, since_call: Duration) -> Result<(), Unsafe> {
    if probe.wrote {
        return Err(Unsafe::UncommittedWrites);
    }
    let snapshot = matches!(probe.isolation.as_str(), "repeatable read" | "serializable");
    let older_by = probe.transaction_age_ms - since_call.as_millis() as i64;
    if snapshot && older_by > SLACK_MS {
        return Err(Unsafe::OldSnapshot {
            isolation: probe.isolation.to_uppercase(),
            age_ms: older_by,
        });
    }
    Ok(())
}
