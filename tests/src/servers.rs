//! A harness that owns its servers: throwaway PostgreSQL and Redis on free
//! ports in a temporary directory, the daemon as a real process, and the
//! faults done to them (kill -9, stop, restart, cut connections).
//!
//! Everything is stopped by PID when its handle drops, also when a test
//! panics. The shared servers on 5432/6379 are never touched, and nothing
//! is ever killed by name.
//!
//! [`Stack`] puts them together around a table `items(id, val)` whose rows
//! are cached twice: as `item:{id}` through a key template of the daemon's
//! config (written to Redis like another program would), and as `lib:{id}`
//! through the library with a row dependency. [`Stack::verify`] then states
//! the guarantee: every cached entry equals the database, and entries that
//! no change touched are still cached.

use smartcache::{Cache, Dep};
use smartcache_core::keys::Namespace;
use smartcache_invalidator::config::{Config, Overrides};
use smartcache_invalidator::schema;
use std::collections::HashMap;
use std::fs::File;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};
use tempfile::TempDir;
use tokio::task::JoinHandle;
use tokio_postgres::{Client, NoTls};

/// How long the harness waits for a server or the daemon before failing.
pub const WAIT: Duration = Duration::from_secs(30);

/// The application name the daemon gives its PostgreSQL sessions.
pub const DAEMON_APP_NAME: &str = "smartcache-invalidator";

/// A free TCP port on 127.0.0.1 (the OS picks it; a race with another
/// process grabbing it before the server binds is possible but rare).
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .expect("bind a free port")
        .local_addr()
        .expect("local address")
        .port()
}

/// Whether this process is root (servers then run as `postgres`).
pub fn running_as_root() -> bool {
    std::fs::metadata("/proc/self").is_ok_and(|m| m.uid() == 0)
}

/// Sends `signal` (e.g. `-9`, `-TERM`) to one process by PID.
pub fn signal(pid: u32, signal: &str) {
    let _ = Command::new("kill")
        .args([signal, &pid.to_string()])
        .stderr(Stdio::null())
        .status();
}

/// Whether a process with this PID exists (and is not a zombie).
pub fn alive(pid: u32) -> bool {
    match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        Ok(stat) => stat
            .rsplit_once(") ")
            .is_some_and(|(_, rest)| !rest.starts_with('Z')),
        Err(_) => false,
    }
}

/// PIDs of the direct children of `parent`, read from `/proc`.
pub fn children(parent: u32) -> Vec<u32> {
    let Ok(dir) = std::fs::read_dir("/proc") else {
        return Vec::new();
    };
    dir.filter_map(|e| {
        let pid: u32 = e.ok()?.file_name().to_str()?.parse().ok()?;
        let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
        // After the command name in parentheses: state, then the parent PID.
        let ppid: u32 = stat.rsplit_once(") ")?.1.split(' ').nth(1)?.parse().ok()?;
        (ppid == parent).then_some(pid)
    })
    .collect()
}

