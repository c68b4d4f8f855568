//! Redis Sentinel: a replica of a given primary and three sentinels
//! watching them (quorum 2, the primary deemed down after 1 s), each its
//! own `redis-server` process (`--sentinel` mode for the sentinels, which
//! is what Debian's `redis-sentinel` runs) on a free port, stopped by PID
//! on drop.

use crate::servers::{free_port, tail, wait_for, Redis, WAIT};
use std::process::{Child, Command, Stdio};
use std::time::Duration;
use tempfile::TempDir;

/// The service name the sentinels monitor.
pub const SERVICE: &str = "smartcache";

/// How many sentinels watch the primary.
const SENTINELS: usize = 3;

/// A replica of the primary and the sentinels watching both. The primary
/// itself is the caller's [`Redis`] (so a [`crate::servers::Stack`] can
/// own it and kill it).
pub struct Sentinels {
    /// The replica, promoted by a failover.
    pub replica: Redis,
    sentinels: Vec<(u16, Child)>,
    dir: TempDir,
}

async fn query<T: redis::FromRedisValue>(port: u16, cmd: &redis::Cmd) -> Option<T> {
    let client = redis::Client::open(format!("redis://127.0.0.1:{port}/")).ok()?;
    let mut con = tokio::time::timeout(
        Duration::from_secs(1),
        client.get_multiplexed_async_connection(),
    )
    .await
    .ok()?
    .ok()?;
    tokio::time::timeout(Duration::from_secs(1), cmd.query_async(&mut con))
        .await
        .ok()?
        .ok()
}

impl Sentinels {
    /// Starts a replica of `primary` and three sentinels monitoring it;
    /// `replica_args` go to the replica's `redis-server` (e.g.
    /// `--masterauth`), `auth_pass` is the password the sentinels use
    /// (`sentinel auth-pass`). Waits until the replica is in sync and every
    /// sentinel knows the replica and the other sentinels.
    pub async fn start(primary: &Redis, replica_args: &[&str], auth_pass: Option<&str>) -> Self {
        let primary_port = primary.port().to_string();
        let mut args = vec!["--replicaof", "127.0.0.1", &primary_port];
        args.extend_from_slice(replica_args);
        let replica = Redis::start_with_args(&args).await;
        let dir = tempfile::Builder::new()
            .prefix("smartcache-sentinel-")
            .tempdir()
            .expect("temporary directory");
        let mut set = Self {
            replica,
            sentinels: Vec::new(),
            dir,
        };
        set.wait_in_sync(auth_pass).await;
        for i in 0..SENTINELS {
            let port = free_port();
            let conf = set.dir.path().join(format!("sentinel-{i}.conf"));
            let mut text = format!(
                "port {port}\nbind 127.0.0.1\ndir {}\n\
                 sentinel monitor {SERVICE} 127.0.0.1 {} 2\n\
                 sentinel down-after-milliseconds {SERVICE} 1000\n\
                 sentinel failover-timeout {SERVICE} 5000\n\
                 sentinel parallel-syncs {SERVICE} 1\n",
                set.dir.path().display(),
                primary.port()
            );
            if let Some(pass) = auth_pass {
                text.push_str(&format!("sentinel auth-pass {SERVICE} {pass}\n"));
            }
            std::fs::write(&conf, text).expect("write the sentinel config");
            let log = std::fs::File::create(set.dir.path().join(format!("sentinel-{i}.log")))
                .expect("sentinel log");
            let child = Command::new("redis-server")
                .arg(&conf)
                .arg("--sentinel")
                .stdin(Stdio::null())
                .stdout(log)
                .stderr(Stdio::null())
                .spawn()
                .expect("start redis-server --sentinel");
            set.sentinels.push((port, child));
        }
        let ports = set.ports();
        for &port in &ports {
            wait_for(
                "a sentinel to see the replica and the other sentinels",
                WAIT,
                || async move {
                    let mut cmd = redis::cmd("SENTINEL");
                    cmd.arg("MASTER").arg(SERVICE);
                    let info: std::collections::HashMap<String, String> = query(port, &cmd).await?;
                    let known = |k: &str| info.get(k).and_then(|v| v.parse::<usize>().ok());
                    (known("num-slaves")? >= 1 && known("num-other-sentinels")? >= SENTINELS - 1)
                        .then_some(())
                },
            )
            .await;
        }
        set
    }

