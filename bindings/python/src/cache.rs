//! `Cache`: the library's `Cache` with a synchronous and an asyncio API.

use std::future::Future;
use std::time::Duration;

use pyo3::exceptions::{PyTypeError, PyValueError};
use pyo3::prelude::*;
use pyo3::types::{PyDelta, PyDict};
use smartcache::Fetched;

use crate::dep::Dep;
use crate::errors::{to_py, Failure};
use crate::json::{dumps, loads, Json};
use crate::wait::wait;

/// A handle on the cache: share one per process (threads and asyncio
/// tasks alike). Built after a fork, not before: its connection lives on
/// background threads.
///
/// ``url`` is ``redis://[user:password@]host[:port][/db]`` (with
/// ``cluster=True``, seed nodes separated by commas; ``rediss://`` for
/// TLS; ``redis+sentinel://host:port,host:port/service[/db]`` for the
/// primary that Redis Sentinel names). ``namespace`` must match the
/// invalidator's. Durations are seconds (``float``) or ``timedelta``.
///
/// With ``rediss://``, ``ca_file`` is a PEM file of the CA to trust
/// instead of the system's roots, and ``client_cert_file`` with
/// ``client_key_file`` a client certificate for servers that require one.
///
/// By default the constructor checks that Redis answers and raises
/// ``RedisUnavailable`` if not; with ``lazy=True`` it never waits for
/// Redis, and while Redis is down every call computes uncached.
///
/// >>> cache = Cache("redis://127.0.0.1:6379/0", namespace="shop")
/// >>> cache.get_or_compute("answer", [Dep.table("answers")], lambda: 42)
/// 42
#[pyclass(module = "smartcache", frozen)]
pub(crate) struct Cache {
    inner: smartcache::Cache,
}

/// A cached entry as `Cache.keys` lists it.
#[pyclass(module = "smartcache", frozen, get_all)]
pub(crate) struct KeyInfo {
    /// The cache key, without the namespace.
    key: String,
    /// Size of the value in bytes.
    size_bytes: u64,
    /// Dependency ids the entry is registered under, sorted.
    deps: Vec<String>,
    /// Seconds since the library stored the value; ``None`` for a value
    /// another program wrote.
    age: Option<f64>,
}

#[pymethods]
impl KeyInfo {
    fn __repr__(&self) -> String {
        let age = self.age.map_or("None".to_owned(), |a| format!("{a:.3}"));
        format!(
            "<KeyInfo {:?} {} bytes deps={:?} age={age}>",
            self.key, self.size_bytes, self.deps
        )
    }
}

impl From<smartcache::KeyInfo> for KeyInfo {
    fn from(k: smartcache::KeyInfo) -> Self {
        Self {
            key: k.key,
            size_bytes: k.size_bytes,
            deps: k.deps,
            age: k.age.map(|a| a.as_secs_f64()),
        }
    }
}

/// Seconds or a `timedelta` as a `Duration`.
fn duration(name: &str, v: &Bound<'_, PyAny>) -> PyResult<Duration> {
    if v.is_instance_of::<PyDelta>() {
        return v.extract();
    }
    let secs: f64 = v
        .extract()
        .map_err(|_| PyTypeError::new_err(format!("{name} must be seconds or a timedelta")))?;
    Duration::try_from_secs_f64(secs).map_err(|_| {
        PyValueError::new_err(format!("{name} must be a finite, non-negative duration"))
    })
}

fn durations(name: &str, v: Option<&Bound<'_, PyAny>>) -> PyResult<Option<Duration>> {
    v.filter(|v| !v.is_none())
        .map(|v| duration(name, v))
        .transpose()
}

fn deps(deps: &Bound<'_, PyAny>) -> PyResult<Vec<smartcache::Dep>> {
    if deps.is_instance_of::<pyo3::types::PyString>() {
        return Err(PyTypeError::new_err(
            "deps must be a list of Dep, not a string",
        ));
    }
    deps.try_iter()
        .map_err(|_| PyTypeError::new_err("deps must be a list of Dep"))?
        .map(|d| {
            let d = d?;
            let d = d.cast::<Dep>().map_err(|_| {
                PyTypeError::new_err("deps must contain Dep.table(...) or Dep.row(...) values")
            })?;
            Ok(d.get().dep.clone())
        })
        .collect()
}

