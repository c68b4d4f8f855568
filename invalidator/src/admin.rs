//! The admin page (`smartcache-invalidator admin`): the namespace's keys
//! with size, dependencies and age, searchable by glob; the daemon's recent
//! batches with their commit → delete lag; and buttons to clear a key or a
//! table.
//!
//! One server-rendered HTML page and a few lines of JavaScript, no build
//! step. Reading needs nothing; writing (POST) needs the `admin_token` of
//! the config in a form field or the `x-smartcache-admin-token` header,
//! never a cookie, so another site cannot make a browser clear entries
//! (CSRF). Without a token configured, write actions are disabled. Bound to
//! loopback, the page also refuses requests whose `Host` is not a loopback
//! name (DNS rebinding).

use crate::config::{AdminToken, Config, ConfigError};
use crate::recent::{self, Batch};
use askama::Template;
use axum::extract::{Form, Query, Request, State};
use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::middleware::{self, Next};
use axum::response::{Html, IntoResponse, Redirect, Response};
use axum::routing::{get, post};
use percent_encoding::{utf8_percent_encode, AsciiSet, NON_ALPHANUMERIC};
use serde::Deserialize;
use sha2::{Digest, Sha256};
use smartcache::KeyInfo;
use smartcache_core::keys::TableName;
use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;
use tracing::info;

/// At most this many keys are listed; the page says when more match.
pub const LIST_LIMIT: usize = 1000;

/// Header that may carry the admin token instead of the form field.
pub const TOKEN_HEADER: &str = "x-smartcache-admin-token";

/// Refuses a non-loopback `addr` unless `allow_remote`.
///
/// ```
/// use smartcache_invalidator::admin::check_addr;
/// assert!(check_addr("127.0.0.1:9188".parse().unwrap(), false).is_ok());
/// assert!(check_addr("0.0.0.0:9188".parse().unwrap(), false).is_err());
/// assert!(check_addr("0.0.0.0:9188".parse().unwrap(), true).is_ok());
/// ```
pub fn check_addr(addr: SocketAddr, allow_remote: bool) -> Result<(), ConfigError> {
    if addr.ip().is_loopback() || allow_remote {
        return Ok(());
    }
    Err(ConfigError(format!(
        "admin: {addr} is not a loopback address; the page shows every key and can clear \
         them, so bind 127.0.0.1 (and use an SSH tunnel), or pass --allow-remote behind TLS \
         and a firewall"
    )))
}

