//! The Redis key layout, shared by the library and the invalidator daemon.
//!
//! This module is the only place that builds Redis key names. Everything
//! lives under `{namespace}:`:
//!
//! | Redis key | holds |
//! |---|---|
//! | `{ns}:{K}` | the cached value of key `K` (readable by any client) |
//! | `{ns}:@sc:lease:{K}` | the fill lease of `K` (a token, short expiry) |
//! | `{ns}:@sc:deps:{K}` | set of dependency ids `K` is registered under |
//! | `{ns}:@sc:dep:{dep}` | set of keys that depend on `dep` |
//! | `{ns}:@sc:born:{K}` | when the library stored `K` (ms since the Unix epoch, Redis clock; same TTL as the value) |
//! | `{ns}:@sc:recent` | the daemon's last [`RECENT_LEN`] batch summaries (a list, newest first) |
//!
//! A dependency id is `t:{table}` for a whole table or
//! `r:{table}:{row}` for one row, where `{table}` is `schema.name` and
//! `{row}` is the primary key rendered as text (see [`row_id`]). `:`, `,`
//! and `%` inside table names and key values are percent-encoded so ids
//! never collide.
//!
//! Cache keys starting with the reserved marker `@sc:` are refused by the
//! library, so a user key can never alias the bookkeeping.
//!
//! ```
//! use smartcache::keys::{Namespace, TableName};
//! let ns = Namespace::new("cache").unwrap();
//! assert_eq!(ns.value_key("product:1"), "cache:product:1");
//! let t = TableName::parse("products").unwrap();
//! assert_eq!(ns.dep_set_key(&t.row_dep(&["1"])), "cache:@sc:dep:r:public.products:1");
//! ```

use std::fmt;

/// The default namespace, as in the contract.
pub const DEFAULT_NAMESPACE: &str = "cache";

/// Prefix (after `{ns}:`) reserved for smartcache's own bookkeeping.
pub const RESERVED_MARKER: &str = "@sc:";

const LEASE: &str = "@sc:lease:";
const ENTRY_DEPS: &str = "@sc:deps:";
const DEP_SET: &str = "@sc:dep:";
const BORN: &str = "@sc:born:";
const RECENT: &str = "@sc:recent";

/// How many batch summaries the daemon keeps at [`Namespace::recent_key`].
pub const RECENT_LEN: usize = 100;

/// A validated namespace: the first segment of every Redis key we touch.
///
/// ```
/// let ns = smartcache::keys::Namespace::new("shop").unwrap();
/// assert_eq!(ns.prefix(), "shop:");
/// ```
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Namespace {
    prefix: String,
}

