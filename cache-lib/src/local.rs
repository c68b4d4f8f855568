//! The in-process tier: copies of values that Redis returned to a tracking
//! connection, served without a round trip while tracking vouches for them.
//!
//! Coherence rests on three counters:
//! - `epoch` changes on every flush (tracking lost, lag, `FLUSHALL`); a copy
//!   carries the epoch it was filled in and is served only in that epoch.
//! - `stripes`: an invalidation of key `k` bumps the stripe of `k` before
//!   removing the copy. A fill snapshots the stripe (and the epoch) before
//!   its `GET` is sent, inserts, then checks both again and removes its copy
//!   if either moved. An invalidation that Redis sent after executing the
//!   `GET` is handled after the snapshot, so it either moves the stripe
//!   before the check or removes the copy after the insert.
//! - `fresh_until`: heartbeats on the tracking connections extend it; a copy
//!   is served only before it. A reply to a `PING` comes after every
//!   invalidation Redis queued before it, so a copy served at `t` reflects
//!   every change Redis applied before `t - max_lag`.

use std::hash::BuildHasher;
use std::sync::atomic::{AtomicU64, Ordering::SeqCst};
use std::sync::Arc;
use std::time::{Duration, Instant};

use tracing::debug;

/// Bytes counted per copy on top of its key and value (the map's entry,
/// the `Arc` and the copy's header).
const OVERHEAD: u64 = 96;

/// Invalidation stripes: a false share only costs a fill that is skipped.
const STRIPES: usize = 4096;

/// How big the local tier may grow; see
/// [`CacheBuilder::local`](crate::CacheBuilder::local).
#[derive(Clone, Copy, Debug)]
pub(crate) struct Bound {
    pub(crate) max_bytes: u64,
    pub(crate) max_entries: u64,
}

/// What the local tier holds and has done, from
/// [`Cache::local_stats`](crate::Cache::local_stats).
///
/// ```no_run
/// # async fn demo(cache: smartcache::Cache) {
/// if let Some(s) = cache.local_stats() {
///     println!("{} copies, {} bytes, {} local hits", s.entries, s.bytes, s.hits);
/// }
/// # }
/// ```
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct LocalStats {
    /// Copies held.
    pub entries: u64,
    /// Bytes they count for (key + value + a fixed overhead each; a copy
    /// smaller than `max_bytes / max_entries` counts as that much).
    pub bytes: u64,
    /// Reads served from the local tier.
    pub hits: u64,
    /// Copies filled from a tracked `GET`.
    pub fills: u64,
    /// Invalidation messages applied (keys).
    pub invalidations: u64,
    /// Times the whole tier was flushed (tracking lost or late, `FLUSHALL`).
    pub flushes: u64,
    /// Whether copies may be served now (tracking is live and on time).
    pub serving: bool,
}

#[derive(Clone)]
struct Held {
    bytes: Arc<[u8]>,
    epoch: u64,
    /// Milliseconds since `base` after which the copy is dead (the entry's
    /// Redis TTL); 0 = never.
    expires_ms: u64,
}

/// A counter that threads bump without sharing a cache line: one shared
/// atomic, bumped on every local hit from every core, cost a quarter of
/// the hit's throughput at 64 tasks.
#[derive(Default)]
struct Striped([Padded; COUNTER_STRIPES]);

const COUNTER_STRIPES: usize = 16;

#[derive(Default)]
#[repr(align(128))]
struct Padded(AtomicU64);

impl Striped {
    fn add_one(&self) {
        use std::sync::atomic::{AtomicUsize, Ordering::Relaxed};
        static NEXT: AtomicUsize = AtomicUsize::new(0);
        thread_local!(static SLOT: usize = NEXT.fetch_add(1, Relaxed) % COUNTER_STRIPES);
        SLOT.with(|i| self.0[*i].0.fetch_add(1, Relaxed));
    }

    fn sum(&self) -> u64 {
        self.0
            .iter()
            .map(|p| p.0.load(std::sync::atomic::Ordering::Relaxed))
            .sum()
    }
}

/// Taken before a tracked `GET` is sent; see the module doc.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Ticket {
    epoch: u64,
    stripe: usize,
    seen: u64,
}

