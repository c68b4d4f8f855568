//! One entry's options and the miss path (single-flight + lease + fill).

use std::future::Future;
use std::sync::Arc;
use std::time::{Duration, Instant};

use serde::de::DeserializeOwned;
use serde::Serialize;

use smartcache_core::fill::{acquire, new_token, store, Acquired};
use smartcache_core::invalidate::invalidate;
use smartcache_core::keys::DepId;

use crate::dep::{dep_ids, Dep};
use crate::error::Error;
use crate::flight::Joined;
use crate::inner::Inner;
use crate::lease::Lease;

/// Where a value returned by [`Entry::fetch`] came from.
///
/// ```
/// use smartcache::CacheStatus;
/// assert!(CacheStatus::Hit.is_hit());
/// assert!(!CacheStatus::Computed.is_hit());
/// assert_eq!(CacheStatus::Uncached.as_str(), "uncached");
/// ```
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum CacheStatus {
    /// Read from Redis.
    Hit,
    /// Computed here and stored.
    Computed,
    /// Computed by a concurrent miss of the same key, which this call waited
    /// for: in this process, or in another one holding the fill lease.
    Shared,
    /// Computed here and not stored: Redis was unavailable, the entry was
    /// invalidated while it was computed, or another process held the fill
    /// lease for too long.
    Uncached,
}

impl CacheStatus {
    /// True only for [`CacheStatus::Hit`].
    ///
    /// ```
    /// assert!(smartcache::CacheStatus::Hit.is_hit());
    /// ```
    pub fn is_hit(self) -> bool {
        self == CacheStatus::Hit
    }

    /// `hit`, `computed`, `shared` or `uncached`.
    ///
    /// ```
    /// assert_eq!(smartcache::CacheStatus::Shared.as_str(), "shared");
    /// ```
    pub fn as_str(self) -> &'static str {
        match self {
            CacheStatus::Hit => "hit",
            CacheStatus::Computed => "computed",
            CacheStatus::Shared => "shared",
            CacheStatus::Uncached => "uncached",
        }
    }
}

/// A value and where it came from; returned by [`Entry::fetch`].
///
/// ```no_run
/// # async fn demo(cache: smartcache::Cache) -> Result<(), smartcache::Error> {
/// let f = cache.entry("answer").fetch(|| async { Ok::<_, smartcache::Error>(42) }).await?;
/// let header = if f.status.is_hit() { "hit" } else { "miss" };
/// # Ok(()) }
/// ```
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub struct Fetched<T> {
    /// The value.
    pub value: T,
    /// Where it came from.
    pub status: CacheStatus,
}

/// One entry's key, dependencies and TTL; made by
/// [`Cache::entry`](crate::Cache::entry).
///
/// ```no_run
/// # async fn demo(cache: smartcache::Cache) -> Result<(), smartcache::Error> {
/// use smartcache::Dep;
/// let n: i64 = cache
///     .entry("product_count")
///     .depends_on(Dep::table("products"))
///     .get_or_compute(|| async { Ok::<_, smartcache::Error>(1000) })
///     .await?;
/// # Ok(()) }
/// ```
#[derive(Debug)]
#[must_use = "an entry does nothing until get_or_compute, fetch or set is called"]
pub struct Entry<'c> {
    inner: &'c Arc<Inner>,
    key: String,
    deps: Vec<Dep>,
    ttl: Option<Option<Duration>>,
}

trait Codec<T> {
    fn encode(&self, entry: &Entry<'_>, value: &T) -> Option<Vec<u8>>;
    fn decode(&self, bytes: &[u8]) -> Result<T, serde_json::Error>;
}

struct Json;

impl<T: Serialize + DeserializeOwned> Codec<T> for Json {
    fn encode(&self, entry: &Entry<'_>, value: &T) -> Option<Vec<u8>> {
        match serde_json::to_vec(value) {
            Ok(v) => Some(v),
            Err(source) => {
                let e = Error::Encode {
                    key: entry.key.clone(),
                    source,
                };
                entry
                    .inner
                    .warn_limited(&e, "value not cached: it cannot be written as JSON");
                None
            }
        }
    }