    async fn wait_in_sync(&self, auth_pass: Option<&str>) {
        let port = self.replica.port();
        let pass = auth_pass.map(str::to_owned);
        wait_for("the replica to sync with the primary", WAIT, || {
            let pass = pass.clone();
            async move {
                let client = redis::Client::open(format!("redis://127.0.0.1:{port}/")).ok()?;
                let mut con = client.get_multiplexed_async_connection().await.ok()?;
                if let Some(pass) = pass {
                    redis::cmd("AUTH")
                        .arg(pass)
                        .query_async::<()>(&mut con)
                        .await
                        .ok()?;
                }
                let info: String = redis::cmd("INFO")
                    .arg("replication")
                    .query_async(&mut con)
                    .await
                    .ok()?;
                info.contains("master_link_status:up").then_some(())
            }
        })
        .await;
    }

    /// Ports of the sentinels.
    pub fn ports(&self) -> Vec<u16> {
        self.sentinels.iter().map(|(p, _)| *p).collect()
    }

    /// `redis+sentinel://…/smartcache/0` through every sentinel, with
    /// `auth` (`:password@`) when given.
    pub fn url(&self, auth: &str) -> String {
        let hosts: Vec<String> = self
            .ports()
            .iter()
            .map(|p| format!("127.0.0.1:{p}"))
            .collect();
        format!("redis+sentinel://{auth}{}/{SERVICE}/0", hosts.join(","))
    }

    /// The port of the primary that the first sentinel that answers names.
    pub async fn primary_port(&self) -> Option<u16> {
        for port in self.ports() {
            let mut cmd = redis::cmd("SENTINEL");
            cmd.arg("GET-MASTER-ADDR-BY-NAME").arg(SERVICE);
            if let Some((_, p)) = query::<(String, u16)>(port, &cmd).await {
                return Some(p);
            }
        }
        None
    }

    /// `SENTINEL FAILOVER`: promotes the replica without waiting for the
    /// primary to fail.
    pub async fn failover(&self) {
        let mut cmd = redis::cmd("SENTINEL");
        cmd.arg("FAILOVER").arg(SERVICE);
        let reply: Option<String> = query(self.ports()[0], &cmd).await;
        assert_eq!(reply.as_deref(), Some("OK"), "SENTINEL FAILOVER");
    }

    /// Waits until every sentinel names the replica as the primary and the
    /// replica says it is one.
    pub async fn wait_promoted(&self) {
        let replica = self.replica.port();
        let ports = self.ports();
        wait_for("the sentinels to promote the replica", WAIT, || {
            let ports = ports.clone();
            async move {
                for port in ports {
                    let mut cmd = redis::cmd("SENTINEL");
                    cmd.arg("GET-MASTER-ADDR-BY-NAME").arg(SERVICE);
                    let (_, p): (String, u16) = query(port, &cmd).await?;
                    if p != replica {
                        return None;
                    }
                }
                let role: Vec<redis::Value> = query(replica, &redis::cmd("ROLE")).await?;
                matches!(role.first(), Some(redis::Value::BulkString(r)) if r == b"master")
                    .then_some(())
            }
        })
        .await;
    }

    /// Waits until the server on `port` (the old primary, after a
    /// failover it survived) says it is a replica: the sentinels
    /// reconfigured it, and it accepts no more writes.
    pub async fn wait_demoted(&self, port: u16) {
        wait_for("the old primary to become a replica", WAIT, || async move {
            let role: Vec<redis::Value> = query(port, &redis::cmd("ROLE")).await?;
            matches!(role.first(), Some(redis::Value::BulkString(r)) if r == b"slave").then_some(())
        })
        .await;
    }

    /// The sentinels' logs, last lines.
    pub fn logs(&self) -> String {
        (0..self.sentinels.len())
            .map(|i| {
                let log =
                    std::fs::read_to_string(self.dir.path().join(format!("sentinel-{i}.log")))
                        .unwrap_or_default();
                format!("--- sentinel {i}:\n{}", tail(&log, 15))
            })
            .collect::<Vec<_>>()
            .join("\n")
    }
}

impl Drop for Sentinels {
    fn drop(&mut self) {
        if std::thread::panicking() {
            eprintln!("{}", self.logs());
        }
        for (_, child) in &mut self.sentinels {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}