/// The value `compute()` returned, as JSON. A coroutine here means the
/// caller wanted the asyncio API.
fn compute_sync(compute: &Py<PyAny>) -> Result<Json, Failure> {
    Python::attach(|py| {
        let value = compute.call0(py)?;
        let value = value.bind(py);
        if value.hasattr("__await__")? {
            if value.hasattr("close")? {
                value.call_method0("close")?; // no "never awaited" warning
            }
            return Err(PyTypeError::new_err(
                "compute returned an awaitable; use aget_or_compute or afetch from async code",
            )
            .into());
        }
        Ok(dumps(py, value)?)
    })
}

/// The value of `compute()`, awaited if it is awaitable, as JSON.
async fn compute_async(compute: Py<PyAny>) -> Result<Json, Failure> {
    enum Called {
        Value(Json),
        Awaiting(Py<PyAny>),
    }
    let called = Python::attach(|py| -> PyResult<Called> {
        let value = compute.call0(py)?;
        if value.bind(py).hasattr("__await__")? {
            Ok(Called::Awaiting(value))
        } else {
            Ok(Called::Value(dumps(py, value.bind(py))?))
        }
    })?;
    let awaitable = match called {
        Called::Value(json) => return Ok(json),
        Called::Awaiting(a) => a,
    };
    let future =
        Python::attach(|py| pyo3_async_runtimes::tokio::into_future(awaitable.into_bound(py)))?;
    let value = future.await?;
    Ok(Python::attach(|py| dumps(py, value.bind(py)))?)
}

/// The local tier's bounds when only the other one is given.
const LOCAL_MAX_BYTES: u64 = 64 << 20;
const LOCAL_MAX_ENTRIES: u64 = 100_000;

type FetchResult = Result<Fetched<Json>, Failure>;

fn fetched(py: Python<'_>, f: FetchResult) -> PyResult<(Py<PyAny>, &'static str)> {
    let f = f?;
    Ok((loads(py, &f.value)?, f.status.as_str()))
}

/// Runs a library call to completion for the synchronous API, with the
/// GIL released meanwhile.
fn blocking<T: Send>(py: Python<'_>, fut: impl Future<Output = T> + Send) -> PyResult<T> {
    py.detach(|| wait(fut))
}

/// A library call as a Python awaitable.
fn awaitable<'py, T>(
    py: Python<'py>,
    fut: impl Future<Output = PyResult<T>> + Send + 'static,
) -> PyResult<Bound<'py, PyAny>>
where
    T: for<'a> IntoPyObject<'a> + Send + 'static,
{
    crate::wait::runtime()?;
    pyo3_async_runtimes::tokio::future_into_py(py, fut)
}

impl Cache {
    fn fetch_future<F, Fut>(
        &self,
        key: String,
        deps: Vec<smartcache::Dep>,
        ttl: Option<Duration>,
        compute: F,
    ) -> impl Future<Output = FetchResult> + Send + 'static
    where
        F: FnOnce() -> Fut + Send + 'static,
        Fut: Future<Output = Result<Json, Failure>> + Send,
    {
        let cache = self.inner.clone();
        async move {
            let mut entry = cache.entry(key).deps(deps);
            if let Some(ttl) = ttl {
                entry = entry.ttl(ttl);
            }
            entry.fetch(compute).await
        }
    }
}