/// Why a namespace, cache key or table name was refused.
#[derive(Debug, Clone, PartialEq, Eq)]
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
    /// use smartcache::keys::Namespace;
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
    pub fn name(&self) -> &str {
        &self.prefix[..self.prefix.len() - 1]
    }

    /// `{ns}:`, the prefix of every key in the namespace.
    pub fn prefix(&self) -> &str {
        &self.prefix
    }

    /// Redis key holding the value of cache key `key`.
    pub fn value_key(&self, key: &str) -> String {
        format!("{}{key}", self.prefix)
    }

    /// Redis key holding the fill lease of `key`.
    pub fn lease_key(&self, key: &str) -> String {
        format!("{}{LEASE}{key}", self.prefix)
    }

    /// Redis key of the set of dependency ids that `key` is registered under.
    pub fn entry_deps_key(&self, key: &str) -> String {
        format!("{}{ENTRY_DEPS}{key}", self.prefix)
    }

    /// Redis key holding when the library stored `key`: milliseconds since
    /// the Unix epoch on the Redis server's clock, written by the fill and
    /// store scripts with the value's TTL and deleted with the entry's
    /// other bookkeeping. Values written by other programs have none.
    ///
    /// ```
    /// let ns = smartcache::keys::Namespace::new("cache").unwrap();
    /// assert_eq!(ns.born_key("product:1"), "cache:@sc:born:product:1");
    /// ```
    pub fn born_key(&self, key: &str) -> String {
        format!("{}{BORN}{key}", self.prefix)
    }

    /// Redis key of the list of the invalidator's recent batch summaries
    /// (newest first, at most [`RECENT_LEN`]), shown by the admin page.
    ///
    /// ```
    /// let ns = smartcache::keys::Namespace::new("cache").unwrap();
    /// assert_eq!(ns.recent_key(), "cache:@sc:recent");
    /// ```
    pub fn recent_key(&self) -> String {
        format!("{}{RECENT}", self.prefix)
    }

    /// Redis key of the set of cache keys that depend on `dep`.
    pub fn dep_set_key(&self, dep: &DepId) -> String {
        format!("{}{DEP_SET}{}", self.prefix, dep.0)
    }

    /// The cache key `K` of a Redis key `{ns}:K`, or `None` when the Redis
    /// key is outside the namespace or is bookkeeping.
    ///
    /// ```
    /// let ns = smartcache::keys::Namespace::new("cache").unwrap();
    /// assert_eq!(ns.cache_key_of("cache:post"), Some("post"));
    /// assert_eq!(ns.cache_key_of("cache:@sc:lease:post"), None);
    /// assert_eq!(ns.cache_key_of("other:post"), None);
    /// ```
    pub fn cache_key_of<'a>(&self, redis_key: &'a str) -> Option<&'a str> {
        let k = redis_key.strip_prefix(&self.prefix)?;
        (!k.starts_with(RESERVED_MARKER)).then_some(k)
    }

    /// `SCAN MATCH` pattern for every Redis key in the namespace.
    pub fn match_all(&self) -> String {
        format!("{}*", glob_escape(&self.prefix))
    }

    /// `SCAN MATCH` pattern for every dependency set of the namespace.
    ///
    /// ```
    /// let ns = smartcache::keys::Namespace::new("cache").unwrap();
    /// assert_eq!(ns.match_dep_sets(), "cache:@sc:dep:*");
    /// ```
    pub fn match_dep_sets(&self) -> String {
        format!("{}*", glob_escape(&format!("{}{DEP_SET}", self.prefix)))
    }

    /// `SCAN MATCH` pattern for the row dependency sets of `table`.
    pub fn match_row_dep_sets(&self, table: &TableName) -> String {
        format!(
            "{}{}",
            glob_escape(&format!("{}{DEP_SET}r:{}:", self.prefix, table.encoded())),
            "*"
        )
    }

    /// `SCAN MATCH` pattern for the value keys whose cache key matches the
    /// glob `pattern` (bookkeeping keys match too when the pattern allows
    /// it; filter them with [`Namespace::cache_key_of`]).
    ///
    /// ```
    /// let ns = smartcache::keys::Namespace::new("cache").unwrap();
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
    /// let ns = smartcache::keys::Namespace::new("cache").unwrap();
    /// assert_eq!(ns.match_leases("product:*"), "cache:@sc:lease:product:*");
    /// ```
    pub fn match_leases(&self, pattern: &str) -> String {
        format!(
            "{}{pattern}",
            glob_escape(&format!("{}{LEASE}", self.prefix))
        )
    }

    /// The cache key `K` of a lease key `{ns}:@sc:lease:K`.
    ///
    /// ```
    /// let ns = smartcache::keys::Namespace::new("cache").unwrap();
    /// assert_eq!(ns.cache_key_of_lease(&ns.lease_key("product:1")), Some("product:1"));
    /// assert_eq!(ns.cache_key_of_lease("cache:product:1"), None);
    /// ```
    pub fn cache_key_of_lease<'a>(&self, redis_key: &'a str) -> Option<&'a str> {
        redis_key.strip_prefix(&self.prefix)?.strip_prefix(LEASE)
    }

    /// The dependency id of a Redis dependency-set key built by
    /// [`Namespace::dep_set_key`].
    pub fn dep_id_of(&self, redis_key: &str) -> Option<DepId> {
        redis_key
            .strip_prefix(&self.prefix)?
            .strip_prefix(DEP_SET)
            .map(|d| DepId(d.to_owned()))
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
/// assert!(smartcache::keys::check_cache_key("product:1").is_ok());
/// assert!(smartcache::keys::check_cache_key("@sc:lease:x").is_err());
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

/// The cache key (in the reserved space) that the heartbeat of the
/// invalidator's canary `id` deletes; its value lives at
/// [`Namespace::value_key`] of it, `{ns}:@sc:canary:{id}`.
///
/// ```
/// let ns = smartcache::keys::Namespace::new("cache").unwrap();
/// let key = smartcache::keys::canary_key("d1");
/// assert_eq!(ns.value_key(&key), "cache:@sc:canary:d1");
/// ```
pub fn canary_key(id: &str) -> String {
    format!("{RESERVED_MARKER}canary:{id}")
}

/// A schema-qualified table name, as the trigger reports it.
///
/// ```
/// use smartcache::keys::TableName;
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
    pub fn new(schema: impl Into<String>, name: impl Into<String>) -> Self {
        Self {
            schema: schema.into(),
            name: name.into(),
        }
    }

    /// Parses `name` or `schema.name` (split at the first `.`); an
    /// unqualified name is in schema `public`.
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
    pub fn schema(&self) -> &str {
        &self.schema
    }

    /// The table name within its schema.
    pub fn name(&self) -> &str {
        &self.name
    }

    fn encoded(&self) -> String {
        format!("{}.{}", encode(&self.schema), encode(&self.name))
    }

    /// The dependency id of the whole table.
    pub fn table_dep(&self) -> DepId {
        DepId(format!("t:{}", self.encoded()))
    }

    /// The dependency id of one row, given its primary-key values as text
    /// (in key-column order; see [`row_id`]).
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
pub struct DepId(String);

impl DepId {
    /// The id as stored in Redis sets.
    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// Wraps an id read back from Redis.
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
/// text, `%`, `:` and `,` percent-encoded, joined by `,`.
///
/// The text of a value is what PostgreSQL's JSON rendering gives without
/// quotes: `42`, `1.50`, `550e8400-e29b-41d4-a716-446655440000`,
/// `2024-05-01T10:00:00+00:00`, `true`.
///
/// ```
/// assert_eq!(smartcache::keys::row_id(&["7"]), "7");
/// assert_eq!(smartcache::keys::row_id(&["a,b", "c:d"]), "a%2Cb,c%3Ad");
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

fn encode(s: &str) -> String {
    if !s.contains(['%', ':', ',']) {
        return s.to_owned();
    }
    let mut out = String::with_capacity(s.len() + 6);
    for c in s.chars() {
        match c {
            '%' => out.push_str("%25"),
            ':' => out.push_str("%3A"),
            ',' => out.push_str("%2C"),
            c => out.push(c),
        }
    }
    out
}

/// Escapes `SCAN MATCH` glob characters so `s` matches only itself.
///
/// ```
/// assert_eq!(smartcache::keys::glob_escape("a*b[1]"), r"a\*b\[1\]");
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

/// Prepends the shared registration helpers to a script body.
macro_rules! concat_lua {
    ($body:literal) => {
        concat!(
            r#"
local ns = ARGV[1]
-- A bookkeeping key holding something other than a set (written by another
-- program) counts as empty and is deleted, rather than failing the script:
-- a failing invalidation would block the daemon's queue.
local function members(key)
  local m = redis.pcall('SMEMBERS', key)
  if m.err then return {} end
  return m
end
local function unregister(k)
  local dk = ns .. '@sc:deps:' .. k
  for _, d in ipairs(members(dk)) do
    redis.pcall('SREM', ns .. '@sc:dep:' .. d, k)
  end
  redis.call('DEL', dk)
  redis.call('DEL', ns .. '@sc:born:' .. k)
end
-- Stores a value, with a TTL in ms when ttl > 0.
local function put(k, value, ttl)
  if ttl > 0 then
    redis.call('SET', ns .. k, value, 'PX', ttl)
  else
    redis.call('SET', ns .. k, value)
  end
end
-- Creation time of a value, on the Redis clock (ms), with the value's TTL.
local function stamp(k, ttl)
  local t = redis.call('TIME')
  local ms = t[1] .. string.format('%03d', math.floor(tonumber(t[2]) / 1000))
  if ttl > 0 then
    redis.call('SET', ns .. '@sc:born:' .. k, ms, 'PX', ttl)
  else
    redis.call('SET', ns .. '@sc:born:' .. k, ms)
  end
end
local function register(k, first)
  for i = first, #ARGV do
    redis.call('SADD', ns .. '@sc:dep:' .. ARGV[i], k)
    redis.call('SADD', ns .. '@sc:deps:' .. k, ARGV[i])
  end
end
"#,
            $body
        )
    };
}

/// Lua script that forgets registrations whose entry is gone.
///
/// `ARGV[1]` is the namespace prefix, `ARGV[2]` a dependency id, then cache
/// keys that are members of its set. A member with neither a value nor a
/// lease (its value expired or was evicted; its fill failed or timed out)
/// is unregistered everywhere; a member with a lease is a fill in flight
/// and stays. Returns the number of members removed.
pub const SWEEP_LUA: &str = concat_lua!(
    r#"
local set = ns .. '@sc:dep:' .. ARGV[2]
local removed = 0
for i = 3, #ARGV do
  local k = ARGV[i]
  if redis.call('EXISTS', ns .. k, ns .. '@sc:lease:' .. k) == 0 then
    unregister(k)
    redis.pcall('SREM', set, k)
    removed = removed + 1
  end
end
return removed
"#
);

/// Lua script that invalidates entries atomically.
///
/// `ARGV[1]` is the namespace prefix (`{ns}:`), `ARGV[2]` the number `n` of
/// cache keys that follow, then `n` cache keys, then dependency ids. For a
/// cache key it deletes the value, its lease (defeating an in-flight fill)
/// and its dependency registrations; for a dependency id it does that for
/// every member of the set and deletes the set. Returns the number of
/// values deleted.
///
/// Atomicity matters: a fill registering under a dependency set while the
/// set is being emptied would otherwise lose its registration.
pub const INVALIDATE_LUA: &str = concat_lua!(
    r#"
local n = tonumber(ARGV[2])
local removed = 0
local function drop(k)
  removed = removed + redis.call('UNLINK', ns .. k)
  redis.call('UNLINK', ns .. '@sc:lease:' .. k)
  unregister(k)
end
for i = 3, 2 + n do drop(ARGV[i]) end
for i = 3 + n, #ARGV do
  local sk = ns .. '@sc:dep:' .. ARGV[i]
  local keys = members(sk)
  redis.call('UNLINK', sk)
  for _, m in ipairs(keys) do drop(m) end
end
return removed
"#
);

/// Lua script run on a miss: returns the value if it is there, else tries to
/// take the fill lease and, when it gets it, registers the dependencies
/// *before* the caller reads the database.
///
/// `ARGV`: namespace prefix, cache key, lease token, lease milliseconds,
/// then dependency ids. Returns `{1, value}` (a value is cached), `{2}`
/// (lease taken, dependencies registered) or `{0}` (another filler holds
/// the lease).
///
/// Registering at lease time is what makes a later invalidation of any
/// dependency find this key and delete its lease, so the fill that follows
/// is refused (see [`FILL_LUA`]). Stale registrations from an earlier fill
/// are replaced, so they follow the dependencies the code declares now.
pub const ACQUIRE_LUA: &str = concat_lua!(
    r#"
local k, token, lease_ms = ARGV[2], ARGV[3], ARGV[4]
local v = redis.call('GET', ns .. k)
if v then return {1, v} end
if redis.call('SET', ns .. '@sc:lease:' .. k, token, 'NX', 'PX', lease_ms) then
  unregister(k)
  register(k, 5)
  return {2}
end
return {0}
"#
);

/// Lua script that stores a computed value only if the fill lease still
/// holds our token, and drops the lease.
///
/// `ARGV`: namespace prefix, cache key, lease token, value, TTL in
/// milliseconds (`0` for none). Returns `1` if stored, `0` if the lease was
/// gone or taken over: an invalidation ran since the lease was taken, so the
/// value may be stale and must not be cached.
pub const FILL_LUA: &str = concat_lua!(
    r#"
local k, token, value, ttl = ARGV[2], ARGV[3], ARGV[4], tonumber(ARGV[5])
local lk = ns .. '@sc:lease:' .. k
if redis.call('GET', lk) ~= token then return 0 end
redis.call('DEL', lk)
put(k, value, ttl)
stamp(k, ttl)
return 1
"#
);

/// Lua script that gives a fill lease back without storing (the computation
/// failed or was cancelled), and drops the dependency registrations when no
/// value is cached, so they do not linger.
///
/// `ARGV`: namespace prefix, cache key, lease token. Returns `1` if the lease
/// was ours.
pub const RELEASE_LUA: &str = concat_lua!(
    r#"
local k, token = ARGV[2], ARGV[3]
local lk = ns .. '@sc:lease:' .. k
if redis.call('GET', lk) ~= token then return 0 end
redis.call('DEL', lk)
if redis.call('EXISTS', ns .. k) == 0 then unregister(k) end
return 1
"#
);

/// Lua script for an unconditional store: sets the value, replaces its
/// dependency registrations and deletes any fill lease, so a fill that
/// started before this write (and may carry older data) is refused.
///
/// `ARGV`: namespace prefix, cache key, value, TTL in milliseconds (`0` for
/// none), then dependency ids. Returns `1`.
pub const STORE_LUA: &str = concat_lua!(
    r#"
local k, value, ttl = ARGV[2], ARGV[3], tonumber(ARGV[4])
redis.call('DEL', ns .. '@sc:lease:' .. k)
unregister(k)
put(k, value, ttl)
stamp(k, ttl)
register(k, 5)
return 1
"#
);

/// Lua script describing cache entries for the admin view.
///
/// `ARGV`: namespace prefix, then cache keys. Returns, per key, `{size,
/// {dependency ids...}, age}`, where `size` is the value length in bytes
/// (`STRLEN`; `MEMORY USAGE` for a non-string value written by another
/// program) or `-1` if the key vanished meanwhile, and `age` the
/// milliseconds since the library stored it, `-1` if unknown.
pub const DESCRIBE_LUA: &str = concat_lua!(
    r#"
local out = {}
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
for i = 2, #ARGV do
  local k = ARGV[i]
  local t = redis.call('TYPE', ns .. k)['ok']
  local size = -1
  if t == 'string' then
    size = redis.call('STRLEN', ns .. k)
  elseif t ~= 'none' then
    size = redis.call('MEMORY', 'USAGE', ns .. k) or 0
  end
  local age = -1
  local b = redis.pcall('GET', ns .. '@sc:born:' .. k)
  local born = type(b) == 'string' and tonumber(b)
  if born then age = math.max(0, now - born) end
  out[#out + 1] = {size, members(ns .. '@sc:deps:' .. k), age}
end
return out
"#
);

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
            r"cache:@sc:dep:r:public.odd\*name:*"
        );
    }

    #[test]
    fn reserved_keys_are_not_cache_keys() {
        let ns = Namespace::new("cache").unwrap();
        assert_eq!(ns.cache_key_of("cache:@sc:dep:t:public.x"), None);
        assert_eq!(ns.cache_key_of("cache:@scx"), Some("@scx"));
    }

    #[test]
    fn dep_id_round_trips_through_its_set_key() {
        let ns = Namespace::new("cache").unwrap();
        let dep = TableName::new("s", "t").row_dep(&["1", "2"]);
        assert_eq!(ns.dep_id_of(&ns.dep_set_key(&dep)), Some(dep));
    }
}