/// Polls `check` every 10 ms until it returns `Some`, panicking with
/// `what` after `patience`.
pub async fn wait_for<T, F, Fut>(what: &str, patience: Duration, mut check: F) -> T
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Option<T>>,
{
    let start = Instant::now();
    loop {
        if let Some(v) = check().await {
            return v;
        }
        assert!(
            start.elapsed() < patience,
            "timed out after {patience:?} waiting for {what}"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// `program` from `bin`, as the `postgres` user when we are root.
fn pg_command(bin: &Path, program: &str) -> Command {
    let path = bin.join(program);
    if running_as_root() {
        let mut c = Command::new("runuser");
        c.args(["-u", "postgres", "--"]).arg(path);
        c
    } else {
        Command::new(path)
    }
}

fn run_pg_program(bin: &Path, program: &str, args: &[&str]) -> Result<(), String> {
    let out = pg_command(bin, program)
        .args(args)
        .stdin(Stdio::null())
        .output()
        .map_err(|e| format!("{program}: {e}"))?;
    if out.status.success() {
        Ok(())
    } else {
        Err(format!(
            "{program} {args:?} failed ({}): {}{}",
            out.status,
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        ))
    }
}

/// Directory of the newest installed PostgreSQL's programs.
fn pg_bin_dir() -> PathBuf {
    let mut versions: Vec<(u32, PathBuf)> = std::fs::read_dir("/usr/lib/postgresql")
        .expect("PostgreSQL installed under /usr/lib/postgresql")
        .filter_map(|e| {
            let e = e.ok()?;
            let v: u32 = e.file_name().to_str()?.parse().ok()?;
            let bin = e.path().join("bin");
            bin.join("initdb").exists().then_some((v, bin))
        })
        .collect();
    versions.sort();
    versions
        .pop()
        .expect("an initdb under /usr/lib/postgresql/*/bin")
        .1
}

/// Where a cluster lives; the blocking operations on it.
#[derive(Clone, Debug)]
struct Cluster {
    dir: PathBuf,
    bin: PathBuf,
    port: u16,
}

impl Cluster {
    fn data(&self) -> String {
        self.dir.join("data").display().to_string()
    }

    fn pg_ctl(&self, args: &[&str]) -> Result<(), String> {
        let data = self.data();
        let mut all = vec!["-D", &data];
        all.extend_from_slice(args);
        run_pg_program(&self.bin, "pg_ctl", &all)
    }

    fn initdb(&self) -> Result<(), String> {
        let data = self.data();
        run_pg_program(
            &self.bin,
            "initdb",
            &[
                "-D",
                &data,
                "-A",
                "trust",
                "-U",
                "postgres",
                "-E",
                "UTF8",
                "--no-sync",
            ],
        )
    }

    /// Runs the postmaster as our own child (through `runuser`, which
    /// waits for it), so that it is reaped when it dies even where PID 1
    /// reaps nobody (containers); `pg_ctl start` would orphan it.
    fn spawn(&self) -> Result<Child, String> {
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.dir.join("postgres.log"))
            .map_err(|e| format!("PostgreSQL log: {e}"))?;
        let err = log.try_clone().map_err(|e| e.to_string())?;
        let port = self.port.to_string();
        let dir = self.dir.display().to_string();
        let data = self.data();
        pg_command(&self.bin, "postgres")
            .args(["-D", &data, "-p", &port, "-k", &dir])
            .args(["-c", "listen_addresses=127.0.0.1", "-c", "fsync=off"])
            .args(["-c", "full_page_writes=off", "-c", "shared_buffers=32MB"])
            .args(["-c", "max_connections=100"])
            .stdin(Stdio::null())
            .stdout(log)
            .stderr(err)
            .spawn()
            .map_err(|e| format!("start postgres: {e}"))
    }

    fn pid(&self) -> Option<u32> {
        std::fs::read_to_string(self.dir.join("data").join("postmaster.pid"))
            .ok()?
            .lines()
            .next()?
            .trim()
            .parse()
            .ok()
    }

    fn kill9(&self) {
        let Some(pid) = self.pid() else { return };
        if !alive(pid) {
            return;
        }
        let kids = children(pid);
        signal(pid, "-9");
        for &kid in &kids {
            signal(kid, "-9");
        }
        // A backend still dying keeps the shared memory attached, and the
        // next start refuses it ("pre-existing shared memory block").
        let start = Instant::now();
        while (alive(pid) || kids.iter().any(|&k| alive(k))) && start.elapsed() < WAIT {
            std::thread::sleep(Duration::from_millis(10));
        }
    }
}

async fn blocking<T: Send + 'static>(f: impl FnOnce() -> T + Send + 'static) -> T {
    tokio::task::spawn_blocking(f).await.expect("blocking task")
}

/// A throwaway PostgreSQL cluster: `initdb` into a temporary directory,
/// trust authentication, listening on 127.0.0.1 on a free port and on a
/// socket in the same directory, `fsync` off. Run as the `postgres` OS
/// user when we are root (PostgreSQL refuses to run as root). Stopped
/// (and killed if need be) on drop.
pub struct Postgres {
    cluster: Cluster,
    child: std::sync::Mutex<Option<Child>>,
    _dir: TempDir,
}

impl Postgres {
    /// Creates and starts the cluster.
    pub async fn start() -> Self {
        Self::start_configured(|_| {}).await
    }

    /// Like [`Postgres::start`], with `configure` run on the data directory
    /// after `initdb` and before the first start (e.g. to write
    /// `postgresql.conf` lines and `pg_hba.conf`, see
    /// [`Postgres::configure`]). The harness itself connects over the
    /// Unix socket, which `local … trust` in `pg_hba.conf` must allow.
    pub async fn start_configured(configure: impl FnOnce(&Path)) -> Self {
        let dir = tempfile::Builder::new()
            .prefix("smartcache-pg-")
            .tempdir()
            .expect("temporary directory");
        if running_as_root() {
            let status = Command::new("chown")
                .arg("postgres:")
                .arg(dir.path())
                .status()
                .expect("chown");
            assert!(status.success(), "chown the data directory to postgres");
        }
        let pg = Self {
            cluster: Cluster {
                dir: dir.path().to_owned(),
                bin: pg_bin_dir(),
                port: free_port(),
            },
            child: std::sync::Mutex::new(None),
            _dir: dir,
        };
        let c = pg.cluster.clone();
        blocking(move || c.initdb())
            .await
            .unwrap_or_else(|e| panic!("{e}"));
        configure(&pg.cluster.dir.join("data"));
        pg.start_again().await;
        pg
    }

    /// Appends `conf` to `postgresql.conf` in `data` and, if given,
    /// replaces `pg_hba.conf` with `hba`; files the server reads are
    /// handed to the `postgres` user (we may be root).
    pub fn configure(data: &Path, conf: &str, hba: Option<&str>) {
        let mut f = std::fs::OpenOptions::new()
            .append(true)
            .open(data.join("postgresql.conf"))
            .expect("postgresql.conf");
        std::io::Write::write_all(&mut f, format!("\n{conf}\n").as_bytes())
            .expect("write postgresql.conf");
        if let Some(hba) = hba {
            std::fs::write(data.join("pg_hba.conf"), hba).expect("write pg_hba.conf");
        }
    }

    /// Copies `file` into `data` as `name`, readable by its owner only
    /// and owned by the server's user, as PostgreSQL wants its key files.
    pub fn install_private(data: &Path, file: &Path, name: &str) {
        use std::os::unix::fs::PermissionsExt;
        let to = data.join(name);
        std::fs::copy(file, &to).expect("copy into the data directory");
        std::fs::set_permissions(&to, std::fs::Permissions::from_mode(0o600)).expect("chmod");
        if running_as_root() {
            let status = Command::new("chown")
                .arg("postgres:")
                .arg(&to)
                .status()
                .expect("chown");
            assert!(status.success(), "chown {}", to.display());
        }
    }

    /// Starts the stopped (or killed) server again on the same port and
    /// data directory and waits until it accepts connections.
    pub async fn start_again(&self) {
        self.reap().await;
        let child = self.cluster.spawn().unwrap_or_else(|e| panic!("{e}"));
        *self.child.lock().unwrap() = Some(child);
        wait_for("PostgreSQL to accept connections", WAIT, || async {
            let exited = self
                .child
                .lock()
                .unwrap()
                .as_mut()
                .is_some_and(|c| c.try_wait().ok().flatten().is_some());
            assert!(
                !exited,
                "PostgreSQL exited at start:\n{}",
                tail(&self.log(), 20)
            );
            self.try_connect().await.ok().map(|_| ())
        })
        .await;
    }

    /// Waits for the stopped postmaster's process to be gone.
    async fn reap(&self) {
        let child = self.child.lock().unwrap().take();
        if let Some(mut child) = child {
            blocking(move || child.wait()).await.expect("reap postgres");
        }
    }

    /// Fast shutdown (`pg_ctl stop -m fast`): sessions are cut, the server
    /// exits cleanly.
    pub async fn stop(&self) {
        let c = self.cluster.clone();
        blocking(move || c.pg_ctl(&["stop", "-m", "fast", "-w", "-t", "60"]))
            .await
            .unwrap_or_else(|e| panic!("{e}"));
        self.reap().await;
    }

    /// Stop, then start.
    pub async fn restart(&self) {
        self.stop().await;
        self.start_again().await;
    }

    /// SIGKILL to the postmaster and its processes, like a crash;
    /// [`Postgres::start_again`] then runs crash recovery.
    ///
    /// Where PID 1 reaps nobody (some containers), the killed backends
    /// stay behind as zombies; they hold nothing.
    pub async fn kill9(&self) {
        let c = self.cluster.clone();
        blocking(move || c.kill9()).await;
        self.reap().await;
    }

    /// The postmaster's PID, from `postmaster.pid`.
    pub fn pid(&self) -> Option<u32> {
        self.cluster.pid()
    }

    /// Port on 127.0.0.1.
    pub fn port(&self) -> u16 {
        self.cluster.port
    }

    /// URL of database `db`.
    pub fn url(&self, db: &str) -> String {
        format!("postgres://postgres@127.0.0.1:{}/{db}", self.cluster.port)
    }

    /// Connects to database `postgres`, over the Unix socket: it works
    /// whatever `pg_hba.conf` asks of TCP connections (TLS, certificates).
    pub async fn try_connect(&self) -> Result<Client, tokio_postgres::Error> {
        let socket = format!(
            "host={} port={} user=postgres dbname=postgres",
            self.cluster.dir.display(),
            self.cluster.port
        );
        let (client, conn) = tokio_postgres::connect(&socket, NoTls).await?;
        tokio::spawn(conn);
        Ok(client)
    }

    /// Connects to database `postgres`, panicking on failure.
    pub async fn connect(&self) -> Client {
        self.try_connect()
            .await
            .expect("connect to test PostgreSQL")
    }

    /// `pg_terminate_backend` of every session of the daemon(s); returns
    /// the backend PIDs that were cut.
    pub async fn terminate_daemon_sessions(&self) -> Vec<i32> {
        // Two steps: in one query the planner may call
        // pg_terminate_backend before the name filter, on every session.
        let pids = self.daemon_pids().await;
        let c = self.connect().await;
        c.execute(
            "SELECT pg_terminate_backend(p) FROM unnest($1::int[]) p",
            &[&pids],
        )
        .await
        .expect("pg_terminate_backend");
        pids
    }

    /// Backend PIDs of the daemon(s)' sessions.
    pub async fn daemon_pids(&self) -> Vec<i32> {
        let Ok(c) = self.try_connect().await else {
            return Vec::new();
        };
        c.query(
            "SELECT pid FROM pg_stat_activity WHERE application_name = $1",
            &[&DAEMON_APP_NAME],
        )
        .await
        .map(|rows| rows.iter().map(|r| r.get(0)).collect())
        .unwrap_or_default()
    }

    /// How many sessions the daemon(s) hold, and how many of those are
    /// inside a transaction (a batch in hand).
    pub async fn daemon_sessions(&self) -> (usize, usize) {
        let Ok(c) = self.try_connect().await else {
            return (0, 0);
        };
        c.query_one(
            "SELECT count(*), count(xact_start) FROM pg_stat_activity WHERE application_name = $1",
            &[&DAEMON_APP_NAME],
        )
        .await
        .map(|r| (r.get::<_, i64>(0) as usize, r.get::<_, i64>(1) as usize))
        .unwrap_or((0, 0))
    }

    /// The server's log, for a failure message.
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.cluster.dir.join("postgres.log")).unwrap_or_default()
    }

    /// A base backup (`pg_basebackup -X stream`) of the running server.
    pub async fn base_backup(&self) -> TempDir {
        self.base_backup_into("smartcache-pgbackup-", &[]).await
    }

    /// `pg_basebackup` with `extra` flags into `{temp dir}/data`, owned by
    /// the `postgres` user.
    async fn base_backup_into(&self, prefix: &str, extra: &[&'static str]) -> TempDir {
        let dir = tempfile::Builder::new()
            .prefix(prefix)
            .tempdir()
            .expect("temporary directory");
        if running_as_root() {
            let status = Command::new("chown")
                .arg("postgres:")
                .arg(dir.path())
                .status()
                .expect("chown");
            assert!(
                status.success(),
                "chown {} to postgres",
                dir.path().display()
            );
        }
        let (bin, port) = (self.cluster.bin.clone(), self.cluster.port.to_string());
        let data = dir.path().join("data").display().to_string();
        let extra = extra.to_vec();
        blocking(move || {
            let mut args = vec![
                "-h",
                "127.0.0.1",
                "-p",
                &port,
                "-U",
                "postgres",
                "-D",
                &data,
                "-X",
                "stream",
                "-c",
                "fast",
            ];
            args.extend(extra);
            run_pg_program(&bin, "pg_basebackup", &args)
        })
        .await
        .unwrap_or_else(|e| panic!("{e}"));
        dir
    }

    /// A streaming replica of this server on its own port, applying
    /// commits `apply_delay` after they happened
    /// (`recovery_min_apply_delay`), hot standby: applications may read it.
    pub async fn start_replica(&self, apply_delay: Duration) -> Postgres {
        let dir = self
            .base_backup_into("smartcache-pgreplica-", &["-R"])
            .await;
        let conf = dir.path().join("data").join("postgresql.auto.conf");
        let mut f = std::fs::OpenOptions::new()
            .append(true)
            .open(&conf)
            .expect("the replica's postgresql.auto.conf");
        std::io::Write::write_all(
            &mut f,
            format!(
                "recovery_min_apply_delay = '{}ms'\n",
                apply_delay.as_millis()
            )
            .as_bytes(),
        )
        .expect("write postgresql.auto.conf");
        let replica = Postgres {
            cluster: Cluster {
                dir: dir.path().to_owned(),
                bin: self.cluster.bin.clone(),
                port: free_port(),
            },
            child: std::sync::Mutex::new(None),
            _dir: dir,
        };
        replica.start_again().await;
        replica
    }

    /// Stops the server, replaces its data directory with a copy of
    /// `backup` (from [`Postgres::base_backup`]) and starts it: a restore.
    pub async fn restore(&self, backup: &TempDir) {
        self.stop().await;
        let data = self.cluster.dir.join("data");
        std::fs::remove_dir_all(&data).expect("remove the data directory");
        let status = Command::new("cp")
            .arg("-a")
            .arg(backup.path().join("data"))
            .arg(&data)
            .status()
            .expect("cp");
        assert!(status.success(), "copy the backup into place");
        self.start_again().await;
    }
}