#[pymethods]
impl Cache {
    #[new]
    #[pyo3(signature = (
        url = "redis://127.0.0.1:6379/0",
        namespace = "cache",
        cluster = false,
        *,
        lazy = false,
        default_ttl = None,
        lease_ttl = None,
        lease_wait = None,
        timeout = None,
        connect_timeout = None,
        breaker_cooldown = None,
        clear_on_start = false,
        local_max_bytes = None,
        local_max_entries = None,
        local_max_lag = None,
        ca_file = None,
        client_cert_file = None,
        client_key_file = None,
    ))]
    #[allow(clippy::too_many_arguments)]
    fn new(
        py: Python<'_>,
        url: &str,
        namespace: &str,
        cluster: bool,
        lazy: bool,
        default_ttl: Option<&Bound<'_, PyAny>>,
        lease_ttl: Option<&Bound<'_, PyAny>>,
        lease_wait: Option<&Bound<'_, PyAny>>,
        timeout: Option<&Bound<'_, PyAny>>,
        connect_timeout: Option<&Bound<'_, PyAny>>,
        breaker_cooldown: Option<&Bound<'_, PyAny>>,
        clear_on_start: bool,
        local_max_bytes: Option<u64>,
        local_max_entries: Option<u64>,
        local_max_lag: Option<&Bound<'_, PyAny>>,
        ca_file: Option<std::path::PathBuf>,
        client_cert_file: Option<std::path::PathBuf>,
        client_key_file: Option<std::path::PathBuf>,
    ) -> PyResult<Self> {
        let mut b = smartcache::Cache::builder(url)
            .namespace(namespace)
            .cluster(cluster)
            .default_ttl(durations("default_ttl", default_ttl)?)
            .clear_on_start(clear_on_start);
        if let Some(d) = durations("lease_ttl", lease_ttl)? {
            b = b.lease_ttl(d);
        }
        if let Some(d) = durations("lease_wait", lease_wait)? {
            b = b.lease_wait(d);
        }
        if let Some(d) = durations("timeout", timeout)? {
            b = b.timeout(d);
        }
        if let Some(d) = durations("connect_timeout", connect_timeout)? {
            b = b.connect_timeout(d);
        }
        if let Some(d) = durations("breaker_cooldown", breaker_cooldown)? {
            b = b.breaker_cooldown(d);
        }
        if local_max_bytes.is_some() || local_max_entries.is_some() {
            b = b.local(
                local_max_bytes.unwrap_or(LOCAL_MAX_BYTES),
                local_max_entries.unwrap_or(LOCAL_MAX_ENTRIES),
            );
        }
        if let Some(d) = durations("local_max_lag", local_max_lag)? {
            b = b.local_max_lag(d);
        }
        if let Some(ca) = ca_file {
            b = b.ca_file(ca);
        }
        match (client_cert_file, client_key_file) {
            (Some(cert), Some(key)) => b = b.client_cert(cert, key),
            (None, None) => {}
            _ => {
                return Err(PyValueError::new_err(
                    "client_cert_file and client_key_file go together: give both or neither",
                ))
            }
        }
        let built = blocking(py, async move {
            if lazy {
                b.build_lazy().await
            } else {
                b.build().await
            }
        })?;
        Ok(Self {
            inner: built.map_err(to_py)?,
        })
    }

    /// The namespace: every Redis key of this cache starts with
    /// ``{namespace}:``.
    #[getter]
    fn namespace(&self) -> &str {
        self.inner.namespace().name()
    }

    /// The value of ``key``, computed by ``compute()`` and cached on a
    /// miss, registered under ``deps`` (a list of ``Dep``).
    ///
    /// Concurrent misses in this process share one computation; across
    /// processes a fill lease lets one compute while the others wait. A
    /// value computed from data read before a commit is never stored after
    /// that commit's invalidation. If Redis is down, the value is computed
    /// and returned uncached.
    ///
    /// Values are stored as JSON, and a hit and a miss return the same
    /// thing: what ``json.loads(json.dumps(value))`` gives (tuples come
    /// back as lists). An exception raised by ``compute`` propagates
    /// unchanged and gives the lease back; a value that is not JSON raises
    /// ``TypeError`` or ``ValueError`` from ``json``. ``ttl`` (seconds or
    /// ``timedelta``) overrides the cache's ``default_ttl``.
    ///
    /// The GIL is released while waiting on Redis. ``compute`` runs on the
    /// calling thread and may use the cache itself.
    ///
    /// >>> cache.get_or_compute("product:1", [Dep.row("products", 1)], lambda: load_product(1))
    /// {'id': 1, 'name': 'Teapot'}
    #[pyo3(signature = (key, deps, compute, *, ttl = None))]
    fn get_or_compute(
        &self,
        py: Python<'_>,
        key: String,
        deps: &Bound<'_, PyAny>,
        compute: Py<PyAny>,
        ttl: Option<&Bound<'_, PyAny>>,
    ) -> PyResult<Py<PyAny>> {
        Ok(self.fetch(py, key, deps, compute, ttl)?.0)
    }

    /// Like ``get_or_compute``, and says where the value came from:
    /// returns ``(value, status)`` with status ``"hit"``, ``"computed"``
    /// (here, and stored), ``"shared"`` (computed by a concurrent miss this
    /// call waited for) or ``"uncached"`` (computed here, not stored: Redis
    /// down, invalidated meanwhile, or another process held the lease too
    /// long).
    ///
    /// >>> value, status = cache.fetch("product:1", [Dep.row("products", 1)], lambda: 1)
    #[pyo3(signature = (key, deps, compute, *, ttl = None))]
    fn fetch(
        &self,
        py: Python<'_>,
        key: String,
        deps: &Bound<'_, PyAny>,
        compute: Py<PyAny>,
        ttl: Option<&Bound<'_, PyAny>>,
    ) -> PyResult<(Py<PyAny>, &'static str)> {
        let fut = self.fetch_future(
            key,
            self::deps(deps)?,
            durations("ttl", ttl)?,
            move || async move { compute_sync(&compute) },
        );
        let out = blocking(py, fut)?;
        fetched(py, out)
    }

    /// ``get_or_compute`` for asyncio code: ``await
    /// cache.aget_or_compute(key, deps, compute)``. ``compute`` may be an
    /// async function (awaited on the calling event loop) or a plain one
    /// (called on smartcache's worker thread, so keep it quick).
    ///
    /// >>> async def product(pk):
    /// ...     return await cache.aget_or_compute(f"product:{pk}", [Dep.row("products", pk)], lambda: load(pk))
    #[pyo3(signature = (key, deps, compute, *, ttl = None))]
    fn aget_or_compute<'py>(
        &self,
        py: Python<'py>,
        key: String,
        deps: &Bound<'_, PyAny>,
        compute: Py<PyAny>,
        ttl: Option<&Bound<'_, PyAny>>,
    ) -> PyResult<Bound<'py, PyAny>> {
        self.afetch_then(py, key, deps, compute, ttl, |(value, _)| value)
    }

    /// ``fetch`` for asyncio code: ``value, status = await cache.afetch(...)``.
    #[pyo3(signature = (key, deps, compute, *, ttl = None))]
    fn afetch<'py>(
        &self,
        py: Python<'py>,
        key: String,
        deps: &Bound<'_, PyAny>,
        compute: Py<PyAny>,
        ttl: Option<&Bound<'_, PyAny>>,
    ) -> PyResult<Bound<'py, PyAny>> {
        self.afetch_then(py, key, deps, compute, ttl, |fetched| fetched)
    }

    /// The cached value of ``key``, or ``None``: also when Redis is
    /// unavailable or the value is not JSON (both logged).
    ///
    /// >>> cache.get("product:1")
    /// {'id': 1, 'name': 'Teapot'}
    fn get(&self, py: Python<'_>, key: String) -> PyResult<Option<Py<PyAny>>> {
        let cache = self.inner.clone();
        let out = blocking(py, async move { cache.get::<Json>(&key).await })?;
        out.map_err(to_py)?.map(|v| loads(py, &v)).transpose()
    }

    /// ``get`` for asyncio code.
    fn aget<'py>(&self, py: Python<'py>, key: String) -> PyResult<Bound<'py, PyAny>> {
        let cache = self.inner.clone();
        awaitable(py, async move {
            let out = cache.get::<Json>(&key).await.map_err(to_py)?;
            Python::attach(|py| out.map(|v| loads(py, &v)).transpose())
        })
    }

    /// Stores ``value`` (as JSON) under ``key``, registered under
    /// ``deps``, whatever was there; a fill of ``key`` in flight elsewhere
    /// is refused afterwards. The key is registered before the value is
    /// written. Returns ``False`` if nothing was stored: Redis was
    /// unavailable, the registration failed, or a change to one of
    /// ``deps`` was invalidated meanwhile.
    ///
    /// >>> cache.set("motd", "hello", [], ttl=60)
    /// True
    #[pyo3(signature = (key, value, deps = None, *, ttl = None))]
    fn set(
        &self,
        py: Python<'_>,
        key: String,
        value: &Bound<'_, PyAny>,
        deps: Option<&Bound<'_, PyAny>>,
        ttl: Option<&Bound<'_, PyAny>>,
    ) -> PyResult<bool> {
        let fut = self.set_future(py, key, value, deps, ttl)?;
        blocking(py, fut)?
    }

    /// ``set`` for asyncio code.
    #[pyo3(signature = (key, value, deps = None, *, ttl = None))]
    fn aset<'py>(
        &self,
        py: Python<'py>,
        key: String,
        value: &Bound<'_, PyAny>,
        deps: Option<&Bound<'_, PyAny>>,
        ttl: Option<&Bound<'_, PyAny>>,
    ) -> PyResult<Bound<'py, PyAny>> {
        let fut = self.set_future(py, key, value, deps, ttl)?;
        awaitable(py, fut)
    }

    /// Deletes exactly the entry ``key`` (clearing ``post`` leaves
    /// ``posts`` alone), with its lease and registrations. Returns whether
    /// a value was there. Raises ``RedisUnavailable`` if Redis is down.
    ///
    /// >>> cache.clear("product:1")
    /// True
    fn clear(&self, py: Python<'_>, key: String) -> PyResult<bool> {
        self.run(py, |c| async move { c.clear(&key).await })
    }

    /// ``clear`` for asyncio code.
    fn aclear<'py>(&self, py: Python<'py>, key: String) -> PyResult<Bound<'py, PyAny>> {
        self.spawn(py, |c| async move { c.clear(&key).await })
    }

    /// Deletes every entry registered under ``table`` or any of its rows;
    /// returns how many values were deleted.
    ///
    /// >>> cache.clear_table("products")
    /// 3
    fn clear_table(&self, py: Python<'_>, table: String) -> PyResult<u64> {
        self.run(py, |c| async move { c.clear_table(&table).await })
    }

    /// ``clear_table`` for asyncio code.
    fn aclear_table<'py>(&self, py: Python<'py>, table: String) -> PyResult<Bound<'py, PyAny>> {
        self.spawn(py, |c| async move { c.clear_table(&table).await })
    }

    /// Deletes everything in the namespace (never anything outside it);
    /// returns how many values were deleted.
    fn clear_all(&self, py: Python<'_>) -> PyResult<u64> {
        self.run(py, |c| async move { c.clear_all().await })
    }

    /// ``clear_all`` for asyncio code.
    fn aclear_all<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyAny>> {
        self.spawn(py, |c| async move { c.clear_all().await })
    }

    /// The entries whose key matches the glob ``pattern``, sorted by key,
    /// with size, dependencies and age. With ``limit``, stops after that
    /// many (see ``keys_up_to`` to learn whether more match).
    ///
    /// >>> [k.key for k in cache.keys("product:*")]
    /// ['product:1', 'product:2']
    #[pyo3(signature = (pattern = "*".to_owned(), limit = None))]
    fn keys(
        &self,
        py: Python<'_>,
        pattern: String,
        limit: Option<usize>,
    ) -> PyResult<Vec<KeyInfo>> {
        Ok(self.keys_up_to(py, pattern, limit.unwrap_or(usize::MAX))?.0)
    }

    /// At most ``limit`` entries matching ``pattern``, and whether more
    /// match: ``(entries, more)``.
    fn keys_up_to(
        &self,
        py: Python<'_>,
        pattern: String,
        limit: usize,
    ) -> PyResult<(Vec<KeyInfo>, bool)> {
        let (keys, more) = self.run(py, |c| async move {
            if limit == usize::MAX {
                c.keys(&pattern).await.map(|k| (k, false))
            } else {
                c.keys_up_to(&pattern, limit).await
            }
        })?;
        Ok((keys.into_iter().map(KeyInfo::from).collect(), more))
    }

    /// What the local tier holds and has done, as a dict (``entries``,
    /// ``bytes``, ``hits``, ``fills``, ``invalidations``, ``flushes``,
    /// ``serving``); ``None`` when it is off.
    fn local_stats<'py>(&self, py: Python<'py>) -> PyResult<Option<Bound<'py, PyDict>>> {
        let Some(s) = self.inner.local_stats() else {
            return Ok(None);
        };
        let d = PyDict::new(py);
        d.set_item("entries", s.entries)?;
        d.set_item("bytes", s.bytes)?;
        d.set_item("hits", s.hits)?;
        d.set_item("fills", s.fills)?;
        d.set_item("invalidations", s.invalidations)?;
        d.set_item("flushes", s.flushes)?;
        d.set_item("serving", s.serving)?;
        Ok(Some(d))
    }

    /// Checks that Redis answers; raises ``RedisUnavailable`` if not.
    fn ping(&self, py: Python<'_>) -> PyResult<()> {
        self.run(py, |c| async move { c.ping().await })
    }

    fn __repr__(&self) -> String {
        format!("<smartcache.Cache namespace={:?}>", self.namespace())
    }
}

