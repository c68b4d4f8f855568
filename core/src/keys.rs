//! The Redis key layout, shared by the library and the invalidator daemon.
//!
//! This module is the only place that builds Redis key names. Everything
//! lives under `{ns}:`:
//!
//! | Redis key | holds |
//! |---|---|
//! | `{ns}:{K}` | the cached value of key `K` (readable by any client) |
//! | `{ns}:@sc:lease:{{ns}:{K}}` | the fill lease of `K` (a token, short expiry) |
//! | `{ns}:@sc:b:{{tag}}` | stamps: one hash per slot, field `K` = when the library stored `K`, `:`, the fingerprint of its dependencies |
//! | `{ns}:@sc:r:{{tag}}{table}` | row bucket: one hash per table and slot, field `{row}` = the one key registered under the row |
//! | `{ns}:@sc:dep:{{dep}}` | set of keys that depend on `dep` (a table, or a row with two or more keys) |
//! | `{ns}:@sc:drains:{{dep}}` | invalidations of `dep` in progress: one hash field per call, the keys it took |
//! | `{ns}:@sc:drain:{{dep}}` | the same, as one set shared by all calls (before the per-call drains; read, then deleted) |
//! | `{ns}:@sc:marker:{…}` | [`MARKERS`] keys spread over the hash slots, watching for data loss |
//! | `{ns}:@sc:recent` | the daemon's last [`RECENT_LEN`] batch summaries (a list, newest first) |
//!
//! The braces are Redis Cluster hash tags; `{tag}` is [`slot_tag`] of a
//! slot: of the value key for stamps (so lease, value and stamp share a
//! slot), of the dependency id for a row bucket (so it shares the slot of
//! that row's set and drains), and every script touches one slot. On a
//! single server they are just characters. Shared hashes instead of keys of
//! their own, because a Redis key costs about 60 bytes before its name and
//! content: see [`DepKeys`].
//!
//! A dependency id is `t:{table}` for a whole table or
//! `r:{table}:{row}` for one row, where `{table}` is `schema.name` and
//! `{row}` is the primary key rendered as text (see [`row_id`]). `:`, `,`,
//! `%`, `{` and `}` inside table names and key values are percent-encoded,
//! so ids never collide and never contain a brace.
//!
//! Cache keys starting with the reserved marker `@sc:` are refused by the
//! library, so a user key can never alias the bookkeeping.
//!
//! ```
//! use smartcache_core::keys::{Namespace, TableName};
//! let ns = Namespace::new("cache").unwrap();
//! assert_eq!(ns.value_key("product:1"), "cache:product:1");
//! assert_eq!(ns.lease_key("product:1"), "cache:@sc:lease:{cache:product:1}");
//! let t = TableName::parse("products").unwrap();
//! assert_eq!(ns.dep_set_key(&t.row_dep(&["1"])), "cache:@sc:dep:{r:public.products:1}");
//! ```

use std::borrow::Cow;
use std::collections::HashMap;
use std::fmt;
use std::sync::LazyLock;

use percent_encoding::percent_encode_byte;
pub use redis::cluster_routing::Slot;

/// The default namespace, as in the contract.
///
/// ```
/// assert_eq!(smartcache_core::keys::Namespace::default().name(), smartcache_core::keys::DEFAULT_NAMESPACE);
/// ```
pub const DEFAULT_NAMESPACE: &str = "cache";

/// Prefix (after `{ns}:`) reserved for smartcache's own bookkeeping.
///
/// ```
/// assert!(smartcache_core::keys::check_cache_key("@sc:x").is_err());
/// ```
pub const RESERVED_MARKER: &str = "@sc:";

const LEASE: &str = "@sc:lease:";
const LEGACY_DEPS: &str = "@sc:deps:";
const STAMPS: &str = "@sc:b:";
const ROW_BUCKET: &str = "@sc:r:";
const DEP_SET: &str = "@sc:dep:";
const LEGACY_DRAIN: &str = "@sc:drain:";
const DRAINS: &str = "@sc:drains:";
const LEGACY_BORN: &str = "@sc:born:";
const RECENT: &str = "@sc:recent";
const MARKER: &str = "@sc:marker:";
const GENERATION: &str = "@sc:gen";
const PG_POSITION: &str = "@sc:pg";

/// How many marker keys watch the keyspace for data loss (see
/// [`Namespace::marker_keys`]): one every `16384 / MARKERS` hash slots.
///
/// ```
/// let ns = smartcache_core::keys::Namespace::default();
/// assert_eq!(ns.marker_keys().len(), smartcache_core::keys::MARKERS);
/// ```
pub const MARKERS: usize = 64;

/// How many batch summaries the daemon keeps at [`Namespace::recent_key`].
///
/// ```
/// assert_eq!(smartcache_core::keys::RECENT_LEN, 100);
/// ```
pub const RECENT_LEN: usize = 100;

/// A validated namespace: the first segment of every Redis key we touch.
///
/// ```
/// let ns = smartcache_core::keys::Namespace::new("shop").unwrap();
/// assert_eq!(ns.prefix(), "shop:");
/// ```
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Namespace {
    prefix: String,
}

/// Why a namespace, cache key or table name was refused.
#[derive(Debug, Clone, PartialEq, Eq)]
///
/// ```
/// let e = smartcache_core::keys::Namespace::new("a b").unwrap_err();
/// assert!(e.to_string().contains("not usable"));
/// ```
pub struct InvalidName(pub String);

impl fmt::Display for InvalidName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for InvalidName {}

impl Namespace {
    /// Checks the namespace: non-empty, no `:`, no whitespace, no glob
    /// characters (it ends up in `SCAN MATCH` patterns).
    ///
    /// ```
    /// use smartcache_core::keys::Namespace;
    /// assert!(Namespace::new("cache").is_ok());
    /// assert!(Namespace::new("a:b").is_err());
    /// ```
    pub fn new(name: &str) -> Result<Self, InvalidName> {
        let bad = name.is_empty()
            || name.len() > 128
            || name
                .chars()
                .any(|c| c == ':' || c.is_whitespace() || c.is_control() || "*?[]\\{}".contains(c));
        if bad {
            return Err(InvalidName(format!(
                "namespace {name:?} is not usable: use 1-128 characters without ':', spaces, \
                 braces or glob characters (*?[]\\)"
            )));
        }
        Ok(Self {
            prefix: format!("{name}:"),
        })
    }

