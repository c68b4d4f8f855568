//! Claiming outbox rows at a cost that depends on the batch, not on the
//! table's history or statistics.
//!
//! A claim scanned from the lowest id visits every dead row version a long
//! transaction keeps alive (they cannot be vacuumed), so each claim would
//! cost O(dead rows). Instead each daemon keeps a cursor: the claim reads
//! `id > cursor` through the primary key index, O(batch).
//!
//! Rows below the cursor can still appear: a writer takes its id when it
//! captures and becomes visible only when it commits, and rows another
//! daemon had locked come back if it rolls back. Such a row belongs to a
//! transaction that was in progress when the claim that passed its id took
//! its snapshot (ids are handed out in time order, and capture runs after
//! the writer has its transaction id). So every claim records the range it
//! passed together with the transactions then in progress, and that range
//! is scanned again once some of them have finished: each range costs a
//! few scans, and a long writing transaction costs one scan when it ends.
//! A snapshot lists only the running transactions below its `xmax`, the
//! latest completed id + 1; those above are known only to have ids below
//! the claim's own, so they are listed from the first later snapshot whose
//! `xmax` passes it (missing them left such rows to the full pass: a
//! commit invalidated up to 10 s late under steady writes).
//! A full pass from the start every `full_scan_interval_ms` (10 s by
//! default) is the safety net for a peer that dies holding rows it took
//! after our snapshot.

use std::time::{Duration, Instant};

/// The claim: the snapshot it ran under and the WAL insert position (every
/// change it can see committed before it), then the rows it took (none:
/// one row of NULLs). `$1..$2` is a range to scan again, `$3` the cursor, `$4`
/// the batch size. Both scans walk the primary key index (the daemon's
/// session disables sequential and bitmap scans, so stale statistics cannot
/// pick another plan), and the rows are deleted by id.
pub fn claim_sql() -> String {
    format!(
        "WITH snap AS MATERIALIZED (SELECT pg_current_snapshot()::text AS s, \
             pg_current_wal_insert_lsn()::text AS lsn), \
         late AS MATERIALIZED (SELECT id FROM smartcache.outbox WHERE id > $1 AND id <= $2 \
             ORDER BY id LIMIT $4 FOR UPDATE SKIP LOCKED), \
         hot AS MATERIALIZED (SELECT id FROM smartcache.outbox WHERE id > $3 \
             ORDER BY id LIMIT $4 FOR UPDATE SKIP LOCKED), \
         claimed AS (DELETE FROM smartcache.outbox o \
             WHERE o.id = ANY (ARRAY(SELECT id FROM late UNION ALL SELECT id FROM hot)) \
             RETURNING {}) \
         SELECT snap.s, snap.lsn, claimed.* FROM snap LEFT JOIN claimed ON true",
        crate::outbox::CLAIMED_COLUMNS
    )
}

/// Settings of the daemon's session that make the claim's plan index
/// scans whatever the statistics say, planned once per session: a custom
/// plan costs ~1 ms of planning, paid by each of the first five claims
/// (the first commits after a start) before the server settles on the
/// generic one.
pub const PLANNER_SETTINGS: &str = "SET enable_seqscan = off; SET enable_bitmapscan = off; \
     SET enable_sort = off; SET plan_cache_mode = force_generic_plan";

/// A snapshot: `xmin:xmax:xip,…` as `pg_current_snapshot()` prints it.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Snapshot {
    xmin: u64,
    xmax: u64,
    xip: Vec<u64>,
}

impl Snapshot {
    /// Parses the text form.
    pub fn parse(text: &str) -> Option<Self> {
        let mut parts = text.splitn(3, ':');
        let xmin = parts.next()?.parse().ok()?;
        let xmax = parts.next()?.parse().ok()?;
        let xip = match parts.next()? {
            "" => Vec::new(),
            list => list
                .split(',')
                .map(str::parse)
                .collect::<Result<_, _>>()
                .ok()?,
        };
        Some(Self { xmin, xmax, xip })
    }

    /// Whether transaction `xid` had ended when the snapshot was taken.
    fn finished(&self, xid: u64) -> bool {
        xid < self.xmin || (xid < self.xmax && !self.xip.contains(&xid))
    }
}

