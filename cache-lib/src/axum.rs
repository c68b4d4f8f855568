//! Whole-response caching for axum routes (cargo feature `axum`).
//!
//! [`CacheLayer`] caches the status, `content-type` and body of successful
//! (2xx) `GET` responses under a key built from the path and query, with the
//! dependencies you declare, so the invalidator deletes them when the data
//! changes. Every `GET` response gets `x-cache: hit` or `x-cache: miss` and
//! a strong `ETag`; a request whose `If-None-Match` matches gets `304 Not
//! Modified` with no body. Error responses, responses that set cookies and
//! other methods pass through uncached.
//!
//! ```no_run
//! # async fn demo(cache: smartcache::Cache) {
//! use axum::{routing::get, Router};
//! use smartcache::{axum::CacheLayer, Dep};
//!
//! let app: Router = Router::new()
//!     .route("/products", get(|| async { "[]" }))
//!     .route_layer(CacheLayer::new(cache).depends_on(Dep::table("products")));
//! # }
//! ```

use std::convert::Infallible;
use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use axum::body::Body;
use axum::extract::Request;
use axum::http::header::{CONTENT_TYPE, ETAG, IF_NONE_MATCH, SET_COOKIE};
use axum::http::request::Parts;
use axum::http::{HeaderMap, HeaderName, HeaderValue, Method, StatusCode};
use axum::response::Response;
use sha2::{Digest, Sha256};
use tower::{Layer, Service};
use tracing::warn;

use crate::{Cache, Dep, Error};

/// The `x-cache` response header.
///
/// ```
/// assert_eq!(smartcache::axum::X_CACHE.as_str(), "x-cache");
/// ```
pub const X_CACHE: HeaderName = HeaderName::from_static("x-cache");

type KeyFn = dyn Fn(&Parts) -> String + Send + Sync;
type DepsFn = dyn Fn(&Parts) -> Vec<Dep> + Send + Sync;

struct Config {
    key: Box<KeyFn>,
    deps: Box<DepsFn>,
    ttl: Option<Duration>,
}

/// A tower layer caching whole axum responses; see the [module
/// docs](self).
///
/// ```no_run
/// # async fn demo(cache: smartcache::Cache) {
/// use axum::{extract::Path, routing::get, Router};
/// use smartcache::{axum::CacheLayer, Dep};
///
/// let layer = CacheLayer::new(cache)
///     .key_fn(|req| format!("page:{}", req.uri.path()))
///     .deps_fn(|req| {
///         let id = req.uri.path().rsplit('/').next().unwrap_or_default().to_owned();
///         vec![Dep::row("products", [id])]
///     });
/// let app: Router = Router::new()
///     .route("/products/{id}", get(|Path(id): Path<i64>| async move { id.to_string() }))
///     .route_layer(layer);
/// # }
/// ```
#[derive(Clone)]
pub struct CacheLayer {
    cache: Cache,
    config: Arc<Config>,
}

impl fmt::Debug for CacheLayer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("CacheLayer")
            .field("cache", &self.cache)
            .finish_non_exhaustive()
    }
}

/// The default key of a request: `http:{path}` plus `?{query}` if any.
///
/// ```
/// let req = axum::http::Request::get("/products?page=2").body(()).unwrap();
/// let (parts, _) = req.into_parts();
/// assert_eq!(smartcache::axum::default_key(&parts), "http:/products?page=2");
/// ```
pub fn default_key(req: &Parts) -> String {
    match req.uri.query() {
        Some(q) => format!("http:{}?{q}", req.uri.path()),
        None => format!("http:{}", req.uri.path()),
    }
}

impl CacheLayer {
    /// A layer with the default key ([`default_key`]), no dependencies and
    /// the cache's default TTL.
    ///
    /// ```no_run
    /// # fn demo(cache: smartcache::Cache) {
    /// let layer = smartcache::axum::CacheLayer::new(cache);
    /// # }
    /// ```
    pub fn new(cache: Cache) -> Self {
        Self {
            cache,
            config: Arc::new(Config {
                key: Box::new(default_key),
                deps: Box::new(|_| Vec::new()),
                ttl: None,
            }),
        }
    }

    fn config_mut(&mut self) -> &mut Config {
        Arc::get_mut(&mut self.config).expect("configure a CacheLayer before cloning it")
    }

    /// Builds the cache key from the request instead (for example to share
    /// keys with `get_or_compute` calls or with the invalidator's key
    /// templates).
    ///
    /// ```no_run
    /// # fn demo(cache: smartcache::Cache) {
    /// let layer = smartcache::axum::CacheLayer::new(cache).key_fn(|req| format!("page:{}", req.uri.path()));
    /// # }
    /// ```
    pub fn key_fn(mut self, f: impl Fn(&Parts) -> String + Send + Sync + 'static) -> Self {
        self.config_mut().key = Box::new(f);
        self
    }