/// Serves the admin page on `addr` until `shutdown` completes.
///
/// ```no_run
/// # async fn demo() -> anyhow::Result<()> {
/// use smartcache_invalidator::config::{Config, Overrides};
/// let config = Config::load(None, &Overrides::default())?;
/// let addr = "127.0.0.1:9188".parse()?;
/// smartcache_invalidator::admin::serve(config, addr, async {
///     tokio::signal::ctrl_c().await.ok();
/// })
/// .await
/// # }
/// ```
pub async fn serve(
    config: Config,
    addr: SocketAddr,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> anyhow::Result<()> {
    let listener = tokio::net::TcpListener::bind(addr)
        .await
        .map_err(|e| ConfigError(format!("cannot serve the admin page on {addr}: {e}")))?;
    serve_on(config, listener, shutdown).await
}

/// Like [`serve`], on a listener the caller bound (tests bind port 0).
pub async fn serve_on(
    config: Config,
    listener: tokio::net::TcpListener,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> anyhow::Result<()> {
    let addr = listener.local_addr()?;
    let cache = crate::cli::cache(&config).await?;
    let redis = crate::redis_ops::connect_now(&config).await?;
    let state = Arc::new(AppState {
        loopback_only: addr.ip().is_loopback(),
        config,
        cache,
        redis,
    });
    let app = axum::Router::new()
        .route("/", get(page))
        .route("/app.js", get(script))
        .route("/clear", post(clear_key))
        .route("/clear-table", post(clear_table))
        .layer(middleware::from_fn_with_state(state.clone(), guard))
        .with_state(state.clone());
    info!(
        url = %format!("http://{addr}/"),
        writes = state.config.admin_token.is_some(),
        "serving the admin page"
    );
    axum::serve(listener, app)
        .with_graceful_shutdown(shutdown)
        .await?;
    Ok(())
}

struct AppState {
    config: Config,
    cache: smartcache::Cache,
    redis: smartcache_core::conn::Conn,
    loopback_only: bool,
}

type Shared = Arc<AppState>;

/// Host check (DNS rebinding) and security headers on every response.
async fn guard(State(state): State<Shared>, req: Request, next: Next) -> Response {
    if state.loopback_only && !loopback_host(req.headers()) {
        return (
            StatusCode::MISDIRECTED_REQUEST,
            "the admin page answers only to a loopback Host (127.0.0.1, [::1], localhost)\n",
        )
            .into_response();
    }
    let mut res = next.run(req).await;
    let h = res.headers_mut();
    h.insert(
        header::CONTENT_SECURITY_POLICY,
        HeaderValue::from_static(
            "default-src 'none'; script-src 'self'; style-src 'unsafe-inline'; \
             connect-src 'self'; form-action 'self'; frame-ancestors 'none'; base-uri 'none'",
        ),
    );
    h.insert(header::X_FRAME_OPTIONS, HeaderValue::from_static("DENY"));
    h.insert(
        header::REFERRER_POLICY,
        HeaderValue::from_static("no-referrer"),
    );
    h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    res
}

fn loopback_host(headers: &HeaderMap) -> bool {
    let Some(host) = headers.get(header::HOST).and_then(|h| h.to_str().ok()) else {
        return false;
    };
    let name = match host.strip_prefix('[') {
        Some(rest) => rest.split(']').next().unwrap_or(""),
        None => host.rsplit_once(':').map_or(host, |(n, _)| n),
    };
    name.eq_ignore_ascii_case("localhost")
        || name
            .parse::<std::net::IpAddr>()
            .is_ok_and(|ip| ip.is_loopback())
}

/// Compares in constant time (over the SHA-256 digests, so the length of
/// the token does not leak either).
fn token_matches(expected: &AdminToken, given: &str) -> bool {
    let a = Sha256::digest(expected.expose().as_bytes());
    let b = Sha256::digest(given.as_bytes());
    a.iter()
        .zip(b.iter())
        .fold(0u8, |acc, (x, y)| acc | (x ^ y))
        == 0
}

/// `Ok` if the request carries the configured token, else why not (for
/// the 403 page).
fn authorize(
    state: &AppState,
    headers: &HeaderMap,
    form_token: Option<&str>,
) -> Result<(), &'static str> {
    let Some(expected) = &state.config.admin_token else {
        return Err("Write actions are disabled: no admin_token is configured \
             (set admin_token in the config file or SMARTCACHE_ADMIN_TOKEN).");
    };
    let given = form_token
        .filter(|t| !t.is_empty())
        .or_else(|| headers.get(TOKEN_HEADER).and_then(|h| h.to_str().ok()));
    match given {
        Some(t) if token_matches(expected, t) => Ok(()),
        Some(_) => Err("Wrong admin token. Nothing was deleted."),
        None => Err("Missing admin token. Nothing was deleted."),
    }
}

/// An error page.
#[derive(Template)]
#[template(path = "message.html")]
struct Message<'a> {
    title: &'a str,
    heading: &'a str,
    text: &'a str,
}

fn message(status: StatusCode, title: &str, heading: &str, text: &str) -> Response {
    let page = Message {
        title,
        heading,
        text,
    };
    (status, html(page.render())).into_response()
}

fn forbidden(why: &str) -> Response {
    tracing::warn!(reason = why, "admin: write action refused");
    let title = "403 Forbidden";
    message(StatusCode::FORBIDDEN, title, title, why)
}

fn bad_request(why: &str) -> Response {
    let title = "400 Bad Request";
    message(StatusCode::BAD_REQUEST, title, title, why)
}

fn failed(what: &str, e: impl std::fmt::Display) -> Response {
    message(
        StatusCode::SERVICE_UNAVAILABLE,
        "Error",
        what,
        &e.to_string(),
    )
}

/// A rendered page; a template that fails to render (it cannot, short of a
/// formatting error) is a 500.
fn html(rendered: askama::Result<String>) -> Response {
    match rendered {
        Ok(body) => Html(body).into_response(),
        Err(e) => (StatusCode::INTERNAL_SERVER_ERROR, e.to_string()).into_response(),
    }
}

fn back_to(pattern: Option<&str>, msg: &str) -> Response {
    let pattern = pattern.filter(|p| !p.is_empty()).unwrap_or("*");
    Redirect::to(&format!(
        "/?pattern={}&msg={}",
        url_encode(pattern),
        url_encode(msg)
    ))
    .into_response()
}

#[derive(Debug, Deserialize)]
struct PageQuery {
    pattern: Option<String>,
    msg: Option<String>,
}

#[derive(Debug, Deserialize)]
struct ClearKeyForm {
    key: String,
    token: Option<String>,
    pattern: Option<String>,
}

#[derive(Debug, Deserialize)]
struct ClearTableForm {
    table: String,
    token: Option<String>,
    pattern: Option<String>,
}