/// Ids `(lo, hi]` a claim passed while `waiting` transactions were in
/// progress; rows of theirs may still appear there.
#[derive(Debug, Clone)]
struct Pending {
    lo: i64,
    hi: i64,
    waiting: Vec<u64>,
    /// `[from, below)`: transaction ids the snapshot could not list. Its
    /// `xmax` is the latest completed id + 1, so writers with higher ids
    /// may have been running (and holding ids below the claimed ones);
    /// every one of them has an id below the claim's own. Resolved into
    /// `waiting` by the first snapshot whose `xmax` reaches `below`.
    unlisted: Option<(u64, u64)>,
}

impl Pending {
    /// Whether a rescan under the last snapshot `seen` may find rows now.
    fn due(&self, seen: &Snapshot) -> bool {
        self.waiting.iter().any(|x| seen.finished(*x))
            || self.unlisted.is_some_and(|(_, below)| seen.xmax >= below)
    }
}

/// One daemon's claim position.
#[derive(Debug)]
pub struct Cursor {
    cursor: i64,
    pending: Vec<Pending>,
    /// The last snapshot seen, to tell which pending ranges are due.
    seen: Snapshot,
    /// Where the current full pass has got to, if one is under way.
    full_from: Option<i64>,
    last_full: Instant,
    /// How often the whole range below the cursor is scanned, whatever
    /// the snapshots say.
    full_every: Duration,
}

/// The parameters of one claim.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Plan {
    /// `late` scans `(lo, hi]`; empty when `lo >= hi`.
    pub lo: i64,
    /// End of the range scanned again.
    pub hi: i64,
    /// `hot` scans above this.
    pub cursor: i64,
}

impl Cursor {
    /// A cursor at the start that scans everything below it every
    /// `full_every`.
    pub fn new(full_every: Duration) -> Self {
        Self {
            cursor: 0,
            pending: Vec::new(),
            seen: Snapshot::default(),
            full_from: None,
            last_full: Instant::now(),
            full_every,
        }
    }

    /// What the next claim scans.
    pub fn plan(&mut self) -> Plan {
        if self.full_from.is_none()
            && self.last_full.elapsed() >= self.full_every
            && self.cursor > 0
        {
            self.full_from = Some(0);
        }
        let (lo, hi) = match self.full_from {
            Some(from) => (from, self.cursor),
            None => {
                let due = self.pending.iter().filter(|p| p.due(&self.seen));
                due.fold((i64::MAX, i64::MIN), |(lo, hi), p| {
                    (lo.min(p.lo), hi.max(p.hi))
                })
            }
        };
        if lo >= hi {
            return Plan {
                lo: 0,
                hi: 0,
                cursor: self.cursor,
            };
        }
        Plan {
            lo,
            hi,
            cursor: self.cursor,
        }
    }

    /// Takes in a claim's outcome: its snapshot and the ids it took, with
    /// `limit` the batch size, and the claim's own transaction id when it
    /// took any (without it, writers the snapshot could not list are left
    /// to the full pass).
    pub fn claimed(
        &mut self,
        plan: Plan,
        snapshot: Snapshot,
        ids: &[i64],
        limit: usize,
        own: Option<u64>,
    ) {
        let late: Vec<i64> = ids.iter().copied().filter(|id| *id <= plan.hi).collect();
        let hot_max = ids.iter().copied().filter(|id| *id > plan.cursor).max();
        // How far the range scanned again was covered: all of it unless
        // the scan stopped at its limit.
        let covered = if late.len() >= limit {
            late.iter().copied().max().unwrap_or(plan.lo)
        } else {
            plan.hi
        };
        if plan.lo < plan.hi {
            self.rescanned(plan.lo, covered, &snapshot);
            if let Some(from) = self.full_from {
                if from == plan.lo {
                    self.full_from = (covered < plan.hi).then_some(covered);
                    if self.full_from.is_none() {
                        self.last_full = Instant::now();
                    }
                }
            }
        }
        if let Some(max) = hot_max {
            let waiting: Vec<u64> = snapshot.xip.clone();
            let unlisted = own
                .filter(|own| *own > snapshot.xmax)
                .map(|own| (snapshot.xmax, own));
            if !waiting.is_empty() || unlisted.is_some() {
                self.pending.push(Pending {
                    lo: self.cursor,
                    hi: max,
                    waiting,
                    unlisted,
                });
            }
            self.cursor = self.cursor.max(max);
        }
        self.seen = snapshot;
        self.merge();
    }