    /// The namespace name without the trailing `:`.
    ///
    /// ```
    /// let ns = smartcache_core::keys::Namespace::new("shop").unwrap();
    /// assert_eq!(ns.name(), "shop");
    /// ```
    pub fn name(&self) -> &str {
        &self.prefix[..self.prefix.len() - 1]
    }

    /// `{ns}:`, the prefix of every key in the namespace.
    ///
    /// ```
    /// assert_eq!(smartcache_core::keys::Namespace::default().prefix(), "cache:");
    /// ```
    pub fn prefix(&self) -> &str {
        &self.prefix
    }

    /// Redis key holding the value of cache key `key`.
    ///
    /// ```
    /// let ns = smartcache_core::keys::Namespace::default();
    /// assert_eq!(ns.value_key("product:1"), "cache:product:1");
    /// ```
    pub fn value_key(&self, key: &str) -> String {
        format!("{}{key}", self.prefix)
    }

    /// `{prefix}{ns}:{key}}`: a bookkeeping key of `key`, hash-tagged with
    /// its value key so both live in one Redis Cluster slot.
    fn entry_key(&self, kind: &str, key: &str) -> String {
        format!("{p}{kind}{{{p}{key}}}", p = self.prefix)
    }

    /// Redis key holding the fill lease of `key`.
    ///
    /// ```
    /// let ns = smartcache_core::keys::Namespace::default();
    /// assert_eq!(ns.lease_key("p"), "cache:@sc:lease:{cache:p}");
    /// ```
    pub fn lease_key(&self, key: &str) -> String {
        self.entry_key(LEASE, key)
    }

    /// Redis key of the stamps hash of `key`'s hash slot: one hash per slot
    /// (hash-tagged with [`slot_tag`] of the value key's slot), field `K`
    /// holding when the library stored `K` (milliseconds since the Unix
    /// epoch on the Redis clock), then `:` and the fingerprint of the
    /// dependencies it registered `K` under (see
    /// [`crate::fingerprint`]; none from older versions). Written with the value, deleted with the
    /// entry; values written by other programs have none. One hash per slot
    /// instead of one key per entry: a Redis key costs about 60 bytes before
    /// its name and content.
    ///
    /// ```
    /// use smartcache_core::keys::{slot, Namespace};
    /// let ns = Namespace::new("cache").unwrap();
    /// let stamps = ns.stamps_key("product:1");
    /// assert!(stamps.starts_with("cache:@sc:b:{"));
    /// assert_eq!(slot(&stamps), slot(&ns.value_key("product:1")));
    /// ```
    pub fn stamps_key(&self, key: &str) -> String {
        let tag = slot_tag(slot(&self.value_key(key)));
        format!("{}{STAMPS}{{{tag}}}", self.prefix)
    }

    /// The reverse index of `key` in the per-entry layout (before the compact one: a set of
    /// dependency ids, one key per entry); only the upgrade reads it.
    ///
    /// ```
    /// let ns = smartcache_core::keys::Namespace::default();
    /// assert_eq!(ns.legacy_deps_key("p"), "cache:@sc:deps:{cache:p}");
    /// ```
    pub fn legacy_deps_key(&self, key: &str) -> String {
        self.entry_key(LEGACY_DEPS, key)
    }

    /// The birth stamp of `key` in the per-entry layout (before the compact one: one string key
    /// per entry); only the upgrade reads it.
    ///
    /// ```
    /// let ns = smartcache_core::keys::Namespace::new("cache").unwrap();
    /// assert_eq!(ns.legacy_born_key("product:1"), "cache:@sc:born:{cache:product:1}");
    /// ```
    pub fn legacy_born_key(&self, key: &str) -> String {
        self.entry_key(LEGACY_BORN, key)
    }

    /// Every Redis key of the entry `key`, in the order the scripts take
    /// them.
    ///
    /// ```
    /// let ns = smartcache_core::keys::Namespace::new("cache").unwrap();
    /// let e = ns.entry_keys("post");
    /// assert_eq!(e.value, "cache:post");
    /// assert_eq!(e.lease, "cache:@sc:lease:{cache:post}");
    /// ```
    pub fn entry_keys(&self, key: &str) -> EntryKeys {
        EntryKeys {
            value: self.value_key(key),
            lease: self.lease_key(key),
            stamps: self.stamps_key(key),
            key: key.to_owned(),
        }
    }

    /// Where the registrations under `dep` live (see [`DepKeys`]).
    ///
    /// ```
    /// use smartcache_core::keys::{slot, Namespace, TableName};
    /// let ns = Namespace::new("cache").unwrap();
    /// let t = TableName::parse("products").unwrap();
    /// let row = ns.dep_keys(&t.row_dep(&["42"]));
    /// let (bucket, field) = row.bucket.clone().unwrap();
    /// assert!(bucket.starts_with("cache:@sc:r:{") && bucket.ends_with("}public.products"));
    /// assert_eq!((field.as_str(), slot(&bucket)), ("42", slot(&row.set)));
    /// assert_eq!(ns.dep_keys(&t.table_dep()).bucket, None);
    /// ```
    pub fn dep_keys(&self, dep: &DepId) -> DepKeys {
        let bucket = dep.row_parts().map(|(table, row)| {
            let tag = slot_tag(slot(dep.as_str()));
            (
                format!("{}{ROW_BUCKET}{{{tag}}}{table}", self.prefix),
                row.to_owned(),
            )
        });
        DepKeys {
            set: self.dep_set_key(dep),
            drains: self.drains_key(dep),
            legacy_drain: self.legacy_drain_key(dep),
            bucket,
        }
    }

    /// Redis key of the list of the invalidator's recent batch summaries
    /// (newest first, at most [`RECENT_LEN`]), shown by the admin page.
    ///
    /// ```
    /// let ns = smartcache_core::keys::Namespace::new("cache").unwrap();
    /// assert_eq!(ns.recent_key(), "cache:@sc:recent");
    /// ```
    pub fn recent_key(&self) -> String {
        format!("{}{RECENT}", self.prefix)
    }