impl Drop for Postgres {
    fn drop(&mut self) {
        if std::thread::panicking() {
            eprintln!("--- PostgreSQL log, last lines:\n{}", tail(&self.log(), 20));
        }
        if self.cluster.pid().is_some_and(alive)
            && self
                .cluster
                .pg_ctl(&["stop", "-m", "immediate", "-w", "-t", "10"])
                .is_err()
        {
            self.cluster.kill9();
        }
        if let Some(mut child) = self.child.lock().unwrap().take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

/// A throwaway `redis-server` on a free port, our own child process, no
/// persistence configured. [`Redis::stop`] saves a snapshot that
/// [`Redis::start_again`] loads, so a stop/start keeps the data (as a
/// maintenance restart of a persistent Redis would); [`Redis::kill9`]
/// loses everything written since.
pub struct Redis {
    child: Option<Child>,
    port: u16,
    dir: TempDir,
    aof: bool,
    args: Vec<String>,
}

impl Redis {
    /// Starts the server and waits until it answers.
    pub async fn start() -> Self {
        Self::start_with_args(&[]).await
    }

    /// Like [`Redis::start`], with more `redis-server` arguments (e.g.
    /// `--replicaof 127.0.0.1 PORT`, `--requirepass`; then only a reply
    /// to `PING`, even `NOAUTH`, shows it answers).
    pub async fn start_with_args(args: &[&str]) -> Self {
        let dir = tempfile::Builder::new()
            .prefix("smartcache-redis-")
            .tempdir()
            .expect("temporary directory");
        let mut redis = Self {
            child: None,
            port: free_port(),
            dir,
            aof: false,
            args: args.iter().map(|a| a.to_string()).collect(),
        };
        redis.start_again().await;
        redis
    }

    /// The port on 127.0.0.1.
    pub fn port(&self) -> u16 {
        self.port
    }

    /// Like [`Redis::start`], with an append-only file
    /// (`appendfsync everysec`).
    pub async fn start_with_aof() -> Self {
        let dir = tempfile::Builder::new()
            .prefix("smartcache-redis-")
            .tempdir()
            .expect("temporary directory");
        let mut redis = Self {
            child: None,
            port: free_port(),
            dir,
            aof: true,
            args: Vec::new(),
        };
        redis.start_again().await;
        redis
    }

    /// The data directory (`dump.rdb`, `appendonlydir`).
    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    /// `SAVE`: a snapshot in `dump.rdb`, loaded at the next start.
    pub async fn save(&self) {
        let client = redis::Client::open(self.url()).unwrap();
        let mut con = client.get_multiplexed_async_connection().await.unwrap();
        let _: () = redis::cmd("SAVE").query_async(&mut con).await.unwrap();
    }

    /// `SHUTDOWN NOSAVE`: exits without writing; the next start loads the
    /// last snapshot (or the append-only file).
    pub async fn shutdown_nosave(&mut self) {
        let client = redis::Client::open(self.url()).unwrap();
        if let Ok(mut con) = client.get_multiplexed_async_connection().await {
            let _: Result<(), _> = redis::cmd("SHUTDOWN")
                .arg("NOSAVE")
                .query_async(&mut con)
                .await;
        }
        let mut child = self.child.take().expect("Redis is running");
        wait_for("Redis to exit", WAIT, || {
            let done = child.try_wait().ok().flatten().is_some();
            async move { done.then_some(()) }
        })
        .await;
    }

    /// URL of database 0.
    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}/0", self.port)
    }

