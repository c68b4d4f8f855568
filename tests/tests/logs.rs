//! Logs written to a file (as journald or a container's collector gets
//! them): plain text without colour escapes, or one JSON object per line.

use smartcache_tests::servers::{daemon_binary, signal, wait_for, WAIT};
use smartcache_tests::Env;
use std::process::{Command, Stdio};

/// Runs the daemon with stderr to a file until it listens, stops it, and
/// returns what it wrote.
async fn daemon_log(env: &mut Env, format: &str) -> String {
    let config = env.config("[[tables]]\nname = \"items\"\n");
    env.install(&config).await;
    let dir = tempfile::tempdir().unwrap();
    let log = dir.path().join("daemon.log");
    let mut child = Command::new(daemon_binary())
        .args(["--database-url", &env.db.url])
        .args(["--redis-url", &env.redis_url])
        .args(["--namespace", env.ns.name()])
        .args(["--log-format", format, "run"])
        .env("RUST_LOG", "info")
        .env_remove("NO_COLOR")
        .current_dir(dir.path())
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(&log).unwrap())
        .spawn()
        .unwrap();
    wait_for("the daemon to listen", WAIT, || async {
        let text = std::fs::read_to_string(&log).unwrap_or_default();
        text.contains("listening").then_some(())
    })
    .await;
    signal(child.id(), "-TERM");
    let status = tokio::task::spawn_blocking(move || child.wait().unwrap())
        .await
        .unwrap();
    assert!(status.success(), "daemon exited with {status}");
    std::fs::read_to_string(&log).unwrap()
}

const SETUP: &str = "CREATE TABLE items (id int PRIMARY KEY, val int)";

#[tokio::test]
async fn text_logs_to_a_file_carry_no_colour_escapes() {
    let mut env = Env::new("logs_text", SETUP).await;
    let text = daemon_log(&mut env, "text").await;
    assert!(
        text.contains("listening") && text.contains("stopped"),
        "{text}"
    );
    assert!(
        !text.contains('\u{1b}'),
        "ANSI escapes in a log file:\n{text:?}"
    );
}

#[tokio::test]
async fn json_logs_are_one_object_per_line() {
    let mut env = Env::new("logs_json", SETUP).await;
    let text = daemon_log(&mut env, "json").await;
    assert!(!text.contains('\u{1b}'), "{text:?}");
    let mut messages = Vec::new();
    for line in text.lines() {
        let v: serde_json::Value = serde_json::from_str(line)
            .unwrap_or_else(|e| panic!("not one JSON object per line ({e}): {line:?}"));
        messages.push(v["fields"]["message"].as_str().unwrap_or("").to_owned());
    }
    assert!(
        messages.iter().any(|m| m.contains("listening")),
        "{messages:?}"
    );
}