    /// The marker keys: [`MARKERS`] keys spread evenly over the Redis
    /// Cluster hash slots (one every 256 slots), so every primary that
    /// serves at least 256 contiguous slots holds some. The invalidator
    /// keeps them set; when some are gone but not all, part of the
    /// keyspace lost its data (a primary restarted empty, a failover lost
    /// writes) and dependency sets may be gone with it, so it drops every
    /// cached value. On a single server they all live or die together.
    ///
    /// ```
    /// use smartcache_core::keys::{slot, Namespace, Slot, MARKERS};
    /// let ns = Namespace::new("cache").unwrap();
    /// let markers = ns.marker_keys();
    /// assert_eq!(markers.len(), MARKERS);
    /// assert_eq!(slot(&markers[1]), Slot::new(256).unwrap());
    /// ```
    pub fn marker_keys(&self) -> Vec<String> {
        let step = 16384 / MARKERS;
        (0..MARKERS)
            .map(|i| {
                let tag = slot_tag(Slot::new((i * step) as u16).expect("below 16384"));
                format!("{}{MARKER}{{{tag}}}", self.prefix)
            })
            .collect()
    }

    /// Redis key of the generation counter the daemon bumps after each
    /// batch: on a single server one key (`slot` is `None`), on a cluster
    /// one per primary, hash-tagged to `slot` (the first slot it serves), so
    /// it lives on that primary and is written after the batch's deletions
    /// there.
    ///
    /// ```
    /// use smartcache_core::keys::{slot, Namespace};
    /// use redis::cluster_routing::Slot;
    /// let ns = Namespace::new("cache").unwrap();
    /// assert_eq!(ns.generation_key(None), "cache:@sc:gen");
    /// assert_eq!(slot(&ns.generation_key(Some(5461))), Slot::new(5461).unwrap());
    /// ```
    pub fn generation_key(&self, slot: Option<u16>) -> String {
        match slot {
            None => format!("{}{GENERATION}", self.prefix),
            Some(s) => format!(
                "{}{GENERATION}:{{{}}}",
                self.prefix,
                slot_tag(Slot::new(s % 16384).expect("below 16384"))
            ),
        }
    }

    /// Redis key where the daemon records the PostgreSQL server it applied
    /// changes from (system identifier, timeline, WAL position), to notice
    /// PostgreSQL going back in time.
    ///
    /// ```
    /// let ns = smartcache_core::keys::Namespace::new("cache").unwrap();
    /// assert_eq!(ns.postgres_position_key(), "cache:@sc:pg");
    /// ```
    pub fn postgres_position_key(&self) -> String {
        format!("{}{PG_POSITION}", self.prefix)
    }

    /// Redis key of the set of cache keys that depend on `dep`.
    ///
    /// ```
    /// use smartcache_core::keys::{Namespace, TableName};
    /// let ns = Namespace::new("cache").unwrap();
    /// let dep = TableName::parse("shop.orders").unwrap().table_dep();
    /// assert_eq!(ns.dep_set_key(&dep), "cache:@sc:dep:{t:shop.orders}");
    /// ```
    pub fn dep_set_key(&self, dep: &DepId) -> String {
        format!("{}{DEP_SET}{{{}}}", self.prefix, dep.0)
    }

    /// Redis key of the hash of the invalidations of `dep` in progress:
    /// field = the call's token, value = the cache keys it took from the
    /// dependency (MessagePack array), written once, deleted once they are
    /// dropped (same slot as the dependency set).
    ///
    /// ```
    /// use smartcache_core::keys::{Namespace, TableName};
    /// let ns = Namespace::new("cache").unwrap();
    /// let dep = TableName::parse("orders").unwrap().table_dep();
    /// assert_eq!(ns.drains_key(&dep), "cache:@sc:drains:{t:public.orders}");
    /// ```
    pub fn drains_key(&self, dep: &DepId) -> String {
        format!("{}{DRAINS}{{{}}}", self.prefix, dep.0)
    }

    /// Redis key of the drain set that invalidations of `dep` shared before
    /// the per-call drains ([`Namespace::drains_key`]): older daemons and
    /// libraries may still write it during an upgrade; invalidations read it
    /// and delete it.
    ///
    /// ```
    /// use smartcache_core::keys::{Namespace, TableName};
    /// let ns = Namespace::new("cache").unwrap();
    /// let dep = TableName::parse("orders").unwrap().table_dep();
    /// assert_eq!(ns.legacy_drain_key(&dep), "cache:@sc:drain:{t:public.orders}");
    /// ```
    pub fn legacy_drain_key(&self, dep: &DepId) -> String {
        format!("{}{LEGACY_DRAIN}{{{}}}", self.prefix, dep.0)
    }

