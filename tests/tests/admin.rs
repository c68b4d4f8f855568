//! The admin page in a real headless browser (Debian's `chromium` driven
//! through `chromedriver` with fantoccini): keys listed with size,
//! dependencies and age, search, recent invalidations, and clearing a key
//! only with the right token.

use fantoccini::{Client, ClientBuilder, Locator};
use serde_json::json;
use smartcache::{Cache, Dep};
use smartcache_invalidator::config::Config;
use smartcache_tests::{free_port, Env, PATIENCE};
use std::os::unix::process::CommandExt;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};
use tokio::sync::oneshot;

const TOKEN: &str = "correct-horse-battery-staple";
const CHROMEDRIVER: &str = "/usr/bin/chromedriver";
const CHROMIUM: &str = "/usr/bin/chromium";

const SETUP: &str = "CREATE TABLE products (id int PRIMARY KEY, price int);
                     INSERT INTO products SELECT g, 100 FROM generate_series(1, 5) g;";

/// `chromedriver` on a free port, killed by PID on drop.
struct Driver {
    child: Child,
    url: String,
    _profile: tempfile::TempDir,
}

impl Driver {
    async fn start() -> Self {
        assert!(
            Path::new(CHROMEDRIVER).exists() && Path::new(CHROMIUM).exists(),
            "the admin page tests need a headless browser: {CHROMEDRIVER} or {CHROMIUM} is \
             missing; install them with `apt-get install -y chromium chromium-driver`"
        );
        let port = free_port();
        // Its own process group, so that dropping it also ends the
        // browsers it started when a test panics before closing them.
        let child = Command::new(CHROMEDRIVER)
            .process_group(0)
            .arg(format!("--port={port}"))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("start chromedriver");
        let me = Self {
            child,
            url: format!("http://127.0.0.1:{port}"),
            _profile: tempfile::tempdir().unwrap(),
        };
        let start = Instant::now();
        while tokio::net::TcpStream::connect(("127.0.0.1", port))
            .await
            .is_err()
        {
            assert!(start.elapsed() < PATIENCE, "chromedriver did not start");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        me
    }

    async fn browser(&self) -> Client {
        let profile = self._profile.path().display().to_string();
        let caps = json!({
            "goog:chromeOptions": {
                "binary": CHROMIUM,
                "args": [
                    "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic",
                    "--no-first-run", "--disable-background-networking",
                    "--disable-component-update", "--disable-sync",
                    "--disable-dev-shm-usage", "--window-size=1280,860",
                    format!("--user-data-dir={profile}"),
                ],
            }
        });
        let serde_json::Value::Object(caps) = caps else {
            unreachable!()
        };
        ClientBuilder::native()
            .capabilities(caps)
            .connect(&self.url)
            .await
            .expect("open a chromium session through chromedriver")
    }
}

impl Drop for Driver {
    fn drop(&mut self) {
        let group = format!("-{}", self.child.id());
        let _ = Command::new("kill").args(["-KILL", "--", &group]).status();
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The admin server, in-process on a free port, stopped on drop.
struct Admin {
    url: String,
    stop: Option<oneshot::Sender<()>>,
}

impl Admin {
    async fn start(config: &Config) -> Self {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}", listener.local_addr().unwrap());
        let (tx, rx) = oneshot::channel::<()>();
        tokio::spawn(smartcache_invalidator::admin::serve_on(
            config.clone(),
            listener,
            async {
                let _ = rx.await;
            },
        ));
        Self {
            url,
            stop: Some(tx),
        }
    }
}

impl Drop for Admin {
    fn drop(&mut self) {
        if let Some(tx) = self.stop.take() {
            let _ = tx.send(());
        }
    }
}

/// A namespace with three library entries and one written by another
/// program, and an admin page with (or without) a token.
async fn world(tag: &str, token: bool) -> (Env, Config, Cache) {
    let env = Env::new(tag, SETUP).await;
    let extra = if token {
        format!("admin_token = {TOKEN:?}\n")
    } else {
        String::new()
    };
    let config = env.config(&format!(
        "{extra}[[tables]]\nname = \"products\"\nkeys = [\"product:{{id}}\"]\n"
    ));
    let cache = env.cache().await;
    cache
        .set("product:1", &"teapot", [Dep::row("products", [1])])
        .await
        .unwrap();
    cache
        .set("product:2", &"kettle", [Dep::row("products", [2])])
        .await
        .unwrap();
    cache
        .set("product_list", &[1, 2], [Dep::table("products")])
        .await
        .unwrap();
    (env, config, cache)
}

/// Cells of the keys table: key → (bytes, age, dependencies).
async fn rows(c: &Client) -> Vec<(String, String, String, String)> {
    let mut out = Vec::new();
    for tr in c.find_all(Locator::Css("#keys tbody tr")).await.unwrap() {
        let cell = |sel: &'static str| {
            let tr = tr.clone();
            async move {
                tr.find(Locator::Css(sel))
                    .await
                    .unwrap()
                    .text()
                    .await
                    .unwrap()
            }
        };
        out.push((
            cell("td.key").await,
            cell("td.size").await,
            cell("td.age").await,
            cell("td.deps").await,
        ));
    }
    out
}

async fn keys_listed(c: &Client) -> Vec<String> {
    rows(c).await.into_iter().map(|r| r.0).collect()
}

/// Clicks the clear button of `key` with `token` typed into the token box
/// and waits for the next page.
async fn clear_with(c: &Client, key: &str, token: &str) {
    let box_ = c.find(Locator::Id("token")).await.unwrap();
    box_.clear().await.unwrap();
    box_.send_keys(token).await.unwrap();
    let button = c
        .find(Locator::Css(&format!(
            "#keys tr[data-key=\"{key}\"] button.clear"
        )))
        .await
        .unwrap();
    button.click().await.unwrap();
    c.wait()
        .at_most(PATIENCE)
        .for_element(Locator::Css("#msg, #error"))
        .await
        .unwrap();
}

#[tokio::test]
async fn keys_are_listed_searched_and_cleared_with_the_token() {
    let (mut env, config, cache) = world("admin_list", true).await;
    env.install(&config).await;
    let daemon = env.start_daemon(&config);
    env.put(&["product:3"]).await;
    env.pg
        .batch_execute("UPDATE products SET price = 1 WHERE id = 3")
        .await
        .unwrap();
    env.wait_gone(&["product:3", "product_list"]).await;
    // Cached again after the change, and one value another program wrote.
    cache
        .set("product_list", &[1, 2], [Dep::table("products")])
        .await
        .unwrap();
    env.put(&["written_by_php"]).await;

    let admin = Admin::start(&config).await;
    let driver = Driver::start().await;
    let c = driver.browser().await;
    c.goto(&format!("{}/", admin.url)).await.unwrap();

    let listed = rows(&c).await;
    let summary: Vec<(&str, &str, &str)> = listed
        .iter()
        .map(|(k, size, _, deps)| (k.as_str(), size.as_str(), deps.as_str()))
        .collect();
    assert_eq!(
        summary,
        [
            ("product:1", "8", "r:public.products:1"),
            ("product:2", "8", "r:public.products:2"),
            ("product_list", "5", "t:public.products"),
            ("written_by_php", "6", ""),
        ]
    );
    assert!(
        listed[0].2.ends_with(" s"),
        "age of a library entry: {listed:?}"
    );
    assert_eq!(listed[3].2, "–", "no age for a foreign value");

    // The daemon's batch for the UPDATE, with its lag.
    let recent = c.find(Locator::Css("#recent tbody tr")).await.unwrap();
    let recent = recent.text().await.unwrap();
    assert!(recent.contains(" ms"), "{recent}");

    // Search by glob.
    let pattern = c
        .find(Locator::Css("#search input[name=pattern]"))
        .await
        .unwrap();
    pattern.clear().await.unwrap();
    pattern.send_keys("product:*").await.unwrap();
    c.find(Locator::Css("#search button"))
        .await
        .unwrap()
        .click()
        .await
        .unwrap();
    let start = Instant::now();
    while !c
        .current_url()
        .await
        .unwrap()
        .as_str()
        .contains("pattern=product")
    {
        assert!(start.elapsed() < PATIENCE, "search did not load");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(keys_listed(&c).await, ["product:1", "product:2"]);

    // SMARTCACHE_ADMIN_SCREENSHOT=docs/admin.png regenerates the README's
    // picture (relative to the workspace root).
    c.goto(&format!("{}/", admin.url)).await.unwrap();
    let png = c.screenshot().await.unwrap();
    assert!(png.starts_with(b"\x89PNG"), "a PNG screenshot");
    if let Ok(path) = std::env::var("SMARTCACHE_ADMIN_SCREENSHOT") {
        let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("..").join(path);
        std::fs::write(&path, png).unwrap();
    }

    clear_with(&c, "product:1", TOKEN).await;
    let msg = c
        .find(Locator::Id("msg"))
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert_eq!(msg, "cleared product:1");
    assert!(!env.cached("product:1").await);
    for k in ["product:2", "product_list", "written_by_php"] {
        assert!(env.cached(k).await, "{k} must survive");
    }
    assert_eq!(
        keys_listed(&c).await,
        ["product:2", "product_list", "written_by_php"]
    );
    c.close().await.unwrap();
    daemon.stop().await;
}

#[tokio::test]
async fn wrong_or_missing_token_is_refused_and_deletes_nothing() {
    let (mut env, config, _cache) = world("admin_refuse", true).await;
    let admin = Admin::start(&config).await;
    let driver = Driver::start().await;
    let c = driver.browser().await;
    c.goto(&format!("{}/", admin.url)).await.unwrap();

    clear_with(&c, "product:1", "not-the-token-at-all").await;
    let error = c
        .find(Locator::Id("error"))
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert_eq!(error, "Wrong admin token. Nothing was deleted.");
    assert_eq!(c.title().await.unwrap(), "403 Forbidden");

    // The same requests from the page's own origin, status codes checked.
    let status = |token: &'static str| {
        let c = c.clone();
        async move {
            c.execute_async(
                "const [token, done] = arguments; \
                 const body = new URLSearchParams({key: 'product:1'}); \
                 if (token) body.set('token', token); \
                 fetch('/clear', {method: 'POST', body}).then(r => done(r.status));",
                vec![json!(token)],
            )
            .await
            .unwrap()
        }
    };
    assert_eq!(status("").await, json!(403), "missing token");
    assert_eq!(status("wrong-token-wrong-token").await, json!(403));
    let table = c
        .execute_async(
            "const done = arguments[0]; \
             fetch('/clear-table', {method: 'POST', body: new URLSearchParams({table: 'products', token: 'nope'})}) \
               .then(r => done(r.status));",
            vec![],
        )
        .await
        .unwrap();
    assert_eq!(table, json!(403), "clearing a table needs the token too");
    for k in ["product:1", "product:2", "product_list"] {
        assert!(env.cached(k).await, "{k} must survive a refused clear");
    }
    c.close().await.unwrap();
}

#[tokio::test]
async fn without_a_configured_token_write_actions_are_disabled() {
    let (mut env, config, _cache) = world("admin_no_token", false).await;
    let admin = Admin::start(&config).await;
    let driver = Driver::start().await;
    let c = driver.browser().await;
    c.goto(&format!("{}/", admin.url)).await.unwrap();
    let note = c.find(Locator::Id("writes-disabled")).await.unwrap();
    assert!(note.text().await.unwrap().contains("disabled"));
    assert!(c
        .find_all(Locator::Css("button.clear"))
        .await
        .unwrap()
        .is_empty());
    let status = c
        .execute_async(
            "const done = arguments[0]; \
             fetch('/clear', {method: 'POST', body: new URLSearchParams({key: 'product:1', token: 'anything-at-all-here'})}) \
               .then(r => done(r.status));",
            vec![],
        )
        .await
        .unwrap();
    assert_eq!(status, json!(403));
    assert!(env.cached("product:1").await);
    c.close().await.unwrap();
}