    /// PID of the running server.
    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }

    /// Starts the stopped (or killed) server on the same port and
    /// directory and waits until it answers.
    pub async fn start_again(&mut self) {
        assert!(self.child.is_none(), "Redis is already running");
        let log = File::create(self.dir.path().join("redis.log")).expect("Redis log file");
        let child = Command::new("redis-server")
            .args(["--port", &self.port.to_string()])
            .args(["--bind", "127.0.0.1", "--save", ""])
            .args(["--appendonly", if self.aof { "yes" } else { "no" }])
            .args(["--appendfsync", "everysec"])
            .arg("--dir")
            .arg(self.dir.path())
            .args(&self.args)
            .stdin(Stdio::null())
            .stdout(log)
            .stderr(Stdio::null())
            .spawn()
            .expect("start redis-server");
        self.child = Some(child);
        let url = self.url();
        wait_for("Redis to answer", WAIT, || {
            let url = url.clone();
            async move { ping(&url).await.then_some(()) }
        })
        .await;
    }

    /// `SHUTDOWN SAVE`: writes the data set to disk and exits.
    pub async fn stop(&mut self) {
        let client = redis::Client::open(self.url()).unwrap();
        if let Ok(mut con) = client.get_multiplexed_async_connection().await {
            let _: Result<(), _> = redis::cmd("SHUTDOWN")
                .arg("SAVE")
                .query_async(&mut con)
                .await;
        }
        let mut child = self.child.take().expect("Redis is running");
        let exited = wait_for("Redis to exit", WAIT, || {
            let done = child.try_wait().ok().flatten().is_some();
            async move { done.then_some(()) }
        });
        exited.await;
    }

    /// SIGKILL: the data set is lost.
    pub fn kill9(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

impl Drop for Redis {
    fn drop(&mut self) {
        self.kill9();
    }
}

/// A connection to `url` within a second, or `None`.
async fn try_connect(url: &str) -> Option<redis::aio::MultiplexedConnection> {
    let client = redis::Client::open(url).ok()?;
    tokio::time::timeout(
        Duration::from_secs(1),
        client.get_multiplexed_async_connection(),
    )
    .await
    .ok()?
    .ok()
}

async fn ping(url: &str) -> bool {
    let Some(mut con) = try_connect(url).await else {
        return false;
    };
    match redis::cmd("PING").query_async::<String>(&mut con).await {
        Ok(_) => true,
        Err(e) => e.code() == Some("NOAUTH"),
    }
}

/// How many masters a [`RedisCluster`] has.
pub const CLUSTER_NODES: usize = 3;

/// Hash slots of a Redis Cluster.
const CLUSTER_SLOTS: i64 = 16384;

/// A free port P on 127.0.0.1 for a cluster node: its cluster bus port
/// P + 10000 must be free too (so P < 55536), and neither may clash with
/// the ports or bus ports in `taken`.
pub fn free_cluster_port(taken: &[u16]) -> u16 {
    for _ in 0..1000 {
        let port = free_port();
        let Some(bus) = port.checked_add(10000) else {
            continue;
        };
        let clash = taken
            .iter()
            .any(|&t| [t, t + 10000].iter().any(|&u| u == port || u == bus));
        if !clash && std::net::TcpListener::bind(("127.0.0.1", bus)).is_ok() {
            return port;
        }
    }
    panic!("no free port P below 55536 with P + 10000 free too");
}

/// One `redis-server` of a [`RedisCluster`].
struct ClusterNode {
    port: u16,
    child: Option<Child>,
    dir: TempDir,
}

impl ClusterNode {
    fn spawn(port: u16) -> Self {
        let dir = tempfile::Builder::new()
            .prefix("smartcache-redis-cluster-")
            .tempdir()
            .expect("temporary directory");
        let child = Self::start_in(port, &dir);
        Self {
            port,
            child: Some(child),
            dir,
        }
    }

    fn start_in(port: u16, dir: &TempDir) -> Child {
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(dir.path().join("redis.log"))
            .expect("Redis log file");
        Command::new("redis-server")
            .args(["--port", &port.to_string(), "--bind", "127.0.0.1"])
            .args(["--cluster-enabled", "yes", "--cluster-config-file"])
            .arg(dir.path().join("nodes.conf"))
            .args(["--cluster-node-timeout", "2000"])
            .args(["--save", "", "--appendonly", "no", "--daemonize", "no"])
            .arg("--dir")
            .arg(dir.path())
            .stdin(Stdio::null())
            .stdout(log)
            .stderr(Stdio::null())
            .spawn()
            .expect("start redis-server")
    }

    fn url(&self) -> String {
        format!("redis://127.0.0.1:{}/", self.port)
    }

    fn exited(&mut self) -> bool {
        self.child
            .as_mut()
            .is_some_and(|c| c.try_wait().ok().flatten().is_some())
    }

    fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("redis.log")).unwrap_or_default()
    }
}

/// A throwaway Redis Cluster of [`CLUSTER_NODES`] masters, without
/// replicas ([`RedisCluster::start`]) or with one each
/// ([`RedisCluster::start_with_replicas`]), each a `redis-server` on a free
/// port of 127.0.0.1 (its bus on the port + 10000) with its own temporary
/// directory, no persistence. Every node is killed by PID on drop.
pub struct RedisCluster {
    nodes: Vec<ClusterNode>,
    replicas: bool,
}

impl RedisCluster {
    /// Starts the nodes, joins them with `redis-cli --cluster create` and
    /// waits until every node reports `cluster_state:ok` and a slot map
    /// covering all 16384 slots with the masters of this cluster.
    pub async fn start() -> Self {
        Self::start_nodes(false).await
    }

    /// Like [`RedisCluster::start`] with one replica per master (six
    /// nodes), for failovers: also waits until every replica's link to its
    /// master is up, so that a replica can take over at once.
    pub async fn start_with_replicas() -> Self {
        Self::start_nodes(true).await
    }

    async fn start_nodes(replicas: bool) -> Self {
        let n = if replicas {
            2 * CLUSTER_NODES
        } else {
            CLUSTER_NODES
        };
        let mut ports = Vec::with_capacity(n);
        for _ in 0..n {
            ports.push(free_cluster_port(&ports));
        }
        // Pushed one by one: a panic below still kills the started ones.
        let mut cluster = Self {
            nodes: Vec::new(),
            replicas,
        };
        for &port in &ports {
            cluster.nodes.push(ClusterNode::spawn(port));
        }
        for node in &mut cluster.nodes {
            let url = node.url();
            wait_for(&format!("Redis cluster node {url} to answer"), WAIT, || {
                assert!(
                    !node.exited(),
                    "Redis cluster node {url} exited at start:\n{}",
                    tail(&node.log(), 20)
                );
                let url = url.clone();
                async move { ping(&url).await.then_some(()) }
            })
            .await;
        }
        let addrs: Vec<String> = ports.iter().map(|p| format!("127.0.0.1:{p}")).collect();
        let out = blocking(move || {
            Command::new("redis-cli")
                .args(["--cluster", "create"])
                .args(&addrs)
                .args(["--cluster-replicas", if replicas { "1" } else { "0" }])
                .arg("--cluster-yes")
                .stdin(Stdio::null())
                .output()
        })
        .await
        .expect("run redis-cli --cluster create");
        let stdout = String::from_utf8_lossy(&out.stdout);
        assert!(
            out.status.success() && stdout.contains("[OK] All 16384 slots covered"),
            "redis-cli --cluster create failed ({}):\n{stdout}{}",
            out.status,
            String::from_utf8_lossy(&out.stderr)
        );
        cluster.wait_whole().await;
        cluster
    }

    /// Waits until every running node sees the whole cluster: the same
    /// slot map, covering every slot, served by [`CLUSTER_NODES`] running
    /// masters (all the nodes without replicas); with replicas, also every
    /// replica's link to its master up.
    async fn wait_whole(&self) {
        let running: Vec<&ClusterNode> = self.nodes.iter().filter(|n| n.child.is_some()).collect();
        let ports: Vec<u16> = running.iter().map(|n| n.port).collect();
        let replicas = self.replicas;
        wait_for("the Redis cluster to be whole", WAIT, || {
            let (running, ports) = (&running, &ports);
            async move {
                let mut first: Option<Vec<(i64, i64, u16)>> = None;
                for node in running {
                    let map = slot_map(&node.url()).await?;
                    let masters = map_masters(&map);
                    let served_by_running = masters.iter().all(|m| ports.contains(m));
                    let all_masters = replicas || masters.len() == ports.len();
                    if !served_by_running || masters.len() != CLUSTER_NODES || !all_masters {
                        return None;
                    }
                    if first.get_or_insert_with(|| map.clone()) != &map {
                        return None;
                    }
                    if replicas && !replica_linked(&node.url()).await? {
                        return None;
                    }
                }
                Some(())
            }
        })
        .await;
    }