    /// The cache key `K` of a Redis key `{ns}:K`, or `None` when the Redis
    /// key is outside the namespace or is bookkeeping.
    ///
    /// ```
    /// let ns = smartcache_core::keys::Namespace::new("cache").unwrap();
    /// assert_eq!(ns.cache_key_of("cache:post"), Some("post"));
    /// assert_eq!(ns.cache_key_of("cache:@sc:lease:post"), None);
    /// assert_eq!(ns.cache_key_of("other:post"), None);
    /// ```
    pub fn cache_key_of<'a>(&self, redis_key: &'a str) -> Option<&'a str> {
        let k = redis_key.strip_prefix(&self.prefix)?;
        (!k.starts_with(RESERVED_MARKER)).then_some(k)
    }

    /// `SCAN MATCH` pattern for every Redis key in the namespace.
    ///
    /// ```
    /// let ns = smartcache_core::keys::Namespace::default();
    /// assert_eq!(ns.match_all(), "cache:*");
    /// ```
    pub fn match_all(&self) -> String {
        format!("{}*", glob_escape(&self.prefix))
    }

    /// `SCAN MATCH` pattern for every dependency set of the namespace.
    ///
    /// ```
    /// let ns = smartcache_core::keys::Namespace::new("cache").unwrap();
    /// assert_eq!(ns.match_dep_sets(), "cache:@sc:dep:*");
    /// ```
    pub fn match_dep_sets(&self) -> String {
        format!("{}*", glob_escape(&format!("{}{DEP_SET}", self.prefix)))
    }

    /// `SCAN MATCH` pattern for the row dependency sets of `table`.
    ///
    /// ```
    /// use smartcache_core::keys::{Namespace, TableName};
    /// let t = TableName::parse("products").unwrap();
    /// assert_eq!(Namespace::default().match_row_dep_sets(&t), "cache:@sc:dep:{r:public.products:*}");
    /// ```
    pub fn match_row_dep_sets(&self, table: &TableName) -> String {
        self.match_row_keys(DEP_SET, table)
    }

    /// `SCAN MATCH` patterns for the drains hashes and the older versions'
    /// drain sets of `table`'s row dependencies: what invalidations that
    /// died midway took from them (a TRUNCATE must find those too).
    ///
    /// ```
    /// use smartcache_core::keys::{Namespace, TableName};
    /// let t = TableName::parse("products").unwrap();
    /// assert_eq!(
    ///     Namespace::default().match_row_drains(&t),
    ///     ["cache:@sc:drains:{r:public.products:*}", "cache:@sc:drain:{r:public.products:*}"]
    /// );
    /// ```
    pub fn match_row_drains(&self, table: &TableName) -> [String; 2] {
        [DRAINS, LEGACY_DRAIN].map(|kind| self.match_row_keys(kind, table))
    }

    fn match_row_keys(&self, kind: &str, table: &TableName) -> String {
        let head = format!("{}{kind}{{r:{}:", self.prefix, table.encoded());
        format!("{}*}}", glob_escape(&head))
    }

    /// `SCAN MATCH` pattern for the value keys whose cache key matches the
    /// glob `pattern` (bookkeeping keys match too when the pattern allows
    /// it; filter them with [`Namespace::cache_key_of`]).
    ///
    /// ```
    /// let ns = smartcache_core::keys::Namespace::new("cache").unwrap();
    /// assert_eq!(ns.match_cache_keys("product:*"), "cache:product:*");
    /// ```
    pub fn match_cache_keys(&self, pattern: &str) -> String {
        format!("{}{pattern}", glob_escape(&self.prefix))
    }

    /// `SCAN MATCH` pattern for the fill leases of the cache keys matching
    /// the glob `pattern`: deleting those defeats in-flight fills of keys
    /// that have no value yet (e.g. for a TRUNCATE through a key template).
    ///
    /// ```
    /// let ns = smartcache_core::keys::Namespace::new("cache").unwrap();
    /// assert_eq!(ns.match_leases("product:*"), "cache:@sc:lease:{cache:product:*}");
    /// ```
    pub fn match_leases(&self, pattern: &str) -> String {
        let head = format!("{p}{LEASE}{{{p}", p = self.prefix);
        format!("{}{pattern}}}", glob_escape(&head))
    }

    /// The cache key `K` of a lease key `{ns}:@sc:lease:K`.
    ///
    /// ```
    /// let ns = smartcache_core::keys::Namespace::new("cache").unwrap();
    /// assert_eq!(ns.cache_key_of_lease(&ns.lease_key("product:1")), Some("product:1"));
    /// assert_eq!(ns.cache_key_of_lease("cache:product:1"), None);
    /// ```
    pub fn cache_key_of_lease<'a>(&self, redis_key: &'a str) -> Option<&'a str> {
        redis_key
            .strip_prefix(&self.prefix)?
            .strip_prefix(LEASE)?
            .strip_prefix('{')?
            .strip_prefix(&self.prefix)?
            .strip_suffix('}')
    }

    /// The dependency id of a Redis dependency-set key built by
    /// [`Namespace::dep_set_key`].
    ///
    /// ```
    /// use smartcache_core::keys::{Namespace, TableName};
    /// let (ns, dep) = (Namespace::default(), TableName::parse("t").unwrap().table_dep());
    /// assert_eq!(ns.dep_id_of(&ns.dep_set_key(&dep)), Some(dep));
    /// ```
    pub fn dep_id_of(&self, redis_key: &str) -> Option<DepId> {
        self.dep_id_after(DEP_SET, redis_key)
    }

    /// The dependency id of a drains hash ([`Namespace::drains_key`]) or of
    /// an older version's drain set ([`Namespace::legacy_drain_key`]).
    ///
    /// ```
    /// use smartcache_core::keys::{Namespace, TableName};
    /// let (ns, dep) = (Namespace::default(), TableName::parse("t").unwrap().row_dep(&["1"]));
    /// assert_eq!(ns.drained_dep_of(&ns.drains_key(&dep)), Some(dep.clone()));
    /// assert_eq!(ns.drained_dep_of(&ns.legacy_drain_key(&dep)), Some(dep.clone()));
    /// assert_eq!(ns.drained_dep_of(&ns.dep_set_key(&dep)), None);
    /// ```
    pub fn drained_dep_of(&self, redis_key: &str) -> Option<DepId> {
        self.dep_id_after(DRAINS, redis_key)
            .or_else(|| self.dep_id_after(LEGACY_DRAIN, redis_key))
    }

    fn dep_id_after(&self, kind: &str, redis_key: &str) -> Option<DepId> {
        redis_key
            .strip_prefix(&self.prefix)?
            .strip_prefix(kind)?
            .strip_prefix('{')?
            .strip_suffix('}')
            .map(|d| DepId(d.to_owned()))
    }
}

impl Namespace {
    /// `SCAN MATCH` pattern for the row buckets of `table`. The glob's `*`
    /// may also match the `}` of a longer table name: check each key with
    /// [`Namespace::bookkeeping`].
    ///
    /// ```
    /// use smartcache_core::keys::{Namespace, TableName};
    /// let t = TableName::parse("products").unwrap();
    /// assert_eq!(Namespace::default().match_row_buckets(&t), "cache:@sc:r:{*}public.products");
    /// ```
    pub fn match_row_buckets(&self, table: &TableName) -> String {
        format!(
            "{}{{*}}{}",
            glob_escape(&format!("{}{ROW_BUCKET}", self.prefix)),
            glob_escape(&table.encoded())
        )
    }

    /// `SCAN MATCH` pattern for every reserved key of the namespace.
    ///
    /// ```
    /// assert_eq!(smartcache_core::keys::Namespace::default().match_bookkeeping(), "cache:@sc:*");
    /// ```
    pub fn match_bookkeeping(&self) -> String {
        format!(
            "{}*",
            glob_escape(&format!("{}{RESERVED_MARKER}", self.prefix))
        )
    }