pub(crate) struct Local {
    map: moka::sync::Cache<String, Held>,
    base: Instant,
    epoch: AtomicU64,
    fresh_until: AtomicU64,
    stripes: Box<[AtomicU64]>,
    hasher: std::collections::hash_map::RandomState,
    hits: Striped,
    fills: AtomicU64,
    invalidations: AtomicU64,
    flushes: AtomicU64,
}

impl Local {
    pub(crate) fn new(bound: Bound) -> Self {
        let max_bytes = bound.max_bytes.max(1);
        // Every copy weighs at least max_bytes / max_entries, so a total
        // weight within max_bytes also keeps the count within max_entries.
        let floor = max_bytes.div_ceil(bound.max_entries.max(1));
        let map = moka::sync::Cache::builder()
            .max_capacity(max_bytes)
            .weigher(move |k: &String, v: &Held| {
                let w = (k.len() as u64 + v.bytes.len() as u64 + OVERHEAD).max(floor);
                u32::try_from(w).unwrap_or(u32::MAX)
            })
            .build();
        Self {
            map,
            base: Instant::now(),
            epoch: AtomicU64::new(1),
            fresh_until: AtomicU64::new(0),
            stripes: (0..STRIPES).map(|_| AtomicU64::new(0)).collect(),
            hasher: Default::default(),
            hits: Striped::default(),
            fills: AtomicU64::new(0),
            invalidations: AtomicU64::new(0),
            flushes: AtomicU64::new(0),
        }
    }

    pub(crate) fn now_ms(&self) -> u64 {
        // +1 so that 0 keeps meaning "never".
        self.base.elapsed().as_millis() as u64 + 1
    }

    fn stripe(&self, key: &str) -> usize {
        self.hasher.hash_one(key) as usize % STRIPES
    }

    /// The copy of `key`, if one may be served now.
    pub(crate) fn get(&self, key: &str) -> Option<Arc<[u8]>> {
        let now = self.now_ms();
        if now >= self.fresh_until.load(SeqCst) {
            return None;
        }
        let copy = self.map.get(key)?;
        if copy.epoch != self.epoch.load(SeqCst) || (copy.expires_ms != 0 && now >= copy.expires_ms)
        {
            return None;
        }
        self.hits.add_one();
        Some(copy.bytes)
    }

    /// Whether [`Local::get`] would serve `key` now, without counting a hit.
    pub(crate) fn holds(&self, key: &str) -> bool {
        let now = self.now_ms();
        now < self.fresh_until.load(SeqCst)
            && self.map.get(key).is_some_and(|c| {
                c.epoch == self.epoch.load(SeqCst) && (c.expires_ms == 0 || now < c.expires_ms)
            })
    }

    /// Snapshot to take before sending the `GET` whose reply may fill `key`.
    pub(crate) fn ticket(&self, key: &str) -> Ticket {
        let stripe = self.stripe(key);
        Ticket {
            epoch: self.epoch.load(SeqCst),
            stripe,
            seen: self.stripes[stripe].load(SeqCst),
        }
    }

    fn still(&self, t: &Ticket) -> bool {
        self.epoch.load(SeqCst) == t.epoch && self.stripes[t.stripe].load(SeqCst) == t.seen
    }

    /// Keeps a copy of `bytes`, the reply to a tracked `GET` of `key` sent
    /// after `ticket` was taken, unless an invalidation or a flush came in
    /// since. `pttl_ms` is the key's remaining time to live (negative: none).
    pub(crate) fn fill(&self, key: &str, bytes: &[u8], pttl_ms: i64, ticket: Ticket) {
        if !self.still(&ticket) {
            return;
        }
        let expires_ms = match u64::try_from(pttl_ms) {
            Ok(ms) => self.now_ms() + ms.max(1),
            Err(_) => 0,
        };
        self.map.insert(
            key.to_owned(),
            Held {
                bytes: bytes.into(),
                epoch: ticket.epoch,
                expires_ms,
            },
        );
        if self.still(&ticket) {
            self.fills
                .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        } else {
            self.map.invalidate(key);
        }
    }