impl Cache {
    /// A management call for the synchronous API.
    fn run<T, Fut>(&self, py: Python<'_>, op: impl FnOnce(smartcache::Cache) -> Fut) -> PyResult<T>
    where
        T: Send,
        Fut: Future<Output = Result<T, smartcache::Error>> + Send,
    {
        blocking(py, op(self.inner.clone()))?.map_err(to_py)
    }

    /// A management call for the asyncio API.
    fn spawn<'py, T, Fut>(
        &self,
        py: Python<'py>,
        op: impl FnOnce(smartcache::Cache) -> Fut,
    ) -> PyResult<Bound<'py, PyAny>>
    where
        T: for<'a> IntoPyObject<'a> + Send + 'static,
        Fut: Future<Output = Result<T, smartcache::Error>> + Send + 'static,
    {
        let fut = op(self.inner.clone());
        awaitable(py, async move { fut.await.map_err(to_py) })
    }

    /// `afetch`, its result passed through `pick`.
    fn afetch_then<'py, T>(
        &self,
        py: Python<'py>,
        key: String,
        deps: &Bound<'_, PyAny>,
        compute: Py<PyAny>,
        ttl: Option<&Bound<'_, PyAny>>,
        pick: fn((Py<PyAny>, &'static str)) -> T,
    ) -> PyResult<Bound<'py, PyAny>>
    where
        T: for<'a> IntoPyObject<'a> + Send + 'static,
    {
        let fut = self.fetch_future(key, self::deps(deps)?, durations("ttl", ttl)?, move || {
            compute_async(compute)
        });
        awaitable(py, async move {
            let out = fut.await;
            Python::attach(|py| fetched(py, out).map(pick))
        })
    }

    fn set_future(
        &self,
        py: Python<'_>,
        key: String,
        value: &Bound<'_, PyAny>,
        deps: Option<&Bound<'_, PyAny>>,
        ttl: Option<&Bound<'_, PyAny>>,
    ) -> PyResult<impl Future<Output = PyResult<bool>> + Send + 'static> {
        let json = dumps(py, value)?;
        let deps = deps.map(self::deps).transpose()?.unwrap_or_default();
        let ttl = durations("ttl", ttl)?;
        let cache = self.inner.clone();
        Ok(async move {
            let mut entry = cache.entry(key).deps(deps);
            if let Some(ttl) = ttl {
                entry = entry.ttl(ttl);
            }
            entry.set(&json).await.map_err(to_py)
        })
    }
}
