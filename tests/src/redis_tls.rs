//! Throwaway Redis servers that speak TLS: one `redis-server` with only a
//! `--tls-port` (optionally requiring client certificates), and a 3-primary
//! Redis Cluster with `--tls-cluster yes`. Certificates come from a
//! [`Ca`] of the test; the server certificates are valid for `127.0.0.1`
//! and `localhost`. Stopped by PID on drop, like the plain fixtures of
//! [`crate::servers`].

use crate::ca::{Ca, Issued};
use crate::servers::{free_cluster_port, free_port, tail, wait_for, CLUSTER_NODES, WAIT};
use smartcache_core::conn::{Conn, Options};
use smartcache_core::tls::Tls;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use tempfile::TempDir;

/// A CA with a server certificate and a client certificate, for
/// [`TlsRedis`] and [`TlsRedisCluster`].
pub struct Certs {
    pub ca: Ca,
    pub server: Issued,
    pub client: Issued,
}

impl Certs {
    /// A new CA named `name`, a server certificate for 127.0.0.1 and
    /// localhost, and a client certificate.
    pub fn new(name: &str) -> Self {
        Self::for_server_names(name, &["127.0.0.1", "localhost"])
    }

    /// Like [`Certs::new`], the server certificate valid for `names` only.
    pub fn for_server_names(name: &str, names: &[&str]) -> Self {
        let ca = Ca::new(name);
        let server = ca.issue("redis-server", names[0], names);
        let client = ca.issue("redis-client", "smartcache", &[]);
        Self { ca, server, client }
    }

    /// TLS settings trusting this CA, without a client certificate.
    pub fn ca_only(&self) -> Tls {
        Tls::from_files(Some(self.ca.cert()), None).expect("test CA")
    }

    /// TLS settings trusting this CA, presenting the client certificate.
    pub fn tls(&self) -> Tls {
        Tls::from_files(
            Some(self.ca.cert()),
            Some((&self.client.cert, &self.client.key)),
        )
        .expect("test certificates")
    }

    /// The `redis-server` arguments serving with these certificates.
    fn server_args(&self, mtls: bool) -> Vec<String> {
        let path = |p: &Path| p.display().to_string();
        vec![
            "--tls-cert-file".into(),
            path(&self.server.cert),
            "--tls-key-file".into(),
            path(&self.server.key),
            "--tls-ca-cert-file".into(),
            path(self.ca.cert()),
            "--tls-auth-clients".into(),
            if mtls { "yes" } else { "no" }.into(),
        ]
    }

    /// The config file lines of the daemon for these certificates
    /// (`redis_ca_file`, and the client certificate when `mtls`).
    pub fn config_lines(&self, mtls: bool) -> String {
        let mut out = format!(
            "redis_ca_file = {:?}\n",
            self.ca.cert().display().to_string()
        );
        if mtls {
            out.push_str(&format!(
                "redis_client_cert_file = {:?}\nredis_client_key_file = {:?}\n",
                self.client.cert.display().to_string(),
                self.client.key.display().to_string()
            ));
        }
        out
    }
}

fn spawn(args: &[String], dir: &Path) -> Child {
    let log = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(dir.join("redis.log"))
        .expect("Redis log file");
    Command::new("redis-server")
        .args(args)
        .args(["--bind", "127.0.0.1", "--save", "", "--appendonly", "no"])
        .arg("--dir")
        .arg(dir)
        .stdin(Stdio::null())
        .stdout(log)
        .stderr(Stdio::null())
        .spawn()
        .expect("start redis-server")
}

async fn answers(url: &str, options: &Options) -> bool {
    let Ok(mut con) = Conn::open(url, options) else {
        return false;
    };
    let ping = redis::cmd("PING");
    matches!(
        tokio::time::timeout(
            std::time::Duration::from_secs(1),
            ping.query_async::<String>(&mut con)
        )
        .await,
        Ok(Ok(_))
    )
}

/// A `redis-server` with a TLS port and no plain one (`--port 0`).
pub struct TlsRedis {
    child: Option<Child>,
    port: u16,
    dir: TempDir,
}

impl TlsRedis {
    /// Starts it with the server certificate of `certs`; `mtls` adds
    /// `--tls-auth-clients yes`. Extra `redis-server` arguments (e.g.
    /// `--requirepass`) follow. Waits until it answers over TLS.
    pub async fn start(certs: &Certs, mtls: bool, extra: &[&str]) -> Self {
        let dir = tempfile::Builder::new()
            .prefix("smartcache-redis-tls-")
            .tempdir()
            .expect("temporary directory");
        let port = free_port();
        let mut args = vec![
            "--port".into(),
            "0".into(),
            "--tls-port".into(),
            port.to_string(),
        ];
        args.extend(certs.server_args(mtls));
        args.extend(extra.iter().map(|s| s.to_string()));
        let mut redis = Self {
            child: Some(spawn(&args, dir.path())),
            port,
            dir,
        };
        let mut options = Options::default();
        options.tls = certs.tls();
        let url = redis.url();
        wait_for("the TLS Redis to answer", WAIT, || {
            let (url, options) = (url.clone(), options.clone());
            let exited = redis
                .child
                .as_mut()
                .is_some_and(|c| c.try_wait().ok().flatten().is_some());
            assert!(!exited, "redis-server exited:\n{}", redis.log());
            async move {
                let up = answers(&url, &options).await || refuses_auth(&url, &options).await;
                up.then_some(())
            }
        })
        .await;
        redis
    }

    /// `rediss://127.0.0.1:{port}/0`.
    pub fn url(&self) -> String {
        format!("rediss://127.0.0.1:{}/0", self.port)
    }