    /// Adds a dependency of every response of the route.
    ///
    /// ```no_run
    /// # fn demo(cache: smartcache::Cache) {
    /// use smartcache::Dep;
    /// let layer = smartcache::axum::CacheLayer::new(cache).depends_on(Dep::table("products"));
    /// # }
    /// ```
    pub fn depends_on(mut self, dep: Dep) -> Self {
        let config = self.config_mut();
        let before = std::mem::replace(&mut config.deps, Box::new(|_| Vec::new()));
        config.deps = Box::new(move |req| {
            let mut deps = before(req);
            deps.push(dep.clone());
            deps
        });
        self
    }

    /// Computes the dependencies from the request (for example the row a
    /// path parameter names), in addition to those given with
    /// [`CacheLayer::depends_on`].
    ///
    /// ```no_run
    /// # fn demo(cache: smartcache::Cache) {
    /// use smartcache::Dep;
    /// let layer = smartcache::axum::CacheLayer::new(cache).deps_fn(|req| {
    ///     let id = req.uri.path().rsplit('/').next().unwrap_or_default().to_owned();
    ///     vec![Dep::row("products", [id])]
    /// });
    /// # }
    /// ```
    pub fn deps_fn(mut self, f: impl Fn(&Parts) -> Vec<Dep> + Send + Sync + 'static) -> Self {
        let config = self.config_mut();
        let before = std::mem::replace(&mut config.deps, Box::new(|_| Vec::new()));
        config.deps = Box::new(move |req| {
            let mut deps = before(req);
            deps.extend(f(req));
            deps
        });
        self
    }

    /// Expires the cached responses after `ttl`.
    ///
    /// ```no_run
    /// # fn demo(cache: smartcache::Cache) {
    /// let layer = smartcache::axum::CacheLayer::new(cache).ttl(std::time::Duration::from_secs(60));
    /// # }
    /// ```
    pub fn ttl(mut self, ttl: Duration) -> Self {
        self.config_mut().ttl = Some(ttl);
        self
    }
}

impl<S> Layer<S> for CacheLayer {
    type Service = CacheService<S>;

    fn layer(&self, inner: S) -> Self::Service {
        CacheService {
            inner,
            cache: self.cache.clone(),
            config: self.config.clone(),
        }
    }
}

/// The service made by [`CacheLayer`].
///
/// ```no_run
/// # fn demo(cache: smartcache::Cache) {
/// use tower::Layer;
/// let route: axum::routing::MethodRouter = axum::routing::get(|| async { "hi" });
/// let svc = smartcache::axum::CacheLayer::new(cache).layer(route);
/// # }
/// ```
#[derive(Clone)]
pub struct CacheService<S> {
    inner: S,
    cache: Cache,
    config: Arc<Config>,
}

impl<S> fmt::Debug for CacheService<S> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("CacheService")
            .field("cache", &self.cache)
            .finish_non_exhaustive()
    }
}

impl<S> Service<Request> for CacheService<S>
where
    S: Service<Request, Response = Response, Error = Infallible> + Clone + Send + 'static,
    S::Future: Send + 'static,
{
    type Response = Response;
    type Error = Infallible;
    type Future = Pin<Box<dyn Future<Output = Result<Response, Infallible>> + Send>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, req: Request) -> Self::Future {
        // The ready service goes with this request; a fresh clone stays.
        let clone = self.inner.clone();
        let inner = std::mem::replace(&mut self.inner, clone);
        let cache = self.cache.clone();
        let config = self.config.clone();
        Box::pin(async move { Ok(serve(inner, cache, config, req).await) })
    }
}

/// Why a response was not cached: it goes to the client as it is.
enum NotCached {
    Response(Response),
    Cache(Error),
}

impl From<Error> for NotCached {
    fn from(e: Error) -> Self {
        NotCached::Cache(e)
    }
}

async fn serve<S>(mut inner: S, cache: Cache, config: Arc<Config>, req: Request) -> Response
where
    S: Service<Request, Response = Response, Error = Infallible> + Send + 'static,
    S::Future: Send + 'static,
{
    if req.method() != Method::GET {
        return call(&mut inner, req).await;
    }
    let (parts, body) = req.into_parts();
    let key = (config.key)(&parts);
    let deps = (config.deps)(&parts);
    let if_none_match = parts.headers.get(IF_NONE_MATCH).cloned();
    let req = Request::from_parts(parts, body);

    let mut entry = cache.entry(key).deps(deps);
    if let Some(ttl) = config.ttl {
        entry = entry.ttl(ttl);
    }
    let fetched = entry
        .fetch_bytes(|| async move {
            let resp = call(&mut inner, req).await;
            if !resp.status().is_success() || resp.headers().contains_key(SET_COOKIE) {
                return Err(NotCached::Response(resp));
            }
            let (parts, body) = resp.into_parts();
            match axum::body::to_bytes(body, usize::MAX).await {
                Ok(body) => Ok(encode(parts.status, &parts.headers, &body)),
                Err(e) => {
                    warn!(error = %e, "response body failed; not cached");
                    Err(NotCached::Response(
                        StatusCode::INTERNAL_SERVER_ERROR.into_response_empty(),
                    ))
                }
            }
        })
        .await;
    let (record, hit) = match fetched {
        Ok(f) => (f.value, f.status.is_hit()),
        Err(NotCached::Response(resp)) => return resp,
        Err(NotCached::Cache(e)) => {
            warn!(error = %crate::error::error_chain(&e), "response cache key refused");
            return StatusCode::INTERNAL_SERVER_ERROR.into_response_empty();
        }
    };
    let Some(cached) = Record::decode(&record) else {
        warn!("cached response is not in smartcache's format; clear the key");
        return StatusCode::INTERNAL_SERVER_ERROR.into_response_empty();
    };
    cached.respond(hit, if_none_match.as_ref())
}

