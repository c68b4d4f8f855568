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
use axum::extract::{Form, Query, Request, State};
use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::middleware::{self, Next};
use axum::response::{Html, IntoResponse, Redirect, Response};
use axum::routing::{get, post};
use serde::Deserialize;
use sha2::{Digest, Sha256};
use smartcache::KeyInfo;
use smartcache_core::keys::TableName;
use std::fmt::Write as _;
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

fn forbidden(why: &str) -> Response {
    tracing::warn!(reason = why, "admin: write action refused");
    let body = format!(
        "{HEAD}<title>403 Forbidden</title></head><body><h1>403 Forbidden</h1>\
         <p id=\"error\">{}</p><p><a href=\"/\">Back to the admin page</a></p></body></html>",
        esc(why)
    );
    (StatusCode::FORBIDDEN, Html(body)).into_response()
}

fn bad_request(why: &str) -> Response {
    let body = format!(
        "{HEAD}<title>400 Bad Request</title></head><body><h1>400 Bad Request</h1>\
         <p id=\"error\">{}</p><p><a href=\"/\">Back to the admin page</a></p></body></html>",
        esc(why)
    );
    (StatusCode::BAD_REQUEST, Html(body)).into_response()
}

fn failed(what: &str, e: impl std::fmt::Display) -> Response {
    let body = format!(
        "{HEAD}<title>Error</title></head><body><h1>{}</h1><p id=\"error\">{}</p>\
         <p><a href=\"/\">Back to the admin page</a></p></body></html>",
        esc(what),
        esc(&e.to_string())
    );
    (StatusCode::SERVICE_UNAVAILABLE, Html(body)).into_response()
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
    Html(render(&state, &pattern, q.msg.as_deref(), listed, batches)).into_response()
}

const HEAD: &str = "<!doctype html><html lang=\"en\"><head><meta charset=\"utf-8\">\
<meta name=\"viewport\" content=\"width=device-width, initial-scale=1\">";