async fn clear_key(
    State(state): State<Shared>,
    headers: HeaderMap,
    Form(form): Form<ClearKeyForm>,
) -> Response {
    if let Err(why) = authorize(&state, &headers, form.token.as_deref()) {
        return forbidden(why);
    }
    if let Err(e) = smartcache_core::keys::check_cache_key(&form.key) {
        return bad_request(&e.to_string());
    }
    match state.cache.clear(&form.key).await {
        Ok(true) => {
            info!(key = %form.key, "admin: cleared a key");
            back_to(form.pattern.as_deref(), &format!("cleared {}", form.key))
        }
        Ok(false) => back_to(
            form.pattern.as_deref(),
            &format!("{} was not cached", form.key),
        ),
        Err(e) => failed("Clearing the key failed", e),
    }
}

async fn clear_table(
    State(state): State<Shared>,
    headers: HeaderMap,
    Form(form): Form<ClearTableForm>,
) -> Response {
    if let Err(why) = authorize(&state, &headers, form.token.as_deref()) {
        return forbidden(why);
    }
    let table = match TableName::parse(form.table.trim()) {
        Ok(t) => t,
        Err(e) => return bad_request(&e.to_string()),
    };
    match crate::cli::clear_table(&state.config, &table).await {
        Ok(n) => {
            info!(%table, deleted = n, "admin: cleared a table");
            back_to(
                form.pattern.as_deref(),
                &format!("cleared {n} entries of table {table}"),
            )
        }
        Err(e) => failed("Clearing the table failed", format!("{e:#}")),
    }
}

async fn script() -> impl IntoResponse {
    (
        [(header::CONTENT_TYPE, "text/javascript; charset=utf-8")],
        SCRIPT,
    )
}

async fn page(State(state): State<Shared>, Query(q): Query<PageQuery>) -> Response {
    let pattern = q
        .pattern
        .filter(|p| !p.is_empty())
        .unwrap_or_else(|| "*".to_owned());
    let listed = state.cache.keys_up_to(&pattern, LIST_LIMIT).await;
    let mut con = state.redis.clone();
    let batches = recent::read(&mut con, &state.config.namespace).await;
    html(Page::new(&state, &pattern, q.msg.as_deref(), listed, batches).render())
}

const SCRIPT: &str = r#"// Copies the admin token into each write form as it is submitted. The
// token stays in this tab (sessionStorage) and never goes into a cookie.
(function () {
  var box = document.getElementById('token');
  if (!box) return;
  box.value = sessionStorage.getItem('smartcache-admin-token') || '';
  box.addEventListener('input', function () {
    sessionStorage.setItem('smartcache-admin-token', box.value);
  });
  document.querySelectorAll('form.write').forEach(function (f) {
    f.addEventListener('submit', function () {
      f.querySelector('input[name=token]').value = box.value;
    });
  });
})();
"#;

/// The admin page.
#[derive(Template)]
#[template(path = "page.html")]
struct Page<'a> {
    ns: &'a str,
    msg: Option<&'a str>,
    writes: bool,
    pattern: &'a str,
    keys: Result<Listed, String>,
    limit: usize,
    tables: Vec<String>,
    batches: Result<Vec<BatchRow>, String>,
}

/// The keys table.
struct Listed {
    rows: Vec<KeyRow>,
    bytes: u64,
    more: bool,
}

struct KeyRow {
    key: String,
    size_bytes: u64,
    age: Option<String>,
    deps: Vec<String>,
}

struct BatchRow {
    at: String,
    events: u64,
    deleted: u64,
    lag: String,
}

impl<'a> Page<'a> {
    fn new(
        state: &'a AppState,
        pattern: &'a str,
        msg: Option<&'a str>,
        listed: Result<(Vec<KeyInfo>, bool), smartcache::Error>,
        batches: redis::RedisResult<Vec<Batch>>,
    ) -> Self {
        let keys = listed
            .map_err(|e| e.to_string())
            .map(|(keys, more)| Listed {
                bytes: keys.iter().map(|k| k.size_bytes).sum(),
                more,
                rows: keys
                    .into_iter()
                    .map(|k| KeyRow {
                        age: k.age.map(fmt_age),
                        key: k.key,
                        size_bytes: k.size_bytes,
                        deps: k.deps,
                    })
                    .collect(),
            });
        let batches = batches
            .map_err(|e| e.to_string())
            .map(|b| b.iter().map(BatchRow::new).collect());
        Self {
            ns: state.config.namespace.name(),
            msg,
            writes: state.config.admin_token.is_some(),
            pattern,
            keys,
            limit: LIST_LIMIT,
            tables: state
                .config
                .tables
                .iter()
                .map(|t| t.name.to_string())
                .collect(),
            batches,
        }
    }
}