    /// What the reserved key `redis_key` is, or `None` for a value or a
    /// key of another kind (lease, marker, drains, …).
    ///
    /// ```
    /// let ns = smartcache_core::keys::Namespace::new("cache").unwrap();
    /// assert_eq!(ns.bookkeeping(&ns.legacy_born_key("p")), Some(smartcache_core::keys::Bookkeeping::LegacyBorn("p")));
    /// ```
    pub fn bookkeeping<'a>(&self, redis_key: &'a str) -> Option<Bookkeeping<'a>> {
        let rest = redis_key.strip_prefix(&self.prefix)?;
        let entry = |kind: &str| {
            rest.strip_prefix(kind)?
                .strip_prefix('{')?
                .strip_prefix(&self.prefix)?
                .strip_suffix('}')
        };
        if let Some(dep) = self.dep_id_of(redis_key) {
            Some(Bookkeeping::DepSet(dep))
        } else if let Some(tagged) = rest.strip_prefix(ROW_BUCKET) {
            let (tag, table) = tagged.strip_prefix('{')?.split_once('}')?;
            let plain = |s: &str| !s.is_empty() && s.bytes().all(|b| b.is_ascii_digit());
            (plain(tag) && !table.is_empty() && !table.contains(['{', '}']))
                .then_some(Bookkeeping::RowBucket { table })
        } else if rest.starts_with(STAMPS) {
            Some(Bookkeeping::Stamps)
        } else if let Some(key) = entry(LEGACY_DEPS) {
            Some(Bookkeeping::LegacyDeps(key))
        } else {
            entry(LEGACY_BORN).map(Bookkeeping::LegacyBorn)
        }
    }
}

impl Default for Namespace {
    fn default() -> Self {
        Self::new(DEFAULT_NAMESPACE).expect("default namespace is valid")
    }
}

/// Checks a cache key given by a caller: non-empty and not in the reserved
/// `@sc:` space.
///
/// ```
/// assert!(smartcache_core::keys::check_cache_key("product:1").is_ok());
/// assert!(smartcache_core::keys::check_cache_key("@sc:lease:x").is_err());
/// ```
pub fn check_cache_key(key: &str) -> Result<(), InvalidName> {
    if key.is_empty() {
        return Err(InvalidName("cache key is empty".into()));
    }
    if key.starts_with(RESERVED_MARKER) {
        return Err(InvalidName(format!(
            "cache key {key:?} starts with the reserved marker {RESERVED_MARKER:?}; pick another key"
        )));
    }
    Ok(())
}

/// Checks a cache key for use on a Redis Cluster: on top of
/// [`check_cache_key`], no `{` or `}`, because an entry's bookkeeping is
/// hash-tagged with its value key and a brace in the key would move the
/// value to another slot.
///
/// ```
/// assert!(smartcache_core::keys::check_cluster_key("user:42").is_ok());
/// assert!(smartcache_core::keys::check_cluster_key("user:{42}").is_err());
/// ```
pub fn check_cluster_key(key: &str) -> Result<(), InvalidName> {
    check_cache_key(key)?;
    if key.contains(['{', '}']) {
        return Err(InvalidName(format!(
            "cache key {key:?} contains a brace; on a Redis Cluster smartcache hash-tags an \
             entry's bookkeeping with its key, so cache keys must not contain {{ or }}"
        )));
    }
    Ok(())
}

/// The Redis keys of one cache entry, all in the slot of the value key
/// (when the cache key has no braces; see [`check_cluster_key`]).
#[derive(Clone, Debug, PartialEq, Eq)]
///
/// ```
/// let e = smartcache_core::keys::Namespace::default().entry_keys("p");
/// assert_eq!((e.key.as_str(), e.value.as_str()), ("p", "cache:p"));
/// ```
pub struct EntryKeys {
    /// `{ns}:{K}`, the value.
    pub value: String,
    /// The fill lease.
    pub lease: String,
    /// The stamps hash of the value's slot; the entry's field is [`EntryKeys::key`].
    pub stamps: String,
    /// The cache key `K`.
    pub key: String,
}

impl EntryKeys {
    /// The three keys in the order the scripts take them: value, lease,
    /// stamps.
    ///
    /// ```
    /// let ns = smartcache_core::keys::Namespace::new("cache").unwrap();
    /// assert_eq!(ns.entry_keys("p").all()[0], "cache:p");
    /// ```
    pub fn all(&self) -> [&str; 3] {
        [&self.value, &self.lease, &self.stamps]
    }

    /// Whether the lease shares the value's slot: false only for a cache
    /// key with braces (written by another program), whose lease a script
    /// on a cluster cannot reach with the value.
    ///
    /// ```
    /// let ns = smartcache_core::keys::Namespace::new("cache").unwrap();
    /// assert!(ns.entry_keys("user:7").one_slot());
    /// assert!(!ns.entry_keys("user:{7}").one_slot());
    /// ```
    pub fn one_slot(&self) -> bool {
        slot(&self.value) == slot(&self.lease)
    }
}

/// Where the registrations of entries under one dependency live, all in the
/// slot of the dependency id.
///
/// A row dependency's first registrant is a field of the row bucket (one
/// hash per table and hash slot: field = the row, value = the cache key);
/// when a second key registers under the same row, both move to the
/// dependency set, as do all registrants of a table dependency. So the
/// common case (one entry per row) costs a few bytes in a shared hash
/// instead of a key of its own. The drains hash holds the members each
/// invalidation in progress took and has not finished deleting.
///
/// ```
/// use smartcache_core::keys::{Namespace, TableName};
/// let ns = Namespace::new("cache").unwrap();
/// let keys = ns.dep_keys(&TableName::parse("t").unwrap().table_dep());
/// assert_eq!(keys.set, "cache:@sc:dep:{t:public.t}");
/// assert_eq!(keys.drains, "cache:@sc:drains:{t:public.t}");
/// ```
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DepKeys {
    /// The dependency set (a Redis set of cache keys).
    pub set: String,
    /// Its drains hash (see [`Namespace::drains_key`]).
    pub drains: String,
    /// Its drain set of older versions (see [`Namespace::legacy_drain_key`]).
    pub legacy_drain: String,
    /// For a row dependency: the row bucket and the row's field in it.
    pub bucket: Option<(String, String)>,
}