async fn call<S>(inner: &mut S, req: Request) -> Response
where
    S: Service<Request, Response = Response, Error = Infallible>,
{
    match inner.call(req).await {
        Ok(resp) => resp,
        Err(never) => match never {},
    }
}

trait EmptyResponse {
    fn into_response_empty(self) -> Response;
}

impl EmptyResponse for StatusCode {
    fn into_response_empty(self) -> Response {
        let mut resp = Response::new(Body::empty());
        *resp.status_mut() = self;
        resp
    }
}

/// A cached response: `{status} {etag}\n{content-type}\n{body}`, so other
/// languages can read it too.
struct Record<'a> {
    status: StatusCode,
    etag: &'a str,
    content_type: &'a str,
    body: &'a [u8],
}

fn encode(status: StatusCode, headers: &HeaderMap, body: &[u8]) -> Vec<u8> {
    let content_type = headers
        .get(CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("");
    let digest = Sha256::digest(body);
    let mut etag = String::with_capacity(34);
    etag.push('"');
    for b in &digest[..16] {
        etag.push_str(&format!("{b:02x}"));
    }
    etag.push('"');
    let mut out = format!("{} {etag}\n{content_type}\n", status.as_u16()).into_bytes();
    out.extend_from_slice(body);
    out
}

impl<'a> Record<'a> {
    fn decode(bytes: &'a [u8]) -> Option<Self> {
        let nl = bytes.iter().position(|&b| b == b'\n')?;
        let head = std::str::from_utf8(&bytes[..nl]).ok()?;
        let rest = &bytes[nl + 1..];
        let nl2 = rest.iter().position(|&b| b == b'\n')?;
        let content_type = std::str::from_utf8(&rest[..nl2]).ok()?;
        let (status, etag) = head.split_once(' ')?;
        Some(Self {
            status: StatusCode::from_u16(status.parse().ok()?).ok()?,
            etag,
            content_type,
            body: &rest[nl2 + 1..],
        })
    }

    fn respond(&self, hit: bool, if_none_match: Option<&HeaderValue>) -> Response {
        let not_modified = if_none_match
            .and_then(|v| v.to_str().ok())
            .is_some_and(|v| etag_matches(v, self.etag));
        let mut resp = if not_modified {
            StatusCode::NOT_MODIFIED.into_response_empty()
        } else {
            let mut resp = Response::new(Body::from(self.body.to_vec()));
            *resp.status_mut() = self.status;
            if let Ok(ct) = HeaderValue::from_str(self.content_type) {
                if !self.content_type.is_empty() {
                    resp.headers_mut().insert(CONTENT_TYPE, ct);
                }
            }
            resp
        };
        let h = resp.headers_mut();
        if let Ok(etag) = HeaderValue::from_str(self.etag) {
            h.insert(ETAG, etag);
        }
        h.insert(
            X_CACHE,
            HeaderValue::from_static(if hit { "hit" } else { "miss" }),
        );
        resp
    }
}

/// `If-None-Match` uses the weak comparison (RFC 9110 §13.1.2).
fn etag_matches(if_none_match: &str, etag: &str) -> bool {
    if_none_match.split(',').map(str::trim).any(|candidate| {
        candidate == "*" || candidate.strip_prefix("W/").unwrap_or(candidate) == etag
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn record_round_trips() {
        let mut headers = HeaderMap::new();
        headers.insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
        let bytes = encode(StatusCode::CREATED, &headers, b"{\"a\":\n1}");
        let r = Record::decode(&bytes).unwrap();
        assert_eq!(r.status, StatusCode::CREATED);
        assert_eq!(r.content_type, "application/json");
        assert_eq!(r.body, b"{\"a\":\n1}");
        assert!(r.etag.starts_with('"') && r.etag.len() == 34);
    }

    #[test]
    fn if_none_match_accepts_lists_weak_tags_and_star() {
        assert!(etag_matches("\"x\"", "\"x\""));
        assert!(etag_matches("\"y\", W/\"x\"", "\"x\""));
        assert!(etag_matches("*", "\"x\""));
        assert!(!etag_matches("\"y\"", "\"x\""));
    }
}
