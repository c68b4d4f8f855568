//! A throwaway PgBouncer (Debian package `pgbouncer`) in front of a
//! harness PostgreSQL, on a free port of 127.0.0.1, in session or
//! transaction pooling mode. It runs as our child process, as the
//! `postgres` user when we are root (`-u`: it refuses to run as root),
//! and is killed by PID on drop.

use crate::servers::{free_port, tail, wait_for, WAIT};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use tempfile::TempDir;

/// PgBouncer's `pool_mode`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PoolMode {
    /// A server connection per client connection, for its whole life.
    Session,
    /// A server connection per transaction: LISTEN and `SET` do not last.
    Transaction,
}

/// A running PgBouncer.
pub struct PgBouncer {
    child: Option<Child>,
    port: u16,
    dir: TempDir,
}

impl PgBouncer {
    /// Starts it in front of the PostgreSQL on 127.0.0.1:`pg_port` (trust
    /// authentication there; every client logs in as `postgres`) and waits
    /// until it accepts connections.
    pub async fn start(pg_port: u16, mode: PoolMode) -> Self {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::Builder::new()
            .prefix("smartcache-pgbouncer-")
            .tempdir()
            .expect("temporary directory");
        std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o777))
            .expect("chmod");
        let port = free_port();
        let mode = match mode {
            PoolMode::Session => "session",
            PoolMode::Transaction => "transaction",
        };
        let ini = dir.path().join("pgbouncer.ini");
        std::fs::write(
            &ini,
            format!(
                "[databases]\n* = host=127.0.0.1 port={pg_port} user=postgres\n\n\
                 [pgbouncer]\nlisten_addr = 127.0.0.1\nlisten_port = {port}\nunix_socket_dir =\n\
                 auth_type = any\npool_mode = {mode}\ndefault_pool_size = 4\nmax_client_conn = 200\n\
                 logfile = {}\nserver_reset_query = DISCARD ALL\n",
                dir.path().join("pgbouncer.log").display()
            ),
        )
        .expect("write pgbouncer.ini");
        std::fs::set_permissions(&ini, std::fs::Permissions::from_mode(0o644)).expect("chmod");
        let mut command = Command::new("pgbouncer");
        if crate::servers::running_as_root() {
            command.args(["-u", "postgres"]);
        }
        let child = command
            .arg(&ini)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("start pgbouncer (Debian package pgbouncer)");
        let mut bouncer = Self {
            child: Some(child),
            port,
            dir,
        };
        let url = bouncer.url("postgres");
        wait_for("PgBouncer to accept connections", WAIT, || {
            let exited = bouncer
                .child
                .as_mut()
                .is_some_and(|c| c.try_wait().ok().flatten().is_some());
            assert!(
                !exited,
                "pgbouncer exited at start:\n{}",
                tail(&bouncer.log(), 20)
            );
            let url = url.clone();
            async move {
                let (client, conn) = tokio_postgres::connect(&url, tokio_postgres::NoTls)
                    .await
                    .ok()?;
                tokio::spawn(conn);
                client.simple_query("SELECT 1").await.ok().map(|_| ())
            }
        })
        .await;
        bouncer
    }

    /// URL of database `db` through it.
    pub fn url(&self, db: &str) -> String {
        format!("postgres://postgres@127.0.0.1:{}/{db}", self.port)
    }

    /// Its log, for a failure message.
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.log_path()).unwrap_or_default()
    }

    fn log_path(&self) -> PathBuf {
        self.dir.path().join("pgbouncer.log")
    }
}

impl Drop for PgBouncer {
    fn drop(&mut self) {
        if std::thread::panicking() {
            eprintln!("--- PgBouncer log, last lines:\n{}", tail(&self.log(), 20));
        }
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}