/// What a reserved key of the namespace is, for the passes that walk them
/// all (the sweeper, the upgrade, the admin listing).
///
/// ```
/// use smartcache_core::keys::{Bookkeeping, Namespace, TableName};
/// let ns = Namespace::new("cache").unwrap();
/// let dep = TableName::parse("t").unwrap().row_dep(&["1"]);
/// let (bucket, _) = ns.dep_keys(&dep).bucket.unwrap();
/// assert_eq!(ns.bookkeeping(&bucket), Some(Bookkeeping::RowBucket { table: "public.t" }));
/// assert_eq!(ns.bookkeeping(&ns.dep_set_key(&dep)), Some(Bookkeeping::DepSet(dep)));
/// assert_eq!(ns.bookkeeping("cache:product:1"), None);
/// ```
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Bookkeeping<'a> {
    /// A dependency set.
    DepSet(DepId),
    /// A row bucket of the table (encoded as in dependency ids).
    RowBucket {
        /// The table part of the row dependency ids in this bucket.
        table: &'a str,
    },
    /// A stamps hash.
    Stamps,
    /// A reverse index of the per-entry layout (before the compact one), of this cache key.
    LegacyDeps(&'a str),
    /// A birth stamp of the per-entry layout (before the compact one), of this cache key.
    LegacyBorn(&'a str),
}

/// The Redis Cluster hash slot of `key` (CRC16 of the key, or of its hash
/// tag, modulo 16384), as computed by the `redis` crate's cluster routing.
///
/// ```
/// use smartcache_core::keys::{slot, Slot};
/// assert_eq!(slot("123456789"), Slot::new(12739).unwrap());
/// assert_eq!(slot("cache:@sc:lease:{cache:p:1}"), slot("cache:p:1"));
/// ```
pub fn slot(key: &str) -> Slot {
    Slot::for_key(key)
}

/// The shortest decimal number whose hash slot is `slot`: the hash tag of
/// the per-slot keys (markers, generation keys, stamps, row buckets). The
/// table is computed at build time (`core/build.rs`).
///
/// ```
/// use smartcache_core::keys::{slot, slot_tag, Slot};
/// assert_eq!(slot(slot_tag(Slot::new(42).unwrap())), Slot::new(42).unwrap());
/// ```
pub fn slot_tag(slot: Slot) -> &'static str {
    static BY_SLOT: LazyLock<HashMap<Slot, &'static str>> = LazyLock::new(|| {
        (0..SLOTS)
            .map(|i| (Slot::new(i as u16).expect("below 16384"), SLOT_TAGS[i]))
            .collect()
    });
    BY_SLOT[&slot]
}

include!(concat!(env!("OUT_DIR"), "/slot_tags.rs"));

/// Hash slots of Redis Cluster.
const SLOTS: usize = 16384;

/// The cache key (in the reserved space) that the heartbeat of the
/// invalidator's canary `id` deletes; its value lives at
/// [`Namespace::value_key`] of it, `{ns}:@sc:canary:{id}`.
///
/// ```
/// let ns = smartcache_core::keys::Namespace::new("cache").unwrap();
/// let key = smartcache_core::keys::canary_key("d1");
/// assert_eq!(ns.value_key(&key), "cache:@sc:canary:d1");
/// ```
pub fn canary_key(id: &str) -> String {
    format!("{RESERVED_MARKER}canary:{id}")
}

/// A schema-qualified table name, as the trigger reports it.
///
/// ```
/// use smartcache_core::keys::TableName;
/// let t = TableName::parse("shop.products").unwrap();
/// assert_eq!((t.schema(), t.name()), ("shop", "products"));
/// assert_eq!(TableName::parse("products").unwrap().to_string(), "public.products");
/// ```
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct TableName {
    schema: String,
    name: String,
}

impl TableName {
    /// A table in `schema`. Names are taken literally (case-sensitive, no
    /// SQL case folding).
    ///
    /// ```
    /// let t = smartcache_core::keys::TableName::new("shop", "a.b");
    /// assert_eq!(t.name(), "a.b");
    /// ```
    pub fn new(schema: impl Into<String>, name: impl Into<String>) -> Self {
        Self {
            schema: schema.into(),
            name: name.into(),
        }
    }

    /// Parses `name` or `schema.name` (split at the first `.`); an
    /// unqualified name is in schema `public`.
    ///
    /// ```
    /// use smartcache_core::keys::TableName;
    /// assert_eq!(TableName::parse("shop.orders").unwrap(), TableName::new("shop", "orders"));
    /// assert!(TableName::parse(".x").is_err());
    /// ```
    pub fn parse(s: &str) -> Result<Self, InvalidName> {
        let (schema, name) = match s.split_once('.') {
            Some((schema, name)) => (schema, name),
            None => ("public", s),
        };
        if schema.is_empty() || name.is_empty() || name.len() > 63 || schema.len() > 63 {
            return Err(InvalidName(format!(
                "table name {s:?} is not usable: write `table` or `schema.table`, each part 1-63 bytes"
            )));
        }
        Ok(Self::new(schema, name))
    }

    /// The schema.
    ///
    /// ```
    /// assert_eq!(smartcache_core::keys::TableName::parse("t").unwrap().schema(), "public");
    /// ```
    pub fn schema(&self) -> &str {
        &self.schema
    }

    /// The table name within its schema.
    ///
    /// ```
    /// assert_eq!(smartcache_core::keys::TableName::parse("s.t").unwrap().name(), "t");
    /// ```
    pub fn name(&self) -> &str {
        &self.name
    }

    fn encoded(&self) -> String {
        format!("{}.{}", encode(&self.schema), encode(&self.name))
    }

    /// The dependency id of the whole table.
    ///
    /// ```
    /// let t = smartcache_core::keys::TableName::parse("products").unwrap();
    /// assert_eq!(t.table_dep().as_str(), "t:public.products");
    /// ```
    pub fn table_dep(&self) -> DepId {
        DepId(format!("t:{}", self.encoded()))
    }

    /// The dependency id of one row, given its primary-key values as text
    /// (in key-column order; see [`row_id`]).
    ///
    /// ```
    /// let t = smartcache_core::keys::TableName::parse("order_lines").unwrap();
    /// assert_eq!(t.row_dep(&["1001", "3"]).as_str(), "r:public.order_lines:1001,3");
    /// ```
    pub fn row_dep<S: AsRef<str>>(&self, pk: &[S]) -> DepId {
        DepId(format!("r:{}:{}", self.encoded(), row_id(pk)))
    }
}

impl fmt::Display for TableName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}.{}", self.schema, self.name)
    }
}

/// A dependency id: `t:{table}` or `r:{table}:{row}`.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
///
/// ```
/// let dep = smartcache_core::keys::DepId::from_raw("t:public.products");
/// assert_eq!(dep.to_string(), "t:public.products");
/// ```
pub struct DepId(String);