    /// Ports of the first [`CLUSTER_NODES`] nodes on 127.0.0.1: every node
    /// of [`RedisCluster::start`], the masters as
    /// [`RedisCluster::start_with_replicas`] made them.
    pub fn ports(&self) -> [u16; CLUSTER_NODES] {
        std::array::from_fn(|i| self.nodes[i].port)
    }

    /// Port of node `i` (an index of [`RedisCluster::urls`]).
    pub fn port(&self, i: usize) -> u16 {
        self.nodes[i].port
    }

    /// Index of the node that the running nodes agree is the master of
    /// `key`'s slot: the node a failover test fails.
    pub async fn master_of(&self, key: &str) -> usize {
        let (slot, map) = self.slot_and_map(key).await;
        let port = map
            .iter()
            .find(|(first, last, _)| (*first..=*last).contains(&slot))
            .map(|r| r.2)
            .expect("the slot map covers every slot");
        self.index_of(port)
    }

    /// Index of the replica of the master of `key`'s slot: the node that
    /// takes over when that master fails.
    pub async fn replica_of(&self, key: &str) -> usize {
        let master = self.port(self.master_of(key).await);
        for (i, node) in self.nodes.iter().enumerate() {
            if node.child.is_some() && replica_linked_to(&node.url(), master).await {
                return i;
            }
        }
        panic!("the master on port {master} has no replica linked to it");
    }

    async fn slot_and_map(&self, key: &str) -> (i64, Vec<(i64, i64, u16)>) {
        self.wait_whole().await;
        let url = self
            .nodes
            .iter()
            .find(|n| n.child.is_some())
            .expect("a running node")
            .url();
        let mut con = try_connect(&url).await.expect("connect to a node");
        let slot: i64 = redis::cmd("CLUSTER")
            .arg("KEYSLOT")
            .arg(key)
            .query_async(&mut con)
            .await
            .expect("CLUSTER KEYSLOT");
        (slot, slot_map(&url).await.expect("the slot map"))
    }

    fn index_of(&self, port: u16) -> usize {
        self.nodes
            .iter()
            .position(|n| n.port == port)
            .expect("a node of this cluster")
    }

    /// `CLUSTER FAILOVER` on replica `i`: the graceful, coordinated
    /// switch (no write lost; the old master becomes its replica and keeps
    /// its client connections). Waits until every node sees node `i` as a
    /// master and the cluster is whole.
    pub async fn failover(&self, i: usize) {
        let url = self.nodes[i].url();
        let mut con = try_connect(&url).await.expect("connect to the replica");
        let _: () = redis::cmd("CLUSTER")
            .arg("FAILOVER")
            .query_async(&mut con)
            .await
            .expect("CLUSTER FAILOVER");
        self.wait_master(i).await;
    }

    /// SIGKILL to node `i` (our own child, by its PID), which stays down;
    /// with replicas, its replica is elected in its place after
    /// `cluster-node-timeout` (2 s). Waits until the cluster is whole
    /// again without it.
    pub async fn kill9(&mut self, i: usize) {
        if let Some(mut child) = self.nodes[i].child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
        self.wait_whole().await;
    }

    /// Waits until every running node's slot map names node `i` a master.
    async fn wait_master(&self, i: usize) {
        let port = self.nodes[i].port;
        wait_for(&format!("node {port} to be a master"), WAIT, || async {
            for node in self.nodes.iter().filter(|n| n.child.is_some()) {
                let map = slot_map(&node.url()).await?;
                if !map_masters(&map).contains(&port) {
                    return None;
                }
            }
            Some(())
        })
        .await;
        self.wait_whole().await;
    }

    /// URLs of the nodes, `redis://127.0.0.1:{port}/`.
    pub fn urls(&self) -> Vec<String> {
        self.nodes.iter().map(ClusterNode::url).collect()
    }

    /// URL of the first node, to seed a cluster client with.
    pub fn seed_url(&self) -> String {
        self.nodes[0].url()
    }

    /// Kills node `i` with SIGKILL and starts it again on the same port
    /// and directory: it rejoins the cluster (same node id, same slots)
    /// with an empty keyspace, as a primary without persistence or
    /// replicas comes back from a crash. Waits until the cluster is whole.
    /// (The node loads its last snapshot if [`RedisCluster::save`] made one.)
    pub async fn restart_empty(&mut self, i: usize) {
        let node = &mut self.nodes[i];
        if let Some(mut child) = node.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
        node.child = Some(ClusterNode::start_in(node.port, &node.dir));
        self.wait_whole().await;
    }

    /// `SAVE` on node `i`: its snapshot, which [`RedisCluster::restart_empty`]
    /// then loads (a restart from an older snapshot).
    pub async fn save(&self, i: usize) {
        let mut con = redis::Client::open(self.nodes[i].url())
            .unwrap()
            .get_multiplexed_async_connection()
            .await
            .expect("connect to the node");
        let _: () = redis::cmd("SAVE")
            .query_async(&mut con)
            .await
            .expect("SAVE");
    }

    /// PIDs of the running nodes.
    pub fn pids(&self) -> Vec<u32> {
        self.nodes
            .iter()
            .filter_map(|n| n.child.as_ref().map(Child::id))
            .collect()
    }
}

impl Drop for RedisCluster {
    fn drop(&mut self) {
        for node in &mut self.nodes {
            if std::thread::panicking() {
                eprintln!(
                    "--- Redis cluster node {} log, last lines:\n{}",
                    node.port,
                    tail(&node.log(), 20)
                );
            }
            if let Some(mut child) = node.child.take() {
                let _ = child.kill();
                let _ = child.wait();
            }
        }
    }
}

/// The slot map of the node at `url` (`(first, last, master port)`,
/// sorted), if it reports `cluster_state:ok` and its `CLUSTER SLOTS`
/// covers every slot exactly once.
async fn slot_map(url: &str) -> Option<Vec<(i64, i64, u16)>> {
    let mut con = try_connect(url).await?;
    let info: String = redis::cmd("CLUSTER")
        .arg("INFO")
        .query_async(&mut con)
        .await
        .ok()?;
    if !info.lines().any(|l| l.trim() == "cluster_state:ok") {
        return None;
    }
    let redis::Value::Array(entries) = redis::cmd("CLUSTER")
        .arg("SLOTS")
        .query_async::<redis::Value>(&mut con)
        .await
        .ok()?
    else {
        return None;
    };
    // Each entry: [first slot, last slot, [ip, port, id, ...], replicas...].
    let mut map = Vec::new();
    for entry in entries {
        let redis::Value::Array(entry) = entry else {
            return None;
        };
        let (Some(redis::Value::Int(first)), Some(redis::Value::Int(last))) =
            (entry.first(), entry.get(1))
        else {
            return None;
        };
        let Some(redis::Value::Array(master)) = entry.get(2) else {
            return None;
        };
        let Some(redis::Value::Int(port)) = master.get(1) else {
            return None;
        };
        map.push((*first, *last, u16::try_from(*port).ok()?));
    }
    map.sort_unstable();
    let mut next = 0;
    for (first, last, _) in &map {
        if *first != next || last < first {
            return None;
        }
        next = last + 1;
    }
    (next == CLUSTER_SLOTS).then_some(map)
}

/// The distinct master ports of a slot map, sorted.
fn map_masters(map: &[(i64, i64, u16)]) -> Vec<u16> {
    let mut masters: Vec<u16> = map.iter().map(|r| r.2).collect();
    masters.sort_unstable();
    masters.dedup();
    masters
}

