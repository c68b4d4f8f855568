//! What operators see: /metrics, /healthz, and the canary that catches
//! silent failures.

use smartcache_invalidator::config::Config;
use smartcache_tests::{free_port, http_get, sample, Env, PATIENCE};
use std::time::{Duration, Instant};

const SETUP: &str = "CREATE TABLE items (id int PRIMARY KEY, v int);
                     INSERT INTO items SELECT g, 0 FROM generate_series(1, 10) g;";

/// A config with metrics on a free port and `extra` settings.
fn config_with(env: &Env, extra: &str) -> (Config, String) {
    let addr = format!("127.0.0.1:{}", free_port());
    let config = env.config(&format!(
        "metrics_addr = {addr:?}\n{extra}\n[[tables]]\nname = \"items\"\nkeys = [\"item:{{id}}\"]\n"
    ));
    (config, addr)
}

/// Polls `/metrics` until `ok` holds; panics after [`PATIENCE`].
async fn wait_metrics(addr: &str, what: &str, ok: impl Fn(&str) -> bool) -> String {
    let start = Instant::now();
    loop {
        if let Ok(r) = http_get(addr, "/metrics").await {
            if ok(&r.body) {
                return r.body;
            }
            assert!(start.elapsed() < PATIENCE, "{what}; metrics:\n{}", r.body);
        }
        assert!(start.elapsed() < PATIENCE, "{what}: /metrics not served");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test]
async fn metrics_count_applied_changes_and_healthz_is_ok() {
    let mut env = Env::new("metrics", SETUP).await;
    let (config, addr) = config_with(&env, "canary_interval_ms = 200");
    env.install(&config).await;
    let daemon = env.start_daemon(&config);
    env.put(&["item:1", "item:2", "item:3"]).await;
    env.pg
        .batch_execute("UPDATE items SET v = 1 WHERE id <= 3")
        .await
        .unwrap();
    env.wait_gone(&["item:1", "item:2", "item:3"]).await;
    let metrics = wait_metrics(&addr, "3 keys deleted and a canary round trip", |m| {
        sample(m, "smartcache_keys_deleted_total").unwrap_or(0.0) >= 3.0
            && sample(m, "smartcache_canary_beats_total").unwrap_or(0.0) >= 1.0
    })
    .await;
    // One statement: one event, three rows.
    assert!(sample(&metrics, "smartcache_events_total").unwrap() >= 1.0);
    assert!(
        sample(&metrics, "smartcache_rows_changed_total").unwrap() >= 3.0,
        "{metrics}"
    );
    assert!(sample(&metrics, "smartcache_commit_to_delete_seconds_count").unwrap() >= 1.0);
    assert!(metrics.contains("smartcache_outbox_backlog"));
    let health = http_get(&addr, "/healthz").await.unwrap();
    assert_eq!((health.status, health.body.trim()), (200, "ok"));
    let canary_rows = || async {
        env.pg
            .query_one("SELECT count(*) FROM smartcache.canary", &[])
            .await
            .unwrap()
            .get::<_, i64>(0)
    };
    assert_eq!(
        canary_rows().await,
        1,
        "the canary beats through its own row"
    );
    daemon.stop().await;
    assert_eq!(
        canary_rows().await,
        0,
        "a clean stop removes the canary row"
    );
}

#[tokio::test]
async fn healthz_turns_unhealthy_when_redis_is_unreachable() {
    let mut env = Env::new("health_redis", SETUP).await;
    let (mut config, addr) = config_with(&env, "canary_interval_ms = 200");
    env.install(&config).await;
    config.redis_url = format!("redis://127.0.0.1:{}/0", free_port());
    let daemon = env.start_daemon(&config);
    let start = Instant::now();
    let health = loop {
        if let Ok(r) = http_get(&addr, "/healthz").await {
            if r.status == 503 && r.body.contains("redis") {
                break r;
            }
        }
        assert!(
            start.elapsed() < PATIENCE,
            "/healthz never turned unhealthy"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    assert!(health.body.contains("unhealthy"), "{}", health.body);
    daemon.stop().await;
}

/// Continues a stopped process when dropped, also when the test fails.
struct Stopped(i32);

impl Stopped {
    fn stop(pid: i32) -> Self {
        let ok = std::process::Command::new("kill")
            .args(["-STOP", &pid.to_string()])
            .status()
            .unwrap()
            .success();
        assert!(ok, "kill -STOP {pid}");
        Self(pid)
    }
}

impl Drop for Stopped {
    fn drop(&mut self) {
        let _ = std::process::Command::new("kill")
            .args(["-CONT", &self.0.to_string()])
            .status();
    }
}

/// A silent failure: the daemon's PostgreSQL backend hangs (SIGSTOP) while
/// its socket stays up, so no error ever arrives and queries never
/// return. The canary notices that its heartbeat is not invalidated, the
/// daemon drops the connection, reconnects and replays, and a user's
/// change committed meanwhile is applied.
#[tokio::test]
async fn canary_stall_makes_the_daemon_reconnect_and_replay() {
    let mut env = Env::new("canary_stall", SETUP).await;
    let (config, addr) = config_with(&env, "canary_interval_ms = 200");
    env.install(&config).await;
    let daemon = env.start_daemon(&config);
    wait_metrics(&addr, "a first canary round trip", |m| {
        sample(m, "smartcache_canary_beats_total").unwrap_or(0.0) >= 1.0
    })
    .await;
    let pid: i32 = env
        .pg
        .query_one(
            "SELECT pid FROM pg_stat_activity \
             WHERE datname = current_database() AND application_name = 'smartcache-invalidator'",
            &[],
        )
        .await
        .unwrap()
        .get(0);
    let hung = Stopped::stop(pid);
    env.put(&["item:5"]).await;
    env.pg
        .batch_execute("UPDATE items SET v = 2 WHERE id = 5")
        .await
        .unwrap();
    let metrics = wait_metrics(&addr, "a canary stall and a reconnect", |m| {
        sample(m, "smartcache_errors_total{kind=\"canary\"}").unwrap_or(0.0) >= 1.0
            && sample(m, "smartcache_reconnects_total").unwrap_or(0.0) >= 1.0
    })
    .await;
    assert!(metrics.contains("smartcache_reconnects_total"));
    env.wait_gone(&["item:5"]).await;
    drop(hung);
    daemon.stop().await;
}