    /// A batch was rolled back: its rows are back in the queue.
    pub fn returned(&mut self, ids: &[i64]) {
        if let Some(min) = ids.iter().copied().min() {
            if min <= self.cursor {
                // Claimed again by the hot scan: the cheapest way back.
                self.cursor = min - 1;
                self.pending.retain(|p| p.lo < self.cursor);
                for p in &mut self.pending {
                    p.hi = p.hi.min(self.cursor);
                }
            }
        }
    }

    /// The cursor, for the backlog estimate.
    pub fn position(&self) -> i64 {
        self.cursor
    }

    /// `(lo, covered]` was scanned under `snapshot`: what finished by then
    /// no longer needs waiting for.
    fn rescanned(&mut self, lo: i64, covered: i64, snapshot: &Snapshot) {
        let mut split = Vec::new();
        for p in &mut self.pending {
            if p.lo >= covered || p.hi <= lo {
                continue;
            }
            if p.hi > covered {
                // The uncovered part keeps every transaction it waits for.
                split.push(Pending {
                    lo: covered,
                    hi: p.hi,
                    waiting: p.waiting.clone(),
                    unlisted: p.unlisted,
                });
                p.hi = covered;
            }
            p.waiting.retain(|x| !snapshot.finished(*x));
            if let Some((from, below)) = p.unlisted {
                if snapshot.xmax >= below {
                    // Every id of the range is below this snapshot's xmax:
                    // those still running are listed.
                    let running = snapshot.xip.iter().filter(|x| (from..below).contains(*x));
                    p.waiting.extend(running);
                    p.unlisted = None;
                }
            }
        }
        self.pending.extend(split);
        self.pending
            .retain(|p| !p.waiting.is_empty() || p.unlisted.is_some());
    }

