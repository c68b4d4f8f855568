//! The daemon under test, as a separate process from the release binary,
//! with its memory and CPU read from `/proc`.

use crate::{Args, NS};
use anyhow::{bail, Context};
use std::path::PathBuf;
use std::process::Stdio;
use std::time::Duration;
use tokio::process::{Child, Command};

pub(crate) struct Daemon {
    child: Child,
    pid: u32,
    config: PathBuf,
    ticks_per_s: f64,
}

impl Daemon {
    /// Writes the config, installs the triggers and starts `run`. URLs and
    /// namespace go as flags: the scripts export `DATABASE_URL`, which would
    /// beat the file.
    pub(crate) async fn start(args: &Args, db_url: &str) -> anyhow::Result<Self> {
        let config = std::env::temp_dir().join(format!("sc-bench-{}.toml", std::process::id()));
        let batch = args
            .batch_size
            .map(|b| format!("batch_size = {b}\n"))
            .unwrap_or_default();
        let payload = args.doorbell_payload;
        std::fs::write(
            &config,
            format!(
                "{batch}doorbell_payload = {payload}\n\
                 [[tables]]\nname = \"bench_items\"\nkeys = [\"item:{{id}}\"]\n"
            ),
        )?;
        let flags = |cmd: &mut Command| {
            cmd.arg("--config")
                .arg(&config)
                .arg("--database-url")
                .arg(db_url)
                .arg("--redis-url")
                .arg(&args.redis_url)
                .arg("--namespace")
                .arg(NS);
            if args.redis_cluster {
                cmd.arg("--redis-cluster");
            }
        };
        let mut install = Command::new(&args.daemon_bin);
        flags(&mut install);
        let out = install
            .arg("install")
            .output()
            .await
            .with_context(|| format!("running {}", args.daemon_bin.display()))?;
        if !out.status.success() {
            bail!("install failed: {}", String::from_utf8_lossy(&out.stderr));
        }
        let mut run = Command::new(&args.daemon_bin);
        flags(&mut run);
        let log = std::fs::File::create(std::env::temp_dir().join("sc-bench-daemon.log"))?;
        let child = run
            .arg("run")
            // SMARTCACHE_BENCH_DAEMON_LOG=debug logs each batch (claim_us, redis_us).
            .env(
                "RUST_LOG",
                std::env::var("SMARTCACHE_BENCH_DAEMON_LOG").unwrap_or_else(|_| "warn".into()),
            )
            .stdout(Stdio::null())
            .stderr(log)
            .kill_on_drop(true)
            .spawn()?;
        let pid = child.id().context("daemon exited at once")?;
        tokio::time::sleep(Duration::from_millis(700)).await;
        let ticks = std::process::Command::new("getconf")
            .arg("CLK_TCK")
            .output()?;
        let ticks_per_s = String::from_utf8_lossy(&ticks.stdout)
            .trim()
            .parse()
            .unwrap_or(100.0);
        let mut daemon = Self {
            child,
            pid,
            config,
            ticks_per_s,
        };
        if let Some(status) = daemon.child.try_wait()? {
            bail!("the daemon exited with {status}; see /tmp/sc-bench-daemon.log");
        }
        Ok(daemon)
    }

    fn status_field(&self, field: &str) -> anyhow::Result<f64> {
        let status = std::fs::read_to_string(format!("/proc/{}/status", self.pid))?;
        let line = status
            .lines()
            .find(|l| l.starts_with(field))
            .with_context(|| format!("no {field} in /proc/{}/status", self.pid))?;
        let kb: f64 = line
            .split_whitespace()
            .nth(1)
            .context("VmRSS value")?
            .parse()?;
        Ok(kb / 1024.0)
    }

    /// Resident memory now, MB.
    pub(crate) fn rss_mb(&self) -> anyhow::Result<f64> {
        self.status_field("VmRSS:")
    }

    /// Peak resident memory since start, MB.
    pub(crate) fn peak_rss_mb(&self) -> anyhow::Result<f64> {
        self.status_field("VmHWM:")
    }

    /// User + system CPU time used so far, seconds.
    pub(crate) fn cpu_s(&self) -> anyhow::Result<f64> {
        let stat = std::fs::read_to_string(format!("/proc/{}/stat", self.pid))?;
        // Fields after the command name, which may contain spaces.
        let rest = stat.rsplit_once(')').context("/proc stat format")?.1;
        let f: Vec<&str> = rest.split_whitespace().collect();
        let utime: f64 = f[11].parse()?;
        let stime: f64 = f[12].parse()?;
        Ok((utime + stime) / self.ticks_per_s)
    }

    /// A clean stop, then a new start.
    pub(crate) async fn restart(&mut self, args: &Args, db_url: &str) -> anyhow::Result<()> {
        self.terminate().await?;
        *self = Self::start(args, db_url).await?;
        Ok(())
    }

    /// A clean stop; [`Daemon::resume`] starts it again.
    pub(crate) async fn pause(&mut self) -> anyhow::Result<()> {
        self.terminate().await
    }

    /// Starts it again after [`Daemon::pause`].
    pub(crate) async fn resume(&mut self, args: &Args, db_url: &str) -> anyhow::Result<()> {
        *self = Self::start(args, db_url).await?;
        Ok(())
    }

    /// SIGKILL, then a new start.
    pub(crate) async fn kill_and_start(&mut self, args: &Args, db_url: &str) -> anyhow::Result<()> {
        self.child.kill().await?;
        *self = Self::start(args, db_url).await?;
        Ok(())
    }

    /// SIGTERM, then wait; the daemon finishes its batch and exits 0.
    pub(crate) async fn stop(mut self) -> anyhow::Result<()> {
        self.terminate().await
    }

    async fn terminate(&mut self) -> anyhow::Result<()> {
        let _ = std::process::Command::new("kill")
            .arg("-TERM")
            .arg(self.pid.to_string())
            .status();
        let status = tokio::time::timeout(Duration::from_secs(10), self.child.wait()).await;
        let _ = std::fs::remove_file(&self.config);
        match status {
            Ok(Ok(s)) if s.success() => Ok(()),
            Ok(Ok(s)) => bail!("the daemon exited with {s}"),
            _ => {
                self.child.kill().await?;
                bail!("the daemon did not stop within 10 s of SIGTERM")
            }
        }
    }
}