impl DepId {
    /// The id as stored in Redis sets.
    ///
    /// ```
    /// let t = smartcache_core::keys::TableName::parse("p").unwrap();
    /// assert_eq!(t.row_dep(&["7"]).as_str(), "r:public.p:7");
    /// ```
    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// The row dependency `row` (as stored in a row bucket) of the table
    /// `table` (encoded, as [`Bookkeeping::RowBucket`] gives it).
    ///
    /// ```
    /// use smartcache_core::keys::{DepId, TableName};
    /// assert_eq!(DepId::row("public.p", "7"), TableName::parse("p").unwrap().row_dep(&["7"]));
    /// ```
    pub fn row(table: &str, row: &str) -> Self {
        Self(format!("r:{table}:{row}"))
    }

    /// `(table, row)` of a row dependency, both encoded; `None` for a
    /// table dependency.
    fn row_parts(&self) -> Option<(&str, &str)> {
        self.0.strip_prefix("r:")?.split_once(':')
    }

    /// Wraps an id read back from Redis.
    ///
    /// ```
    /// use smartcache_core::keys::{DepId, TableName};
    /// assert_eq!(DepId::from_raw("t:public.p"), TableName::parse("p").unwrap().table_dep());
    /// ```
    pub fn from_raw(raw: impl Into<String>) -> Self {
        Self(raw.into())
    }
}

impl fmt::Display for DepId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// Renders a primary key as the row part of a dependency id: each value as
/// text, `%`, `:`, `,`, `{` and `}` percent-encoded, joined by `,`.
///
/// The text of a value is what PostgreSQL's JSON rendering gives without
/// quotes: `42`, `1.50`, `550e8400-e29b-41d4-a716-446655440000`,
/// `2024-05-01T10:00:00+00:00`, `true`.
///
/// ```
/// assert_eq!(smartcache_core::keys::row_id(&["7"]), "7");
/// assert_eq!(smartcache_core::keys::row_id(&["a,b", "c:d"]), "a%2Cb,c%3Ad");
/// ```
pub fn row_id<S: AsRef<str>>(pk: &[S]) -> String {
    let mut out = String::new();
    for (i, v) in pk.iter().enumerate() {
        if i > 0 {
            out.push(',');
        }
        out.push_str(&encode(v.as_ref()));
    }
    out
}

/// The characters [`row_id`] and table names encode: the separators of a
/// dependency id, the hash-tag braces, and `%` itself.
const RESERVED_IN_IDS: [char; 5] = ['%', ':', ',', '{', '}'];

/// `%XX`-encodes [`RESERVED_IN_IDS`]; all other text, non-ASCII included,
/// stays as it is (`percent_encoding::utf8_percent_encode` would encode
/// non-ASCII bytes too, and ids in Redis hold them literally).
fn encode(s: &str) -> Cow<'_, str> {
    if !s.contains(RESERVED_IN_IDS) {
        return Cow::Borrowed(s);
    }
    let mut out = String::with_capacity(s.len() + 6);
    for c in s.chars() {
        if RESERVED_IN_IDS.contains(&c) {
            out.push_str(percent_encode_byte(c as u8));
        } else {
            out.push(c);
        }
    }
    Cow::Owned(out)
}