/// `INFO replication` of the node at `url`.
async fn replication(url: &str) -> Option<String> {
    let mut con = try_connect(url).await?;
    redis::cmd("INFO")
        .arg("replication")
        .query_async(&mut con)
        .await
        .ok()
}

/// Whether the node at `url` is a master, or a replica whose link to its
/// master is up.
async fn replica_linked(url: &str) -> Option<bool> {
    let info = replication(url).await?;
    Some(info.lines().any(|l| l.trim() == "role:master") || info_linked(&info))
}

fn info_linked(info: &str) -> bool {
    info.lines().any(|l| l.trim() == "master_link_status:up")
}

/// Whether the node at `url` is a replica of the master on `port`, linked.
async fn replica_linked_to(url: &str, port: u16) -> bool {
    replication(url).await.is_some_and(|info| {
        info_linked(&info)
            && info
                .lines()
                .any(|l| l.trim() == format!("master_port:{port}"))
    })
}

/// The `smartcache-invalidator` binary next to the test executable
/// (`target/debug/deps/xxx` → `target/debug/smartcache-invalidator`),
/// built by `cargo test --workspace`.
pub fn daemon_binary() -> PathBuf {
    let exe = std::env::current_exe().expect("test executable path");
    let bin = exe
        .parent()
        .and_then(Path::parent)
        .expect("target/debug")
        .join("smartcache-invalidator");
    assert!(
        bin.exists(),
        "{} is missing: run the tests with `cargo test --workspace` (scripts/test.sh), which builds it",
        bin.display()
    );
    bin
}

/// `smartcache-invalidator run` as a real process, logging JSON (with the
/// per-batch debug lines) to a file. Killed on drop.
pub struct DaemonProcess {
    child: Option<Child>,
    log: PathBuf,
}

impl DaemonProcess {
    /// Starts `run` with the config file and the servers given as flags.
    pub fn start(
        config: &Path,
        database_url: &str,
        redis_url: &str,
        ns: &str,
        log: PathBuf,
    ) -> Self {
        Self::start_with_env(config, database_url, redis_url, ns, log, &[])
    }

    /// Like [`DaemonProcess::start`], with `env` set.
    pub fn start_with_env(
        config: &Path,
        database_url: &str,
        redis_url: &str,
        ns: &str,
        log: PathBuf,
        env: &[(&str, &str)],
    ) -> Self {
        let file = File::create(&log).expect("daemon log file");
        let child = Command::new(daemon_binary())
            .envs(env.iter().copied())
            .arg("--config")
            .arg(config)
            .args(["--database-url", database_url])
            .args(["--redis-url", redis_url])
            .args(["--namespace", ns])
            .args(["--log-format", "json", "run"])
            .env("RUST_LOG", "info,smartcache_invalidator=debug")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(file)
            .spawn()
            .expect("start smartcache-invalidator");
        Self {
            child: Some(child),
            log,
        }
    }

    /// PID of the process.
    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }

    /// Whether it still runs.
    pub fn running(&mut self) -> bool {
        self.child
            .as_mut()
            .is_some_and(|c| c.try_wait().ok().flatten().is_none())
    }

    /// SIGKILL, and reap it.
    pub fn kill9(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// SIGTERM; waits for the exit and asserts status 0.
    pub async fn terminate(&mut self) {
        let mut child = self.child.take().expect("daemon is running");
        signal(child.id(), "-TERM");
        let status = wait_for("the daemon to exit after SIGTERM", WAIT, || {
            let s = child.try_wait().ok().flatten();
            async move { s }
        })
        .await;
        assert!(
            status.success(),
            "daemon exited with {status}: {}",
            self.log()
        );
    }

    /// Its log so far.
    pub fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// Outbox events it applied, summed over its "batch applied" lines.
    pub fn events_applied(&self) -> u64 {
        self.log()
            .lines()
            .filter(|l| l.contains("batch applied"))
            .filter_map(|l| {
                let rest = &l[l.find("\"events\":")? + 9..];
                let digits: String = rest.chars().take_while(char::is_ascii_digit).collect();
                digits.parse::<u64>().ok()
            })
            .sum()
    }
}

impl Drop for DaemonProcess {
    fn drop(&mut self) {
        self.kill9();
        if std::thread::panicking() {
            eprintln!(
                "--- daemon log ({}), last lines:\n{}",
                self.log.display(),
                tail(&self.log(), 40)
            );
        }
    }
}

/// The last `n` lines of `text`.
pub fn tail(text: &str, n: usize) -> String {
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(n)..].join("\n")
}

/// Both servers, a table `items(id bigint primary key, val bigint)` with
/// triggers installed, a daemon config file and a library [`Cache`], all
/// in one namespace.
pub struct Stack {
    /// PostgreSQL; the table lives in database `postgres`.
    pub pg: Postgres,
    /// Redis.
    pub redis: Redis,
    /// How the library, the daemon and [`Stack::verify`] reach Redis:
    /// [`Stack::redis`]'s URL, or e.g. a Sentinel URL naming it.
    pub redis_url: String,
    /// The namespace of the cache and the daemon.
    pub ns: Namespace,
    /// The library, on [`Stack::redis`].
    pub cache: Cache,
    /// Rows in `items`: ids `1..=rows`.
    pub rows: i64,
    /// The daemon config (also written to a file for daemon processes).
    pub config: Config,
    config_path: PathBuf,
    daemons_started: usize,
    dir: TempDir,
}

/// The key template of the daemon's config.
pub const TEMPLATE_PREFIX: &str = "item:";
/// Keys cached through the library with a row dependency.
pub const LIBRARY_PREFIX: &str = "lib:";

impl Stack {
    /// Starts both servers, creates `items` with `rows` rows (`val = 0`)
    /// and installs the triggers. `settings` goes into the config file
    /// before `[[tables]]` (e.g. `batch_size = 100`).
    pub async fn start(rows: i64, settings: &str) -> Self {
        Self::start_on(rows, settings, Redis::start()).await
    }

    /// Like [`Stack::start`], on the Redis that `redis` starts (e.g.
    /// [`Redis::start_with_aof`]).
    pub async fn start_on(
        rows: i64,
        settings: &str,
        redis: impl std::future::Future<Output = Redis>,
    ) -> Self {
        Self::start_with_keys(
            rows,
            settings,
            redis,
            &[&format!("{TEMPLATE_PREFIX}{{id}}")],
        )
        .await
    }

    /// Like [`Stack::start_on`], with these key templates for `items`
    /// (`verify` knows only `item:{id}` and `lib:{id}`).
    pub async fn start_with_keys(
        rows: i64,
        settings: &str,
        redis: impl std::future::Future<Output = Redis>,
        keys: &[&str],
    ) -> Self {
        let (pg, redis) = tokio::join!(Postgres::start(), redis);
        let url = redis.url();
        Self::assemble(rows, settings, pg, redis, url, keys).await
    }

    /// Like [`Stack::start_on`], reaching `redis` through `url` (e.g. a
    /// `redis+sentinel://` URL whose service `redis` is the primary of).
    pub async fn start_via(rows: i64, settings: &str, redis: Redis, url: &str) -> Self {
        let template = format!("{TEMPLATE_PREFIX}{{id}}");
        Self::assemble(
            rows,
            settings,
            Postgres::start().await,
            redis,
            url.to_owned(),
            &[&template],
        )
        .await
    }