    fn decode(&self, bytes: &[u8]) -> Result<T, serde_json::Error> {
        serde_json::from_slice(bytes)
    }
}

struct Raw;

impl Codec<Vec<u8>> for Raw {
    fn encode(&self, _: &Entry<'_>, value: &Vec<u8>) -> Option<Vec<u8>> {
        Some(value.clone())
    }

    fn decode(&self, bytes: &[u8]) -> Result<Vec<u8>, serde_json::Error> {
        Ok(bytes.to_vec())
    }
}

impl<'c> Entry<'c> {
    pub(crate) fn new(inner: &'c Arc<Inner>, key: String) -> Self {
        Self {
            inner,
            key,
            deps: Vec::new(),
            ttl: None,
        }
    }

    /// Adds a dependency.
    ///
    /// ```no_run
    /// # fn demo(cache: smartcache::Cache) {
    /// let e = cache.entry("order:9").depends_on(smartcache::Dep::row("orders", [9]));
    /// # }
    /// ```
    pub fn depends_on(mut self, dep: Dep) -> Self {
        self.deps.push(dep);
        self
    }

    /// Adds dependencies.
    ///
    /// ```no_run
    /// # fn demo(cache: smartcache::Cache) {
    /// use smartcache::Dep;
    /// let e = cache.entry("order:9").deps([Dep::row("orders", [9]), Dep::table("order_lines")]);
    /// # }
    /// ```
    pub fn deps(mut self, deps: impl IntoIterator<Item = Dep>) -> Self {
        self.deps.extend(deps);
        self
    }

    /// Expires this entry after `ttl` (the default is the cache's
    /// [`default_ttl`](crate::CacheBuilder::default_ttl), normally none).
    ///
    /// ```no_run
    /// # fn demo(cache: smartcache::Cache) {
    /// let e = cache.entry("weather").ttl(std::time::Duration::from_secs(600));
    /// # }
    /// ```
    pub fn ttl(mut self, ttl: Duration) -> Self {
        self.ttl = Some(Some(ttl));
        self
    }

    /// Never expires this entry, whatever the cache's default TTL.
    ///
    /// ```no_run
    /// # fn demo(cache: smartcache::Cache) {
    /// let e = cache.entry("country_list").no_ttl();
    /// # }
    /// ```
    pub fn no_ttl(mut self) -> Self {
        self.ttl = Some(None);
        self
    }

    /// The value (JSON-decoded), computed and cached on a miss; see
    /// [`Cache::get_or_compute`](crate::Cache::get_or_compute).
    ///
    /// ```no_run
    /// # async fn demo(cache: smartcache::Cache) -> Result<(), smartcache::Error> {
    /// let v: Vec<String> = cache.entry("tags").get_or_compute(|| async { Ok::<_, smartcache::Error>(vec![]) }).await?;
    /// # Ok(()) }
    /// ```
    pub async fn get_or_compute<T, E, F, Fut>(self, compute: F) -> Result<T, E>
    where
        T: Serialize + DeserializeOwned,
        E: From<Error>,
        F: FnOnce() -> Fut,
        Fut: Future<Output = Result<T, E>>,
    {
        Ok(self.fetch(compute).await?.value)
    }

    /// Like [`Entry::get_or_compute`], and says whether the value was a hit.
    ///
    /// ```no_run
    /// # async fn demo(cache: smartcache::Cache) -> Result<(), smartcache::Error> {
    /// let f = cache.entry("tags").fetch(|| async { Ok::<_, smartcache::Error>(vec!["a".to_string()]) }).await?;
    /// println!("x-cache: {}", if f.status.is_hit() { "hit" } else { "miss" });
    /// # Ok(()) }
    /// ```
    pub async fn fetch<T, E, F, Fut>(self, compute: F) -> Result<Fetched<T>, E>
    where
        T: Serialize + DeserializeOwned,
        E: From<Error>,
        F: FnOnce() -> Fut,
        Fut: Future<Output = Result<T, E>>,
    {
        self.fetch_with(Json, compute).await
    }