/// Escapes `SCAN MATCH` glob characters so `s` matches only itself.
///
/// ```
/// assert_eq!(smartcache_core::keys::glob_escape("a*b[1]"), r"a\*b\[1\]");
/// ```
pub fn glob_escape(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        if "*?[]\\^".contains(c) {
            out.push('\\');
        }
        out.push(c);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn row_ids_of_different_keys_never_collide() {
        assert_ne!(row_id(&["a,b", "c"]), row_id(&["a", "b,c"]));
        assert_ne!(row_id(&["a:b"]), row_id(&["a", "b"]));
        assert_ne!(row_id(&["%2C"]), row_id(&[","]));
    }

    #[test]
    fn table_names_with_separators_stay_distinct() {
        let a = TableName::new("public", "a:b");
        let b = TableName::new("public", "a");
        assert_ne!(a.row_dep(&["c"]), b.row_dep(&["b:c"]));
    }

    #[test]
    fn row_dep_set_pattern_escapes_glob_characters() {
        let ns = Namespace::new("cache").unwrap();
        let t = TableName::new("public", "odd*name");
        assert_eq!(
            ns.match_row_dep_sets(&t),
            r"cache:@sc:dep:{r:public.odd\*name:*}"
        );
    }

    #[test]
    fn reserved_keys_are_not_cache_keys() {
        let ns = Namespace::new("cache").unwrap();
        assert_eq!(ns.cache_key_of("cache:@sc:dep:{t:public.x}"), None);
        assert_eq!(ns.cache_key_of("cache:@scx"), Some("@scx"));
    }

    #[test]
    fn dep_id_round_trips_through_its_set_key() {
        let ns = Namespace::new("cache").unwrap();
        let dep = TableName::new("s", "t").row_dep(&["1", "2"]);
        assert_eq!(ns.dep_id_of(&ns.dep_set_key(&dep)), Some(dep));
    }

    #[test]
    fn entry_bookkeeping_shares_the_value_slot() {
        let ns = Namespace::new("cache").unwrap();
        for key in ["product:1", "a", "x y", "@scx", "café:ü"] {
            let e = ns.entry_keys(key);
            let s = slot(&e.value);
            assert_eq!([slot(&e.lease), slot(&e.stamps)], [s; 2], "{key}");
        }
    }

    #[test]
    fn dependency_and_drain_sets_and_row_buckets_share_a_slot() {
        let ns = Namespace::new("cache").unwrap();
        let t = TableName::new("we{ird", "t}ab");
        for dep in [t.table_dep(), t.row_dep(&["{1}", "}"]), t.row_dep(&["a:b"])] {
            assert!(!dep.as_str().contains(['{', '}']), "{dep}");
            let keys = ns.dep_keys(&dep);
            assert_eq!(slot(&keys.set), slot(&keys.drains));
            assert_eq!(slot(&keys.set), slot(&keys.legacy_drain));
            assert_eq!(slot(&keys.set), slot(dep.as_str()));
            if let Some((bucket, field)) = keys.bucket {
                assert_eq!(slot(&bucket), slot(&keys.set), "{bucket}");
                let Some(Bookkeeping::RowBucket { table }) = ns.bookkeeping(&bucket) else {
                    panic!("{bucket}");
                };
                assert_eq!(DepId::row(table, &field), dep);
            }
        }
    }

    #[test]
    fn brace_keys_still_have_their_stamps_in_the_value_slot() {
        let ns = Namespace::new("cache").unwrap();
        let e = ns.entry_keys("user:{7}");
        assert_eq!(slot(&e.stamps), slot(&e.value));
        assert_eq!(slot(&e.value), slot("7"));
    }

    #[test]
    fn every_slot_has_a_short_tag_of_its_own() {
        for s in 0..16384u16 {
            let tag = slot_tag(Slot::new(s).unwrap());
            assert!(tag.len() <= 6, "{tag}");
            assert_eq!(slot(tag), Slot::new(s).unwrap(), "{tag}");
        }
    }

    #[test]
    fn bookkeeping_kinds_are_told_apart() {
        let ns = Namespace::new("cache").unwrap();
        let t = TableName::parse("a.b").unwrap();
        let (bucket, _) = ns.dep_keys(&t.row_dep(&["1"])).bucket.unwrap();
        let longer = bucket.replace("}a.b", "}x.a.b");
        assert_eq!(
            ns.bookkeeping(&longer),
            Some(Bookkeeping::RowBucket { table: "x.a.b" })
        );
        assert_eq!(
            ns.bookkeeping(&ns.stamps_key("k")),
            Some(Bookkeeping::Stamps)
        );
        assert_eq!(
            ns.bookkeeping(&ns.legacy_deps_key("k")),
            Some(Bookkeeping::LegacyDeps("k"))
        );
        assert_eq!(ns.bookkeeping(&ns.lease_key("k")), None);
        assert_eq!(ns.bookkeeping(&ns.drains_key(&t.table_dep())), None);
        assert_eq!(ns.bookkeeping(&ns.legacy_drain_key(&t.table_dep())), None);
        assert_eq!(ns.bookkeeping("cache:@sc:r:{x}public.t"), None);
    }

    #[test]
    fn lease_keys_round_trip() {
        let ns = Namespace::new("cache").unwrap();
        for key in ["p:1", "}", "{x}", "a{b"] {
            assert_eq!(ns.cache_key_of_lease(&ns.lease_key(key)), Some(key));
        }
    }

    #[test]
    fn slot_follows_redis_hash_tag_rules() {
        // Values from the Redis Cluster specification's examples.
        assert_eq!(slot("{user1000}.following"), slot("user1000"));
        assert_eq!(slot("foo{}{bar}"), slot("foo{}{bar}"));
        assert_ne!(slot("foo{}{bar}"), slot("bar"));
        assert_eq!(slot("foo{{bar}}zap"), slot("{bar"));
        assert_eq!(slot("foo{bar}{zap}"), slot("bar"));
        assert_eq!(slot("foo"), Slot::new(12182).unwrap());
    }

    /// The hand-written CRC16 and encoder this module had before it used
    /// the `redis` and `percent-encoding` crates: the layout must not move.
    mod before {
        pub(super) fn slot(key: &str) -> u16 {
            let bytes = key.as_bytes();
            let tagged = bytes.iter().position(|&b| b == b'{').and_then(|open| {
                let rest = &bytes[open + 1..];
                let close = rest.iter().position(|&b| b == b'}')?;
                (close > 0).then(|| &rest[..close])
            });
            crc16(tagged.unwrap_or(bytes)) % 16384
        }

        fn crc16(data: &[u8]) -> u16 {
            let mut crc: u16 = 0;
            for &b in data {
                crc ^= u16::from(b) << 8;
                for _ in 0..8 {
                    crc = if crc & 0x8000 != 0 {
                        (crc << 1) ^ 0x1021
                    } else {
                        crc << 1
                    };
                }
            }
            crc
        }

        pub(super) fn encode(s: &str) -> String {
            let mut out = String::new();
            for c in s.chars() {
                match c {
                    '%' => out.push_str("%25"),
                    ':' => out.push_str("%3A"),
                    ',' => out.push_str("%2C"),
                    '{' => out.push_str("%7B"),
                    '}' => out.push_str("%7D"),
                    c => out.push(c),
                }
            }
            out
        }

        /// The marker tags as first computed: the shortest decimal number
        /// hashing to each multiple of 256.
        pub(super) fn marker_tags() -> Vec<String> {
            let mut tags = vec![String::new(); 64];
            let mut n: u64 = 0;
            while tags.iter().any(String::is_empty) {
                let s = n.to_string();
                let hashed = crc16(s.as_bytes()) % 16384;
                if hashed.is_multiple_of(256) && tags[usize::from(hashed / 256)].is_empty() {
                    tags[usize::from(hashed / 256)] = s;
                }
                n += 1;
            }
            tags
        }
    }

    /// Strings over an alphabet of separators, braces, glob and non-ASCII
    /// characters, from a fixed-seed generator.
    fn samples() -> Vec<String> {
        let alphabet: Vec<char> = "ab1:,%{}*? é€🦀\\n".chars().collect();
        let mut state: u64 = 0x5eed;
        let mut next = move || {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            state
        };
        (0..2000)
            .map(|_| {
                let len = (next() % 12) as usize;
                (0..len)
                    .map(|_| alphabet[(next() % alphabet.len() as u64) as usize])
                    .collect()
            })
            .collect()
    }

    #[test]
    fn slots_are_the_ones_computed_before() {
        let ns = Namespace::new("cache").unwrap();
        for s in samples() {
            let dep = TableName::new("public", "t").row_dep(&[&s]);
            for key in [s.clone(), ns.lease_key(&s), ns.dep_set_key(&dep)] {
                assert_eq!(
                    slot(&key),
                    Slot::new(before::slot(&key)).unwrap(),
                    "{key:?}"
                );
            }
        }
    }

    #[test]
    fn marker_keys_are_the_ones_computed_before() {
        let ns = Namespace::new("cache").unwrap();
        let expected: Vec<String> = before::marker_tags()
            .iter()
            .map(|t| format!("cache:@sc:marker:{{{t}}}"))
            .collect();
        assert_eq!(ns.marker_keys(), expected);
    }

    #[test]
    fn ids_are_encoded_as_before() {
        for s in samples() {
            assert_eq!(encode(&s), before::encode(&s), "{s:?}");
            assert_eq!(row_id(&[&s, "x"]), format!("{},x", before::encode(&s)));
        }
    }
}
