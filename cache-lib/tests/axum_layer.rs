//! The response-caching layer, driven with `tower::ServiceExt::oneshot`.
#![cfg(feature = "axum")]

mod common;

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

use axum::body::{to_bytes, Body};
use axum::extract::{Path, State};
use axum::http::{header, Request, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::Router;
use common::Fixture;
use smartcache::axum::CacheLayer;
use smartcache::Dep;
use smartcache_core::invalidate::invalidate;
use smartcache_core::keys::TableName;
use tower::ServiceExt;

#[derive(Clone, Default)]
struct Calls(Arc<AtomicUsize>);

impl Calls {
    fn count(&self) -> usize {
        self.0.load(Ordering::SeqCst)
    }
}

async fn product(State(calls): State<Calls>, Path(id): Path<i64>) -> Response {
    calls.0.fetch_add(1, Ordering::SeqCst);
    if id > 100 {
        return (StatusCode::NOT_FOUND, "no such product").into_response();
    }
    (
        [(header::CONTENT_TYPE, "application/json")],
        format!("{{\"id\":{id}}}"),
    )
        .into_response()
}

fn app(fx: &Fixture, calls: &Calls) -> Router {
    let layer = CacheLayer::new(fx.cache.clone()).deps_fn(|req| {
        let id = req
            .uri
            .path()
            .rsplit('/')
            .next()
            .unwrap_or_default()
            .to_owned();
        vec![Dep::row("products", [id])]
    });
    Router::new()
        .route("/products/{id}", get(product).post(product))
        .route_layer(layer)
        .with_state(calls.clone())
}

async fn send(
    app: &Router,
    req: Request<Body>,
) -> (StatusCode, Option<String>, Option<String>, Vec<u8>) {
    let resp = app.clone().oneshot(req).await.unwrap();
    let h = |name: &str| {
        resp.headers()
            .get(name)
            .map(|v| v.to_str().unwrap().to_owned())
    };
    let (x_cache, etag) = (h("x-cache"), h("etag"));
    let status = resp.status();
    let body = to_bytes(resp.into_body(), usize::MAX)
        .await
        .unwrap()
        .to_vec();
    (status, x_cache, etag, body)
}

fn get_req(uri: &str) -> Request<Body> {
    Request::get(uri).body(Body::empty()).unwrap()
}

#[tokio::test]
async fn second_request_is_a_hit_with_the_same_body_and_etag() {
    let fx = Fixture::new("axum_hit").await;
    let calls = Calls::default();
    let app = app(&fx, &calls);
    let (s1, x1, e1, b1) = send(&app, get_req("/products/7")).await;
    let (s2, x2, e2, b2) = send(&app, get_req("/products/7")).await;
    assert_eq!((s1, x1.as_deref()), (StatusCode::OK, Some("miss")));
    assert_eq!((s2, x2.as_deref()), (StatusCode::OK, Some("hit")));
    assert_eq!(b1, b"{\"id\":7}");
    assert_eq!(b1, b2);
    assert!(e1.is_some() && e1 == e2);
    assert_eq!(calls.count(), 1);

    let resp = app.clone().oneshot(get_req("/products/7")).await.unwrap();
    assert_eq!(resp.headers()[header::CONTENT_TYPE], "application/json");

    // Query strings are part of the key.
    let (_, x3, _, _) = send(&app, get_req("/products/7?v=2")).await;
    assert_eq!(x3.as_deref(), Some("miss"));
    fx.cleanup().await;
}

#[tokio::test]
async fn if_none_match_gets_304_without_a_body() {
    let fx = Fixture::new("axum_304").await;
    let calls = Calls::default();
    let app = app(&fx, &calls);
    let (_, _, etag, _) = send(&app, get_req("/products/3")).await;
    let etag = etag.unwrap();
    assert!(
        etag.starts_with('"') && etag.ends_with('"'),
        "strong ETag: {etag}"
    );
    let req = Request::get("/products/3")
        .header(header::IF_NONE_MATCH, &etag)
        .body(Body::empty())
        .unwrap();
    let (status, x, etag2, body) = send(&app, req).await;
    assert_eq!(status, StatusCode::NOT_MODIFIED);
    assert_eq!(x.as_deref(), Some("hit"));
    assert_eq!(etag2.as_deref(), Some(etag.as_str()));
    assert!(body.is_empty());
    let req = Request::get("/products/3")
        .header(header::IF_NONE_MATCH, "\"something-else\"")
        .body(Body::empty())
        .unwrap();
    assert_eq!(send(&app, req).await.0, StatusCode::OK);
    fx.cleanup().await;
}

#[tokio::test]
async fn error_responses_and_other_methods_are_not_cached() {
    let mut fx = Fixture::new("axum_errors").await;
    let calls = Calls::default();
    let app = app(&fx, &calls);
    for _ in 0..2 {
        let (status, _, _, body) = send(&app, get_req("/products/404")).await;
        assert_eq!(status, StatusCode::NOT_FOUND);
        assert_eq!(body, b"no such product");
    }
    assert_eq!(calls.count(), 2, "a 404 is computed every time");
    let post = || Request::post("/products/1").body(Body::empty()).unwrap();
    let (status, x, _, _) = send(&app, post()).await;
    assert_eq!((status, x), (StatusCode::OK, None));
    send(&app, post()).await;
    assert_eq!(calls.count(), 4);
    // Nothing cached; the 404's dependency registration goes with a sweep.
    let ns = fx.cache.namespace().clone();
    smartcache_core::sweep::sweep(&mut fx.redis, &ns)
        .await
        .unwrap();
    assert!(fx.all_keys().await.is_empty(), "{:?}", fx.all_keys().await);
    fx.cleanup().await;
}

#[tokio::test]
async fn row_invalidation_turns_the_next_request_into_a_miss() {
    let mut fx = Fixture::new("axum_invalidate").await;
    let calls = Calls::default();
    let app = app(&fx, &calls);
    send(&app, get_req("/products/5")).await;
    assert_eq!(
        send(&app, get_req("/products/5")).await.1.as_deref(),
        Some("hit")
    );
    let ns = fx.cache.namespace().clone();
    let dep = TableName::parse("products").unwrap().row_dep(&["5"]);
    invalidate(&mut fx.redis, &ns, &[], &[dep]).await.unwrap();
    assert_eq!(
        send(&app, get_req("/products/5")).await.1.as_deref(),
        Some("miss")
    );
    fx.cleanup().await;
}