    /// [`Entry::get_or_compute`] for raw bytes.
    ///
    /// ```no_run
    /// # async fn demo(cache: smartcache::Cache) -> Result<(), smartcache::Error> {
    /// let b = cache.entry("blob").get_or_compute_bytes(|| async { Ok::<_, smartcache::Error>(vec![1, 2]) }).await?;
    /// # Ok(()) }
    /// ```
    pub async fn get_or_compute_bytes<E, F, Fut>(self, compute: F) -> Result<Vec<u8>, E>
    where
        E: From<Error>,
        F: FnOnce() -> Fut,
        Fut: Future<Output = Result<Vec<u8>, E>>,
    {
        Ok(self.fetch_bytes(compute).await?.value)
    }

    /// [`Entry::fetch`] for raw bytes.
    ///
    /// ```no_run
    /// # async fn demo(cache: smartcache::Cache) -> Result<(), smartcache::Error> {
    /// let f = cache.entry("blob").fetch_bytes(|| async { Ok::<_, smartcache::Error>(vec![1, 2]) }).await?;
    /// # Ok(()) }
    /// ```
    pub async fn fetch_bytes<E, F, Fut>(self, compute: F) -> Result<Fetched<Vec<u8>>, E>
    where
        E: From<Error>,
        F: FnOnce() -> Fut,
        Fut: Future<Output = Result<Vec<u8>, E>>,
    {
        self.fetch_with(Raw, compute).await
    }

    /// Stores `value` as JSON unconditionally; see [`Cache::set`](crate::Cache::set).
    ///
    /// ```no_run
    /// # async fn demo(cache: smartcache::Cache) -> Result<(), smartcache::Error> {
    /// cache.entry("motd").ttl(std::time::Duration::from_secs(60)).set("hello").await?;
    /// # Ok(()) }
    /// ```
    pub async fn set<T: Serialize + ?Sized>(self, value: &T) -> Result<bool, Error> {
        let bytes = serde_json::to_vec(value).map_err(|source| Error::Encode {
            key: self.key.clone(),
            source,
        })?;
        self.set_bytes(&bytes).await
    }

    /// Stores raw bytes unconditionally; see [`Cache::set`](crate::Cache::set).
    ///
    /// ```no_run
    /// # async fn demo(cache: smartcache::Cache) -> Result<(), smartcache::Error> {
    /// cache.entry("blob").set_bytes(&[1, 2, 3]).await?;
    /// # Ok(()) }
    /// ```
    pub async fn set_bytes(self, value: &[u8]) -> Result<bool, Error> {
        self.inner.check_key(&self.key)?;
        let deps = dep_ids(&self.deps)?;
        let inner = &self.inner;
        let mut con = inner.con.clone();
        let ttl = self.ttl.unwrap_or(inner.default_ttl);
        let stored = inner
            .try_redis(
                "set",
                store(
                    &mut con,
                    &inner.ns,
                    &self.key,
                    value,
                    ttl,
                    inner.lease_ttl,
                    &deps,
                ),
            )
            .await
            .unwrap_or(false);
        inner.forget(&self.key);
        Ok(stored)
    }

    async fn fetch_with<T, E, F, Fut, C>(self, codec: C, compute: F) -> Result<Fetched<T>, E>
    where
        C: Codec<T>,
        E: From<Error>,
        F: FnOnce() -> Fut,
        Fut: Future<Output = Result<T, E>>,
    {
        self.inner
            .check_key(&self.key)
            .map_err(|e| E::from(e.into()))?;
        let inner = &self.inner;

        // The hit path: the local tier's copy or one GET, nothing else
        // (dependency ids are only needed, and checked, when the entry is
        // filled).
        if let Some(bytes) = inner.read(&self.key).await {
            match codec.decode(bytes.as_slice()) {
                Ok(value) => return Ok(fetched(value, CacheStatus::Hit)),
                Err(e) => self.drop_undecodable(&e).await,
            }
        }

        let deps = dep_ids(&self.deps).map_err(|e| E::from(e.into()))?;
        match inner.flights.join(&self.key) {
            Joined::Follower(follower) => {
                if let Some(bytes) = follower.wait().await {
                    if let Ok(value) = codec.decode(&bytes) {
                        return Ok(fetched(value, CacheStatus::Shared));
                    }
                }
                // The leader failed or was cancelled: compute for ourselves
                // rather than queueing behind another attempt.
                Ok(fetched(compute().await?, CacheStatus::Uncached))
            }
            Joined::Leader(leader) => {
                let (value, status) = self.lead(&codec, &deps, compute).await?;
                if let Some(bytes) = &value.1 {
                    leader.publish(bytes);
                }
                Ok(fetched(value.0, status))
            }
        }
    }