    /// Redis said `key` changed (or this process changed it).
    pub(crate) fn invalidate(&self, key: &str) {
        self.stripes[self.stripe(key)].fetch_add(1, SeqCst);
        self.map.invalidate(key);
        self.invalidations
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    }

    /// Forgets every copy and stops serving until tracking vouches again.
    pub(crate) fn flush(&self, why: &'static str) {
        self.fresh_until.store(0, SeqCst);
        self.epoch.fetch_add(1, SeqCst);
        self.map.invalidate_all();
        self.flushes
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        debug!(why, "local tier flushed");
    }

    /// The current epoch, read before a heartbeat is sent.
    pub(crate) fn epoch(&self) -> u64 {
        self.epoch.load(SeqCst)
    }

    /// Every tracking connection answered a heartbeat sent at `sent_ms` in
    /// `epoch`: copies may be served until `sent_ms + max_lag`.
    pub(crate) fn vouch(&self, epoch: u64, sent_ms: u64, max_lag: Duration) {
        if self.epoch.load(SeqCst) == epoch {
            self.fresh_until
                .fetch_max(sent_ms + max_lag.as_millis() as u64, SeqCst);
            // A flush between the check and the store leaves an empty map
            // served from; undo to keep `serving` honest.
            if self.epoch.load(SeqCst) != epoch {
                self.fresh_until.store(0, SeqCst);
            }
        }
    }

    pub(crate) fn stats(&self) -> LocalStats {
        self.map.run_pending_tasks();
        let relaxed = std::sync::atomic::Ordering::Relaxed;
        LocalStats {
            entries: self.map.entry_count(),
            bytes: self.map.weighted_size(),
            hits: self.hits.sum(),
            fills: self.fills.load(relaxed),
            invalidations: self.invalidations.load(relaxed),
            flushes: self.flushes.load(relaxed),
            serving: self.now_ms() < self.fresh_until.load(SeqCst),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn live() -> Local {
        let l = Local::new(Bound {
            max_bytes: 1 << 20,
            max_entries: 1000,
        });
        l.vouch(l.epoch(), l.now_ms(), Duration::from_secs(60));
        l
    }

    #[test]
    fn an_invalidation_between_the_ticket_and_the_fill_keeps_the_reply_out() {
        let l = live();
        let t = l.ticket("k");
        l.invalidate("k");
        l.fill("k", b"old", -1, t);
        assert_eq!(l.get("k"), None);
        let t = l.ticket("k");
        l.fill("k", b"new", -1, t);
        assert_eq!(l.get("k").as_deref(), Some(&b"new"[..]));
    }

    #[test]
    fn a_flush_hides_every_copy_and_stops_serving() {
        let l = live();
        let t = l.ticket("k");
        l.fill("k", b"v", -1, t);
        let stale = l.ticket("j");
        l.flush("test");
        l.fill("j", b"v", -1, stale);
        assert!(!l.stats().serving);
        l.vouch(l.epoch(), l.now_ms(), Duration::from_secs(60));
        assert_eq!(l.get("k"), None);
        assert_eq!(l.get("j"), None);
    }

    #[test]
    fn nothing_is_served_once_the_heartbeat_is_late() {
        let l = Local::new(Bound {
            max_bytes: 1 << 20,
            max_entries: 1000,
        });
        let t = l.ticket("k");
        l.fill("k", b"v", -1, t);
        assert_eq!(l.get("k"), None, "never vouched for");
        l.vouch(l.epoch(), l.now_ms(), Duration::from_millis(1));
        std::thread::sleep(Duration::from_millis(5));
        assert_eq!(l.get("k"), None, "the vouching ran out");
    }

    #[test]
    fn both_bounds_hold() {
        let l = Local::new(Bound {
            max_bytes: 64 * 1024,
            max_entries: 50,
        });
        for i in 0..2000 {
            let t = l.ticket(&i.to_string());
            l.fill(&i.to_string(), &[0u8; 10], -1, t);
        }
        let s = l.stats();
        assert!(s.entries <= 50, "{s:?}");
        for i in 0..2000 {
            let t = l.ticket(&i.to_string());
            l.fill(&i.to_string(), &[0u8; 4000], -1, t);
        }
        let s = l.stats();
        assert!(s.bytes <= 64 * 1024, "{s:?}");
    }
}