impl BatchRow {
    fn new(b: &Batch) -> Self {
        let lag = if (b.lag_max_ms - b.lag_min_ms).abs() < 0.05 {
            format!("{:.1} ms", b.lag_max_ms)
        } else {
            format!("{:.1}–{:.1} ms", b.lag_min_ms, b.lag_max_ms)
        };
        Self {
            at: fmt_utc(b.at_ms),
            events: b.events,
            deleted: b.deleted,
            lag,
        }
    }
}

/// `0.4 s`, `12 s`, `5 min 3 s`, `3 h 12 min`, `4 d 3 h`.
fn fmt_age(d: Duration) -> String {
    let s = d.as_secs();
    match s {
        0..=9 => format!("{:.1} s", d.as_secs_f64()),
        10..=59 => format!("{s} s"),
        60..=3599 => format!("{} min {} s", s / 60, s % 60),
        3600..=86399 => format!("{} h {} min", s / 3600, s % 3600 / 60),
        _ => format!("{} d {} h", s / 86400, s % 86400 / 3600),
    }
}

/// `2024-05-01 10:00:00.123` from milliseconds since the Unix epoch.
fn fmt_utc(ms: u64) -> String {
    let (days, rem) = ((ms / 86_400_000) as i64, ms % 86_400_000);
    // Howard Hinnant's civil_from_days.
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    format!(
        "{year:04}-{month:02}-{day:02} {:02}:{:02}:{:02}.{:03}",
        rem / 3_600_000,
        rem / 60_000 % 60,
        rem / 1000 % 60,
        rem % 1000
    )
}

/// What a query value keeps literal: the unreserved characters of RFC 3986.
const QUERY_VALUE: &AsciiSet = &NON_ALPHANUMERIC
    .remove(b'-')
    .remove(b'_')
    .remove(b'.')
    .remove(b'~');

fn url_encode(s: &str) -> String {
    utf8_percent_encode(s, QUERY_VALUE).to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_patterns_and_messages_are_escaped() {
        let evil = "<script>alert('x')</script>\"&";
        let page = Page {
            ns: "cache",
            msg: Some(evil),
            writes: true,
            pattern: evil,
            keys: Ok(Listed {
                rows: vec![KeyRow {
                    key: evil.to_owned(),
                    size_bytes: 1,
                    age: None,
                    deps: vec![evil.to_owned()],
                }],
                bytes: 1,
                more: false,
            }),
            limit: LIST_LIMIT,
            tables: vec![evil.to_owned()],
            batches: Err(evil.to_owned()),
        };
        let html = page.render().unwrap();
        assert!(!html.contains(evil), "{html}");
        let escaped = "&#60;script&#62;alert(&#39;x&#39;)&#60;/script&#62;&#34;&#38;";
        // Message 1, pattern 4 (text, three attributes), key 3 (two
        // attributes, text), dependency 1, table 1, error 1.
        assert_eq!(html.matches(escaped).count(), 11, "{html}");
        let page = Message {
            title: evil,
            heading: evil,
            text: evil,
        };
        assert!(!page.render().unwrap().contains(evil));
    }

    #[test]
    fn utc_dates_are_civil() {
        assert_eq!(fmt_utc(0), "1970-01-01 00:00:00.000");
        assert_eq!(fmt_utc(1_714_557_600_123), "2024-05-01 10:00:00.123");
        assert_eq!(fmt_utc(951_782_400_000), "2000-02-29 00:00:00.000");
    }

    #[test]
    fn ages_read_naturally() {
        assert_eq!(fmt_age(Duration::from_millis(400)), "0.4 s");
        assert_eq!(fmt_age(Duration::from_secs(303)), "5 min 3 s");
        assert_eq!(fmt_age(Duration::from_secs(90_000)), "1 d 1 h");
    }

    #[test]
    fn only_the_exact_token_matches() {
        let text = "admin_token = \"0123456789abcdef\"";
        let o = crate::config::Overrides::default();
        let c = Config::from_toml(text, std::path::Path::new("x.toml"), &o).unwrap();
        let t = c.admin_token.unwrap();
        assert!(token_matches(&t, "0123456789abcdef"));
        assert!(!token_matches(&t, "0123456789abcdeF"));
        assert!(!token_matches(&t, ""));
    }

    #[test]
    fn loopback_hosts() {
        let ok = |host: &str| {
            let mut h = HeaderMap::new();
            h.insert(header::HOST, host.parse().unwrap());
            loopback_host(&h)
        };
        assert!(ok("127.0.0.1:9188") && ok("localhost:9188") && ok("[::1]:9188"));
        assert!(!ok("evil.example:9188") && !ok("10.0.0.1"));
    }

    #[test]
    fn query_values_are_percent_encoded() {
        assert_eq!(url_encode("a b&c=*"), "a%20b%26c%3D%2A");
    }
}