    /// The miss path of the first caller in this process: lease, compute,
    /// fill; or wait for another process's fill.
    #[allow(clippy::type_complexity)]
    async fn lead<T, E, F, Fut, C>(
        &self,
        codec: &C,
        deps: &[DepId],
        compute: F,
    ) -> Result<((T, Option<Vec<u8>>), CacheStatus), E>
    where
        C: Codec<T>,
        F: FnOnce() -> Fut,
        Fut: Future<Output = Result<T, E>>,
    {
        let inner = &self.inner;
        let mut con = inner.con.clone();
        let token = new_token();
        let deadline = Instant::now() + inner.lease_wait;
        let mut pause = Duration::from_millis(2);
        let mut dropped_bad_value = false;
        let mut waited = false;
        loop {
            let acquired = inner
                .try_redis(
                    "acquire lease",
                    acquire(
                        &mut con,
                        &inner.ns,
                        &self.key,
                        &token,
                        inner.lease_ttl,
                        deps,
                    ),
                )
                .await;
            match acquired {
                None => break,
                Some(Acquired::Value(bytes)) => match codec.decode(&bytes) {
                    Ok(value) => {
                        let status = if waited {
                            CacheStatus::Shared
                        } else {
                            CacheStatus::Hit
                        };
                        return Ok(((value, Some(bytes)), status));
                    }
                    Err(e) if !dropped_bad_value => {
                        dropped_bad_value = true;
                        self.drop_undecodable(&e).await;
                    }
                    Err(_) => break,
                },
                Some(Acquired::Lease) => {
                    let lease = Lease::new(Arc::clone(inner), &self.key, token, deps);
                    // If this future is dropped mid-way, Drop releases the lease.
                    let value = match compute().await {
                        Ok(value) => value,
                        Err(e) => {
                            lease.release().await;
                            return Err(e);
                        }
                    };
                    let Some(bytes) = codec.encode(self, &value) else {
                        lease.release().await;
                        return Ok(((value, None), CacheStatus::Uncached));
                    };
                    let filled = lease
                        .fill(&bytes, self.ttl.unwrap_or(inner.default_ttl))
                        .await;
                    inner.forget(&self.key);
                    let status = if filled {
                        CacheStatus::Computed
                    } else {
                        CacheStatus::Uncached
                    };
                    return Ok(((value, Some(bytes)), status));
                }
                Some(Acquired::HeldByOther) => {
                    let now = Instant::now();
                    if now >= deadline {
                        break;
                    }
                    waited = true;
                    tokio::time::sleep(pause.min(deadline - now)).await;
                    pause = (pause * 2).min(Duration::from_millis(50));
                }
            }
        }
        let value = compute().await?;
        let bytes = codec.encode(self, &value);
        Ok(((value, bytes), CacheStatus::Uncached))
    }

    /// A value that does not decode as the requested type (another
    /// program's, or an older version of the type) is a miss: delete it, so
    /// it is computed and stored again.
    async fn drop_undecodable(&self, e: &serde_json::Error) {
        let inner = &self.inner;
        inner.warn_limited(
            e,
            "cached value does not decode as the requested type; deleting it and recomputing \
             (if another program writes this key in another format, use a different key)",
        );
        let mut con = inner.con.clone();
        inner
            .try_redis(
                "clear undecodable value",
                invalidate(&mut con, &inner.ns, std::slice::from_ref(&self.key), &[]),
            )
            .await;
        inner.forget(&self.key);
    }
}

fn fetched<T>(value: T, status: CacheStatus) -> Fetched<T> {
    Fetched { value, status }
}