    async fn assemble(
        rows: i64,
        settings: &str,
        pg: Postgres,
        redis: Redis,
        redis_url: String,
        keys: &[&str],
    ) -> Self {
        let keys: Vec<String> = keys.iter().map(|k| format!("{k:?}")).collect();
        let dir = tempfile::Builder::new()
            .prefix("smartcache-stack-")
            .tempdir()
            .expect("temporary directory");
        let ns = Namespace::new("fx").unwrap();
        let text = format!(
            "database_url = {:?}\nredis_url = {:?}\nnamespace = {:?}\npoll_interval_ms = 100\n{settings}\n\
             [[tables]]\nname = \"items\"\nkeys = [{}]\n",
            pg.url("postgres"),
            redis_url,
            ns.name(),
            keys.join(", ")
        );
        let config_path = dir.path().join("smartcache.toml");
        std::fs::write(&config_path, &text).expect("write the config");
        let mut client = pg.connect().await;
        client
            .batch_execute(&format!(
                "CREATE TABLE items (id bigint PRIMARY KEY, val bigint NOT NULL);
                 INSERT INTO items SELECT g, 0 FROM generate_series(1, {rows}) g;"
            ))
            .await
            .expect("create items");
        let config = Config::from_toml(&text, &config_path, &Overrides::default())
            .expect("valid test config");
        let plan = schema::install_plan(&client, &config)
            .await
            .expect("plan install");
        schema::apply(&mut client, &plan).await.expect("install");
        let cache = Cache::builder(&redis_url)
            .namespace(ns.name())
            .timeout(Duration::from_secs(5))
            .build()
            .await
            .expect("library cache");
        Self {
            pg,
            redis,
            redis_url,
            ns,
            cache,
            rows,
            config,
            config_path,
            daemons_started: 0,
            dir,
        }
    }

    /// Starts a daemon process on this stack with `env` set (e.g.
    /// `SMARTCACHE_REPLICA_URLS`).
    pub fn daemon_with_env(&mut self, env: &[(&str, &str)]) -> DaemonProcess {
        self.daemons_started += 1;
        let log = self
            .dir
            .path()
            .join(format!("daemon-{}.log", self.daemons_started));
        DaemonProcess::start_with_env(
            &self.config_path,
            &self.pg.url("postgres"),
            &self.redis_url,
            self.ns.name(),
            log,
            env,
        )
    }

    /// Starts a daemon process on this stack that reaches PostgreSQL at
    /// `database_url` (e.g. through a pooler in front of [`Stack::pg`]).
    pub fn daemon_via(&mut self, database_url: &str) -> DaemonProcess {
        self.daemons_started += 1;
        let log = self
            .dir
            .path()
            .join(format!("daemon-{}.log", self.daemons_started));
        DaemonProcess::start(
            &self.config_path,
            database_url,
            &self.redis_url,
            self.ns.name(),
            log,
        )
    }

    /// Starts a daemon process on this stack.
    pub fn daemon(&mut self) -> DaemonProcess {
        self.daemon_via(&self.pg.url("postgres"))
    }

    /// A Redis connection.
    pub async fn redis_con(&self) -> smartcache_core::conn::Conn {
        smartcache_core::conn::Conn::open(&self.redis_url, &Default::default())
            .expect("test Redis URL")
    }

    /// Every `(id, val)` of `items`, by id.
    pub async fn rows(&self) -> Vec<(i64, i64)> {
        self.pg
            .connect()
            .await
            .query("SELECT id, val FROM items ORDER BY id", &[])
            .await
            .unwrap()
            .iter()
            .map(|r| (r.get(0), r.get(1)))
            .collect()
    }

    /// Caches every row both ways: `item:{id}` written straight to Redis
    /// (invalidated by the key template) and `lib:{id}` through the library
    /// with `Dep::row("items", [id])`. Values are the row's `val`.
    pub async fn fill(&self) {
        use futures_util::StreamExt;
        let rows = self.rows().await;
        let mut con = self.redis_con().await;
        for chunk in rows.chunks(1000) {
            let mut pipe = redis::pipe();
            for (id, val) in chunk {
                pipe.set(self.ns.value_key(&format!("{TEMPLATE_PREFIX}{id}")), val)
                    .ignore();
            }
            let _: () = pipe.query_async(&mut con).await.expect("fill item:*");
        }
        let stored: Vec<bool> = futures_util::stream::iter(rows)
            .map(|(id, val)| async move {
                self.cache
                    .entry(format!("{LIBRARY_PREFIX}{id}"))
                    .depends_on(Dep::row("items", [id]))
                    .set(&val)
                    .await
                    .expect("library set")
            })
            .buffer_unordered(32)
            .collect()
            .await;
        assert!(stored.iter().all(|s| *s), "every library set stored");
    }

    /// Starts `n` writers that update random rows with ids in `hot`
    /// (1 to 3 rows per transaction, `val = val + 1`), reconnecting
    /// whenever PostgreSQL goes away.
    pub fn writers(&self, n: usize, hot: std::ops::RangeInclusive<i64>) -> Writers {
        let mut w = Writers {
            stop: Arc::new(AtomicBool::new(false)),
            commits: Arc::new(AtomicU64::new(0)),
            rows: Arc::new(AtomicU64::new(0)),
            errors: Arc::new(AtomicU64::new(0)),
            tasks: Vec::new(),
        };
        let tasks = (0..n)
            .map(|i| {
                let url = self.pg.url("postgres");
                let (stop, commits, rows, errors) = (
                    w.stop.clone(),
                    w.commits.clone(),
                    w.rows.clone(),
                    w.errors.clone(),
                );
                let hot = hot.clone();
                tokio::spawn(async move {
                    let mut rng = Rng::new(i as u64);
                    while !stop.load(Ordering::Relaxed) {
                        let connect = tokio::time::timeout(
                            Duration::from_secs(2),
                            tokio_postgres::connect(&url, NoTls),
                        );
                        let Ok(Ok((mut client, conn))) = connect.await else {
                            errors.fetch_add(1, Ordering::Relaxed);
                            tokio::time::sleep(Duration::from_millis(20)).await;
                            continue;
                        };
                        tokio::spawn(conn);
                        while !stop.load(Ordering::Relaxed) {
                            let mut ids: Vec<i64> =
                                (0..1 + rng.below(3)).map(|_| rng.pick(&hot)).collect();
                            // In key order: writers do not deadlock each other.
                            ids.sort_unstable();
                            match write(&mut client, &ids).await {
                                Ok(()) => {
                                    rows.fetch_add(ids.len() as u64, Ordering::Relaxed);
                                    commits.fetch_add(1, Ordering::Relaxed)
                                }
                                Err(_) => {
                                    errors.fetch_add(1, Ordering::Relaxed);
                                    break;
                                }
                            };
                        }
                    }
                })
            })
            .collect();
        w.tasks = tasks;
        w
    }

    /// Rows left in the outbox, or `None` when PostgreSQL does not answer.
    pub async fn outbox_len(&self) -> Option<i64> {
        let c = self.pg.try_connect().await.ok()?;
        c.query_one("SELECT count(*) FROM smartcache.outbox", &[])
            .await
            .ok()
            .map(|r| r.get(0))
    }

    /// Waits until the outbox is empty: every committed change has been
    /// applied to Redis (a claimed row disappears only when the daemon
    /// commits, after Redis applied it).
    pub async fn wait_drained(&self) {
        let start = Instant::now();
        wait_for("the outbox to drain", WAIT, || async {
            (self.outbox_len().await == Some(0)).then_some(())
        })
        .await;
        println!("outbox drained in {:?}", start.elapsed());
    }