const STYLE: &str = "<style>
body{font:14px/1.4 system-ui,sans-serif;margin:1.5rem;color:#222;max-width:80rem}
h1{font-size:1.3rem}h2{font-size:1.1rem;margin-top:2rem}
code{font:13px ui-monospace,monospace}
table{border-collapse:collapse;width:100%}
th,td{text-align:left;padding:.25rem .6rem;border-bottom:1px solid #ddd;vertical-align:top}
th{background:#f4f4f4}td.num,th.num{text-align:right}
.deps code{background:#eef;padding:0 .25rem;margin-right:.25rem;border-radius:3px}
.msg{background:#e8f6e8;padding:.4rem .6rem;border-radius:4px}
.warn{background:#fff4d6;padding:.4rem .6rem;border-radius:4px}
.error{background:#fde2e2;padding:.4rem .6rem;border-radius:4px}
form.inline{display:inline;margin:0}
.muted{color:#777}
</style>";

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

fn render(
    state: &AppState,
    pattern: &str,
    msg: Option<&str>,
    listed: Result<(Vec<KeyInfo>, bool), smartcache::Error>,
    batches: redis::RedisResult<Vec<Batch>>,
) -> String {
    let ns = state.config.namespace.name();
    let writes = state.config.admin_token.is_some();
    let mut h = String::with_capacity(16 * 1024);
    let _ = write!(
        h,
        "{HEAD}<title>smartcache · {ns}</title>{STYLE}</head><body>\
         <h1>smartcache · namespace <code>{ns}</code></h1>",
        ns = esc(ns)
    );
    if let Some(m) = msg {
        let _ = write!(h, "<p class=\"msg\" id=\"msg\">{}</p>", esc(m));
    }
    if writes {
        h.push_str(
            "<p><label>Admin token <input type=\"password\" id=\"token\" autocomplete=\"off\" \
             size=\"36\"></label> <span class=\"muted\">needed to clear; kept in this tab \
             only, sent as a form field</span></p>",
        );
    } else {
        h.push_str(
            "<p class=\"warn\" id=\"writes-disabled\">Write actions are disabled: set \
             <code>admin_token</code> in the config file or <code>SMARTCACHE_ADMIN_TOKEN</code> \
             to enable the clear buttons.</p>",
        );
    }
    let _ = write!(
        h,
        "<h2>Keys</h2><form method=\"get\" action=\"/\" id=\"search\">\
         <label>Pattern <input name=\"pattern\" value=\"{}\" size=\"40\"></label> \
         <button type=\"submit\">Search</button> \
         <span class=\"muted\">Redis glob: <code>*</code> <code>?</code> <code>[abc]</code>, \
         <code>\\</code> escapes</span></form>",
        esc(pattern)
    );
    match listed {
        Ok((keys, more)) => render_keys(&mut h, &keys, more, pattern, writes),
        Err(e) => {
            let _ = write!(
                h,
                "<p class=\"error\">Cannot list keys: {}</p>",
                esc(&e.to_string())
            );
        }
    }
    if writes {
        let _ = write!(
            h,
            "<h2>Clear a table</h2><form method=\"post\" action=\"/clear-table\" \
             class=\"write\" id=\"clear-table\"><input type=\"hidden\" name=\"token\">\
             <input type=\"hidden\" name=\"pattern\" value=\"{}\">\
             <label>Table <input name=\"table\" list=\"tables\" placeholder=\"schema.table\" \
             required></label> <button type=\"submit\">Clear table</button> \
             <span class=\"muted\">deletes what a TRUNCATE would: its key templates and \
             everything registered on the table or its rows</span>\
             <datalist id=\"tables\">",
            esc(pattern)
        );
        for t in &state.config.tables {
            let _ = write!(h, "<option value=\"{}\">", esc(&t.name.to_string()));
        }
        h.push_str("</datalist></form>");
    }
    h.push_str("<h2>Recent invalidations</h2>");
    match batches {
        Ok(b) if b.is_empty() => h.push_str(
            "<p class=\"muted\" id=\"recent-empty\">None recorded yet: the daemon \
             (<code>run</code>) lists its last 100 batches here.</p>",
        ),
        Ok(b) => render_batches(&mut h, &b),
        Err(e) => {
            let _ = write!(
                h,
                "<p class=\"error\">Cannot read recent invalidations: {}</p>",
                esc(&e.to_string())
            );
        }
    }
    h.push_str("<script src=\"/app.js\"></script></body></html>");
    h
}

fn render_keys(h: &mut String, keys: &[KeyInfo], more: bool, pattern: &str, writes: bool) {
    let bytes: u64 = keys.iter().map(|k| k.size_bytes).sum();
    let _ = write!(
        h,
        "<p id=\"count\">{} {} matching <code>{}</code>, {bytes} bytes{}</p>",
        keys.len(),
        if keys.len() == 1 { "key" } else { "keys" },
        esc(pattern),
        if more {
            format!(
                ". <strong id=\"capped\">Showing the first {LIST_LIMIT}; more keys match, \
                 narrow the pattern.</strong>"
            )
        } else {
            String::new()
        }
    );
    h.push_str(
        "<table id=\"keys\"><thead><tr><th>Key</th><th class=\"num\">Bytes</th>\
         <th class=\"num\" title=\"time since the library stored the value\">Age</th>\
         <th>Dependencies</th><th></th></tr></thead><tbody>",
    );
    for k in keys {
        let key = esc(&k.key);
        let _ = write!(
            h,
            "<tr data-key=\"{key}\"><td class=\"key\"><code>{key}</code></td>\
             <td class=\"num size\">{}</td><td class=\"num age\">{}</td><td class=\"deps\">",
            k.size_bytes,
            k.age.map_or_else(
                || "<span class=\"muted\" title=\"not stored by the library\">–</span>".into(),
                fmt_age
            )
        );
        for d in &k.deps {
            let _ = write!(h, "<code>{}</code>", esc(d));
        }
        h.push_str("</td><td>");
        if writes {
            let _ = write!(
                h,
                "<form method=\"post\" action=\"/clear\" class=\"write inline\">\
                 <input type=\"hidden\" name=\"key\" value=\"{key}\">\
                 <input type=\"hidden\" name=\"pattern\" value=\"{}\">\
                 <input type=\"hidden\" name=\"token\">\
                 <button type=\"submit\" class=\"clear\">clear</button></form>",
                esc(pattern)
            );
        }
        h.push_str("</td></tr>");
    }
    h.push_str("</tbody></table>");
}

fn render_batches(h: &mut String, batches: &[Batch]) {
    h.push_str(
        "<table id=\"recent\"><thead><tr><th>Applied (UTC)</th><th class=\"num\">Events</th>\
         <th class=\"num\">Keys deleted</th><th class=\"num\">Commit → delete lag</th>\
         </tr></thead><tbody>",
    );
    for b in batches {
        let lag = if (b.lag_max_ms - b.lag_min_ms).abs() < 0.05 {
            format!("{:.1} ms", b.lag_max_ms)
        } else {
            format!("{:.1}–{:.1} ms", b.lag_min_ms, b.lag_max_ms)
        };
        let _ = write!(
            h,
            "<tr><td>{}</td><td class=\"num\">{}</td><td class=\"num\">{}</td>\
             <td class=\"num\">{lag}</td></tr>",
            fmt_utc(b.at_ms),
            b.events,
            b.deleted
        );
    }
    h.push_str("</tbody></table>");
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

/// Escapes text for HTML content and quoted attributes.
fn esc(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#39;"),
            c => out.push(c),
        }
    }
    out
}

fn url_encode(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || b"-_.~".contains(&b) {
            out.push(b as char);
        } else {
            let _ = write!(out, "%{b:02X}");
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn html_is_escaped() {
        assert_eq!(
            esc("<a href=\"x\">'&"),
            "&lt;a href=&quot;x&quot;&gt;&#39;&amp;"
        );
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