    /// Adjacent ranges waiting for the same transactions become one: a long
    /// transaction keeps the list short.
    fn merge(&mut self) {
        self.pending.sort_by_key(|p| p.lo);
        let mut out: Vec<Pending> = Vec::with_capacity(self.pending.len());
        for p in self.pending.drain(..) {
            match out.last_mut() {
                Some(last)
                    if last.waiting == p.waiting
                        && last.unlisted == p.unlisted
                        && last.hi >= p.lo =>
                {
                    last.hi = last.hi.max(p.hi);
                }
                _ => out.push(p),
            }
        }
        self.pending = out;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const FULL: Duration = Duration::from_secs(10);

    fn snap(text: &str) -> Snapshot {
        Snapshot::parse(text).unwrap()
    }

    /// A claim as planned, with its outcome.
    fn step(c: &mut Cursor, snapshot: Snapshot, ids: &[i64], limit: usize) {
        let plan = c.plan();
        let own = Some(snapshot.xmax);
        c.claimed(plan, snapshot, ids, limit, own);
    }

    #[test]
    fn snapshots_parse() {
        assert_eq!(
            snap("10:15:11,13"),
            Snapshot {
                xmin: 10,
                xmax: 15,
                xip: vec![11, 13]
            }
        );
        assert_eq!(snap("10:10:").xip, Vec::<u64>::new());
        assert!(Snapshot::parse("x:1:").is_none());
        let s = snap("10:15:11,13");
        assert!(s.finished(9) && s.finished(12) && !s.finished(11) && !s.finished(15));
    }

    #[test]
    fn a_quiet_queue_claims_above_the_cursor_only() {
        let mut c = Cursor::new(FULL);
        let p = c.plan();
        assert_eq!((p.lo, p.hi, p.cursor), (0, 0, 0));
        c.claimed(p, snap("5:5:"), &[1, 2, 3], 100, Some(5));
        let p = c.plan();
        assert_eq!((p.lo, p.hi, p.cursor), (0, 0, 3));
    }

    #[test]
    fn a_range_passed_while_writers_ran_is_scanned_again_once_they_end() {
        let mut c = Cursor::new(FULL);
        let p = c.plan();
        // Transaction 7 holds id 2 (not yet visible) while 3 is claimed.
        c.claimed(p, snap("7:9:7"), &[1, 3], 100, Some(9));
        let p = c.plan();
        assert_eq!((p.lo, p.hi), (0, 0), "7 still runs");
        c.claimed(p, snap("7:10:7"), &[], 100, None);
        assert_eq!(c.plan().lo, 0);
        assert_eq!(c.plan().hi, 0);
        // 7 ended: the next plan learns it from the snapshot seen.
        step(&mut c, snap("9:10:"), &[], 100);
        let p = c.plan();
        assert_eq!((p.lo, p.hi, p.cursor), (0, 3, 3));
        c.claimed(p, snap("10:10:"), &[2], 100, Some(10));
        let p = c.plan();
        assert_eq!((p.lo, p.hi), (0, 0), "resolved");
    }

    #[test]
    fn a_long_transaction_keeps_one_range_and_the_others_resolve() {
        let mut c = Cursor::new(FULL);
        for (i, s) in ["100:110:100,105", "100:120:100,115", "100:130:100,125"]
            .iter()
            .enumerate()
        {
            let p = c.plan();
            let id = (i as i64 + 1) * 10;
            let own = Some(snap(s).xmax);
            c.claimed(p, snap(s), &[id], 100, own);
        }
        // 105, 115, 125 ended; 100 runs on.
        let p = c.plan();
        c.claimed(p, snap("100:140:100"), &[], 100, None);
        let p = c.plan();
        assert!(p.lo < p.hi, "the ranges whose short writers ended are due");
        c.claimed(p, snap("100:140:100"), &[], 100, None);
        assert_eq!(c.pending.len(), 1, "{:?}", c.pending);
        assert_eq!(c.pending[0].waiting, vec![100]);
        assert_eq!(c.plan().hi, 0, "nothing due while 100 runs");
    }

    #[test]
    fn rolled_back_rows_are_claimed_again_through_the_cursor() {
        let mut c = Cursor::new(FULL);
        step(&mut c, snap("5:5:"), &[1, 2, 3, 4], 100);
        c.returned(&[3, 4]);
        assert_eq!(c.plan().cursor, 2);
    }

    #[test]
    fn a_rescan_stopped_by_its_limit_goes_on_where_it_stopped() {
        let mut c = Cursor::new(FULL);
        step(&mut c, snap("7:9:7"), &[100], 10);
        step(&mut c, snap("9:9:"), &[], 10);
        let p = c.plan();
        assert_eq!((p.lo, p.hi), (0, 100));
        let late: Vec<i64> = (1..=10).collect();
        c.claimed(p, snap("9:9:"), &late, 10, Some(9));
        let p = c.plan();
        assert_eq!((p.lo, p.hi), (10, 100));
    }

    #[test]
    fn a_writer_running_above_the_snapshots_xmax_is_waited_for() {
        // Transaction 12 took id 5 and runs on; transaction 10 took id 6
        // after it and committed. The snapshot's xmax is 11 (the latest
        // completed + 1), so 12 is in progress yet not listed.
        let mut c = Cursor::new(FULL);
        let p = c.plan();
        c.claimed(p, snap("11:11:"), &[6], 100, Some(13));
        // 12 commits; later snapshots show everything up to 13 ended.
        for _ in 0..3 {
            let p = c.plan();
            if p.lo < 5 && p.hi >= 5 {
                c.claimed(p, snap("14:14:"), &[5], 100, Some(14));
                assert_eq!(c.plan().hi, 0, "resolved");
                return;
            }
            c.claimed(p, snap("14:14:"), &[], 100, None);
        }
        panic!("id 5 is never scanned again before the full pass: {c:?}");
    }

    #[test]
    fn the_full_pass_covers_everything_below_the_cursor() {
        let mut c = Cursor::new(FULL);
        step(&mut c, snap("5:5:"), &[50], 100);
        c.last_full = Instant::now() - FULL;
        let p = c.plan();
        assert_eq!((p.lo, p.hi), (0, 50));
        c.claimed(p, snap("5:5:"), &[], 100, None);
        assert_eq!(c.plan().hi, 0);
    }
}
