//! What the admin view shows of an entry: size, dependencies, age.

use std::time::Duration;

use redis::RedisResult;

use crate::conn::Conn;
use crate::keys::{slot, Namespace};
use crate::registry::dependencies;
use crate::scripts::DESCRIBE;

/// Entries per script call: one call never blocks Redis for long.
const CHUNK: usize = 256;

/// One cached entry, as listed by the library's `Cache::keys` and the
/// invalidator's `keys` command.
///
/// ```
/// let info = smartcache_core::describe::KeyInfo {
///     key: "product:1".into(),
///     size_bytes: 42,
///     deps: vec!["r:public.products:1".into()],
///     age: None,
/// };
/// assert_eq!(info.deps.len(), 1);
/// ```
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct KeyInfo {
    /// The cache key (without the namespace).
    pub key: String,
    /// Size of the value in bytes (`STRLEN`; for a non-string value written
    /// by another program, Redis's `MEMORY USAGE`).
    pub size_bytes: u64,
    /// Dependency ids the entry is registered under (`t:schema.table`,
    /// `r:schema.table:row`), sorted.
    pub deps: Vec<String>,
    /// Time since the library stored the value (Redis clock), `None` for a
    /// value written by another program (or by a version before 0.1.1).
    pub age: Option<Duration>,
}

/// Describes the entries `keys` (cache keys, without the namespace), in
/// their order; keys that vanished meanwhile are left out. The
/// dependencies come from one walk of the registry
/// ([`crate::registry::dependencies`]), so describe many keys per call.
///
/// ```no_run
/// # async fn demo(mut con: smartcache_core::conn::Conn) -> redis::RedisResult<()> {
/// let ns = smartcache_core::keys::Namespace::default();
/// for info in smartcache_core::describe::describe(&mut con, &ns, &["product:1"]).await? {
///     println!("{} {} bytes", info.key, info.size_bytes);
/// }
/// # Ok(()) }
/// ```
pub async fn describe(con: &mut Conn, ns: &Namespace, keys: &[&str]) -> RedisResult<Vec<KeyInfo>> {
    if keys.is_empty() {
        return Ok(Vec::new());
    }
    let deps = dependencies(con, ns).await?;
    let entries = keys.iter().map(|k| ns.entry_keys(k)).enumerate();
    let groups = con.group(entries, |(_, e)| slot(&e.value), CHUNK);
    let calls: Vec<_> = groups
        .iter()
        .map(|group| {
            let mut inv = DESCRIBE.prepare_invoke();
            for (_, e) in group {
                inv.key(&e.value).key(&e.stamps).arg(&e.key);
            }
            inv
        })
        .collect();
    let mut out = vec![None; keys.len()];
    for (group, reply) in groups.iter().zip(con.run_script(&DESCRIBE, &calls).await?) {
        let rows: Vec<(i64, i64)> = redis::from_redis_value(reply)?;
        for ((i, e), (size, age_ms)) in group.iter().zip(rows) {
            out[*i] = u64::try_from(size).ok().map(|size_bytes| KeyInfo {
                key: e.key.clone(),
                size_bytes,
                deps: deps.get(&e.key).cloned().unwrap_or_default(),
                age: u64::try_from(age_ms).ok().map(Duration::from_millis),
            });
        }
    }
    Ok(out.into_iter().flatten().collect())
}