    /// The TLS port.
    pub fn port(&self) -> u16 {
        self.port
    }

    /// The server's log.
    pub fn log(&self) -> String {
        tail(
            &std::fs::read_to_string(self.dir.path().join("redis.log")).unwrap_or_default(),
            20,
        )
    }
}

async fn refuses_auth(url: &str, options: &Options) -> bool {
    let Ok(mut con) = Conn::open(url, options) else {
        return false;
    };
    let ping = redis::cmd("PING");
    match tokio::time::timeout(
        std::time::Duration::from_secs(1),
        ping.query_async::<String>(&mut con),
    )
    .await
    {
        // Refused for a password, or for the host name (a certificate for
        // another name): either way it is up and speaks TLS.
        Ok(Err(e)) => ["NOAUTH", "NotValidForName", "not valid for name"]
            .iter()
            .any(|w| e.to_string().contains(w)),
        _ => false,
    }
}

impl Drop for TlsRedis {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

/// A Redis Cluster of [`CLUSTER_NODES`] primaries speaking TLS to clients
/// and on the cluster bus (`--tls-cluster yes`), requiring client
/// certificates when `mtls`.
pub struct TlsRedisCluster {
    children: Vec<Child>,
    ports: Vec<u16>,
    dirs: Vec<TempDir>,
}

impl TlsRedisCluster {
    /// Starts the nodes, joins them with `redis-cli --tls --cluster create`
    /// and waits until a TLS cluster client reaches every slot.
    pub async fn start(certs: &Certs, mtls: bool) -> Self {
        let mut ports = Vec::new();
        for _ in 0..CLUSTER_NODES {
            ports.push(free_cluster_port(&ports));
        }
        let mut cluster = Self {
            children: Vec::new(),
            ports: ports.clone(),
            dirs: Vec::new(),
        };
        for &port in &ports {
            let dir = tempfile::Builder::new()
                .prefix("smartcache-redis-tls-cluster-")
                .tempdir()
                .expect("temporary directory");
            let mut args: Vec<String> = vec![
                "--port".into(),
                "0".into(),
                "--tls-port".into(),
                port.to_string(),
                "--tls-cluster".into(),
                "yes".into(),
                "--cluster-enabled".into(),
                "yes".into(),
                "--cluster-node-timeout".into(),
                "2000".into(),
                "--cluster-config-file".into(),
                dir.path().join("nodes.conf").display().to_string(),
            ];
            args.extend(certs.server_args(mtls));
            cluster.children.push(spawn(&args, dir.path()));
            cluster.dirs.push(dir);
        }
        let mut options = Options::default();
        options.tls = certs.tls();
        for url in cluster.node_urls() {
            wait_for(&format!("TLS cluster node {url} to answer"), WAIT, || {
                let (url, options) = (url.clone(), options.clone());
                async move { answers(&url, &options).await.then_some(()) }
            })
            .await;
        }
        let addrs: Vec<String> = ports.iter().map(|p| format!("127.0.0.1:{p}")).collect();
        let out = Command::new("redis-cli")
            .arg("--tls")
            .arg("--cacert")
            .arg(certs.ca.cert())
            .arg("--cert")
            .arg(&certs.client.cert)
            .arg("--key")
            .arg(&certs.client.key)
            .args(["--cluster", "create"])
            .args(&addrs)
            .args(["--cluster-replicas", "0", "--cluster-yes"])
            .stdin(Stdio::null())
            .output()
            .expect("run redis-cli --cluster create");
        let stdout = String::from_utf8_lossy(&out.stdout);
        assert!(
            out.status.success() && stdout.contains("[OK] All 16384 slots covered"),
            "redis-cli --tls --cluster create failed ({}):\n{stdout}{}",
            out.status,
            String::from_utf8_lossy(&out.stderr)
        );
        options.cluster = true;
        let seeds = cluster.seeds();
        wait_for("the TLS cluster to serve every node", WAIT, || {
            let (seeds, options) = (seeds.clone(), options.clone());
            async move { whole(&seeds, &options).await.then_some(()) }
        })
        .await;
        cluster
    }

    fn node_urls(&self) -> Vec<String> {
        self.ports
            .iter()
            .map(|p| format!("rediss://127.0.0.1:{p}/"))
            .collect()
    }

    /// The seed URLs, comma-separated, as `redis_url` takes them.
    pub fn seeds(&self) -> String {
        self.node_urls().join(",")
    }
}

/// Whether every primary reports `cluster_state:ok` and knows all nodes.
async fn whole(seeds: &str, options: &Options) -> bool {
    let Ok(mut con) = Conn::open(seeds, options) else {
        return false;
    };
    let mut info = redis::cmd("CLUSTER");
    info.arg("INFO");
    let replies = tokio::time::timeout(
        std::time::Duration::from_secs(2),
        con.each_primary::<String>(&info),
    )
    .await;
    matches!(replies, Ok(Ok(r)) if r.len() == CLUSTER_NODES
        && r.iter().all(|i| i.contains("cluster_state:ok")
            && i.contains(&format!("cluster_known_nodes:{CLUSTER_NODES}"))))
}

impl Drop for TlsRedisCluster {
    fn drop(&mut self) {
        for (child, dir) in self.children.iter_mut().zip(&self.dirs) {
            if std::thread::panicking() {
                eprintln!(
                    "--- TLS cluster node log:\n{}",
                    tail(
                        &std::fs::read_to_string(dir.path().join("redis.log")).unwrap_or_default(),
                        20
                    )
                );
            }
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}