    /// The guarantee: every cached entry equals the database, and the
    /// entries of rows in `untouched` (which no writer changed) are still
    /// cached. Prints the counts; panics on a stale or missing entry.
    pub async fn verify(&self, untouched: impl IntoIterator<Item = i64>) -> Verdict {
        let verdict = self.compare(untouched).await;
        assert!(
            verdict.stale.is_empty(),
            "{} stale entries, e.g. {:?}",
            verdict.stale.len(),
            &verdict.stale[..verdict.stale.len().min(10)]
        );
        assert!(
            verdict.missing.is_empty(),
            "{} entries that no change touched were deleted, e.g. {:?}",
            verdict.missing.len(),
            &verdict.missing[..verdict.missing.len().min(10)]
        );
        verdict
    }

    /// What [`Stack::verify`] checks, without failing.
    pub async fn compare(&self, untouched: impl IntoIterator<Item = i64>) -> Verdict {
        let db: HashMap<i64, i64> = self.rows().await.into_iter().collect();
        let mut con = self.redis_con().await;
        let found = con
            .scan_all(&self.ns.match_all())
            .await
            .expect("scan the namespace");
        let keys: Vec<String> = found
            .iter()
            .filter_map(|k| self.ns.cache_key_of(k).map(str::to_owned))
            .collect();
        let mut cached: HashMap<String, i64> = HashMap::new();
        for chunk in keys.chunks(1000) {
            let redis_keys: Vec<String> = chunk.iter().map(|k| self.ns.value_key(k)).collect();
            let values: Vec<Option<String>> = redis::cmd("MGET")
                .arg(&redis_keys)
                .query_async(&mut con)
                .await
                .expect("MGET");
            for (k, v) in chunk.iter().zip(values) {
                if let Some(v) = v {
                    let v = v
                        .parse()
                        .unwrap_or_else(|_| panic!("{k} holds {v:?}, not a number"));
                    cached.insert(k.clone(), v);
                }
            }
        }
        let mut verdict = Verdict {
            cached: cached.len(),
            ..Verdict::default()
        };
        for (key, value) in &cached {
            let id: i64 = key
                .strip_prefix(TEMPLATE_PREFIX)
                .or_else(|| key.strip_prefix(LIBRARY_PREFIX))
                .and_then(|id| id.parse().ok())
                .unwrap_or_else(|| panic!("unexpected cache key {key:?}"));
            let truth = db.get(&id).copied();
            if truth != Some(*value) {
                verdict
                    .stale
                    .push(format!("{key} = {value}, database {truth:?}"));
            }
        }
        for id in untouched {
            for prefix in [TEMPLATE_PREFIX, LIBRARY_PREFIX] {
                let key = format!("{prefix}{id}");
                if !cached.contains_key(&key) {
                    verdict.missing.push(key);
                }
            }
        }
        verdict.stale.sort();
        verdict.missing.sort();
        println!(
            "verify: {} rows, {} cached entries, {} stale, {} untouched entries missing",
            db.len(),
            verdict.cached,
            verdict.stale.len(),
            verdict.missing.len()
        );
        verdict
    }
}

/// What [`Stack::verify`] found.
#[derive(Debug, Default)]
pub struct Verdict {
    /// Cache entries in the namespace.
    pub cached: usize,
    /// Entries whose value differs from the database.
    pub stale: Vec<String>,
    /// Entries of untouched rows that are gone.
    pub missing: Vec<String>,
}

async fn write(client: &mut Client, ids: &[i64]) -> Result<(), tokio_postgres::Error> {
    let tx = client.transaction().await?;
    for id in ids {
        tx.execute("UPDATE items SET val = val + 1 WHERE id = $1", &[id])
            .await?;
    }
    tx.commit().await
}

/// Background writers started by [`Stack::writers`].
pub struct Writers {
    stop: Arc<AtomicBool>,
    commits: Arc<AtomicU64>,
    rows: Arc<AtomicU64>,
    errors: Arc<AtomicU64>,
    tasks: Vec<JoinHandle<()>>,
}

impl Writers {
    /// Transactions committed so far.
    pub fn commits(&self) -> u64 {
        self.commits.load(Ordering::Relaxed)
    }

    /// Row updates committed so far (one outbox event each).
    pub fn rows_updated(&self) -> u64 {
        self.rows.load(Ordering::Relaxed)
    }

    /// Waits until `n` more transactions have committed.
    pub async fn wait_more(&self, n: u64) {
        let target = self.commits() + n;
        wait_for(&format!("{n} more commits"), WAIT, || async {
            (self.commits() >= target).then_some(())
        })
        .await;
    }

    /// Stops the writers; returns (commits, failed attempts).
    pub async fn stop(mut self) -> (u64, u64) {
        self.stop.store(true, Ordering::Relaxed);
        for t in std::mem::take(&mut self.tasks) {
            t.await.expect("writer task");
        }
        let r = (self.commits(), self.errors.load(Ordering::Relaxed));
        println!("writers: {} commits, {} failed attempts", r.0, r.1);
        r
    }
}

impl Drop for Writers {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
    }
}

/// xorshift64*: enough randomness for picking rows, no dependency.
pub struct Rng(u64);

impl Rng {
    /// Seeded from the clock and `salt`.
    pub fn new(salt: u64) -> Self {
        let t = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_nanos() as u64;
        Self((t ^ salt.wrapping_mul(0x9E37_79B9_7F4A_7C15)) | 1)
    }

    /// The next number.
    pub fn next_u64(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }

    /// A number in `0..n`.
    pub fn below(&mut self, n: u64) -> u64 {
        self.next_u64() % n
    }

    /// A number in `range`.
    pub fn pick(&mut self, range: &std::ops::RangeInclusive<i64>) -> i64 {
        let span = (range.end() - range.start() + 1) as u64;
        range.start() + self.below(span) as i64
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// `redis-cli -p {port} {args}` (with `-c`: following redirects);
    /// its trimmed stdout.
    fn cli(port: u16, follow: bool, args: &[&str]) -> String {
        let mut c = Command::new("redis-cli");
        if follow {
            c.arg("-c");
        }
        let out = c
            .args(["-p", &port.to_string()])
            .args(args)
            .stdin(Stdio::null())
            .output()
            .expect("run redis-cli");
        String::from_utf8_lossy(&out.stdout).trim().to_owned()
    }

    #[tokio::test]
    async fn redis_cluster_starts_serves_and_stops() {
        let started = Instant::now();
        let cluster = RedisCluster::start().await;
        println!("Redis cluster up in {:?}", started.elapsed());
        let [p1, p2, p3] = cluster.ports();
        assert_eq!(cluster.seed_url(), format!("redis://127.0.0.1:{p1}/"));
        assert_eq!(cluster.urls().len(), CLUSTER_NODES);
        // `foo` hashes to slot 12182, which `--cluster create` gives to the
        // third master: set through the first node and read through the
        // second both need a redirect.
        assert_eq!(cli(p1, false, &["cluster", "keyslot", "foo"]), "12182");
        assert!(cli(p1, false, &["get", "foo"]).contains(&format!("MOVED 12182 127.0.0.1:{p3}")));
        assert_eq!(cli(p1, true, &["set", "foo", "bar"]), "OK");
        assert_eq!(cli(p2, true, &["get", "foo"]), "bar");
        assert_eq!(cli(p3, false, &["get", "foo"]), "bar");
        let pids = cluster.pids();
        let urls = cluster.urls();
        let ports = cluster.ports();
        drop(cluster);
        for pid in pids {
            assert!(!alive(pid), "node {pid} still runs after drop");
        }
        for url in urls {
            assert!(!ping(&url).await, "{url} still answers after drop");
        }
        for port in ports {
            for p in [port, port + 10000] {
                assert!(
                    std::net::TcpStream::connect(("127.0.0.1", p)).is_err(),
                    "127.0.0.1:{p} still accepts connections after drop"
                );
            }
        }
    }
}
