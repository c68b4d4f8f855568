//! `smartcache-bench`: measures smartcache against this machine's floor and
//! against what a user would otherwise write, each in the same run.
//!
//! Sections: the hit path (library and axum layer vs a raw `GET`),
//! commit → key deleted at a fixed commit rate (vs NOTIFY delivery plus one
//! `DEL` round trip), bulk throughput (vs a naive one-`DEL`-per-NOTIFY
//! listener), and the daemon's memory and CPU. The daemon runs as a separate
//! process from the release binary. Uses its own database and namespace and
//! removes both at the end. `bench/run.sh` runs it with the pgbench script.

mod daemon;
mod hit;
mod horizon;
mod latency;
mod local;
mod memory;
mod plot;
mod rest;
mod stats;
mod throughput;

use anyhow::Context;
use clap::Parser;
use std::path::PathBuf;
use tokio_postgres::{Client, NoTls};

/// Benchmarks of smartcache; results are printed as Markdown tables.
#[derive(Parser, Debug, Clone)]
struct Args {
    /// Admin PostgreSQL URL; the bench creates and drops its own database.
    #[arg(
        long,
        env = "DATABASE_URL",
        default_value = "postgres://postgres@127.0.0.1:5432/postgres"
    )]
    database_url: String,
    /// Redis URL; only keys under the bench namespace are written or deleted.
    #[arg(long, env = "REDIS_URL", default_value = "redis://127.0.0.1:6379/0")]
    redis_url: String,
    /// The Redis URL lists the seed nodes of a Redis Cluster.
    #[arg(long)]
    redis_cluster: bool,
    /// The daemon binary, started as a separate process.
    #[arg(long, default_value = "target/release/smartcache-invalidator")]
    daemon_bin: PathBuf,
    /// Runs per figure; the tables show the median run.
    #[arg(long, default_value_t = 3)]
    runs: usize,
    /// Short runs for debugging the bench itself.
    #[arg(long)]
    quick: bool,
    /// Seconds of commits at 1,000 commits/s per commit → delete run.
    #[arg(long, default_value_t = 5)]
    commit_secs: u64,
    /// Rows in the throughput tests.
    #[arg(long, default_value_t = 100_000)]
    rows: i64,
    /// The daemon's `batch_size` (rows claimed per transaction).
    #[arg(long)]
    batch_size: Option<usize>,
    /// Runs the daemon with `doorbell_payload = true`.
    #[arg(long)]
    doorbell_payload: bool,
    /// Seconds per phase of the horizon section.
    #[arg(long, default_value_t = 20)]
    horizon_secs: u64,
    /// Outbox rows in the horizon section's backlog.
    #[arg(long, default_value_t = 1_000_000)]
    backlog: i64,
    /// Entries per case of the memory section.
    #[arg(long, default_value_t = 100_000)]
    memory_entries: usize,
    /// Sections to run (memory, hit, latency, local, rest, throughput, horizon).
    /// `memory` needs Redis only, and a Redis nothing else writes to.
    #[arg(
        long,
        value_delimiter = ',',
        default_value = "hit,latency,local,rest,throughput,horizon"
    )]
    only: Vec<String>,
    /// Where the commit → delete latency CDF is drawn.
    #[arg(long, default_value = "bench/commit_to_delete_cdf.png")]
    plot: PathBuf,
}

const DB: &str = "sc_bench";
/// The bench's Redis namespace: every key it writes or deletes is under it.
const NS: &str = "scbench";

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let mut args = Args::parse();
    if args.quick {
        args.runs = args.runs.min(1);
        args.commit_secs = args.commit_secs.min(2);
        args.rows = args.rows.min(20_000);
        args.horizon_secs = args.horizon_secs.min(3);
        args.backlog = args.backlog.min(50_000);
        args.memory_entries = args.memory_entries.min(10_000);
    }
    anyhow::ensure!(
        !args.redis_cluster || args.only.iter().all(|s| s == "hit"),
        "--redis-cluster measures the hit path only: add --only hit"
    );
    if args.only.iter().any(|s| s == "memory") {
        memory::run(&args).await?;
        args.only.retain(|s| s != "memory");
        if args.only.is_empty() {
            return Ok(());
        }
    }
    let db_url = format!(
        "{}/{DB}",
        args.database_url
            .rsplit_once('/')
            .context("DATABASE_URL must end in /dbname")?
            .0
    );
    let admin = connect(&args.database_url).await?;
    admin
        .batch_execute(&format!("DROP DATABASE IF EXISTS {DB} WITH (FORCE)"))
        .await?;
    admin
        .batch_execute(&format!("CREATE DATABASE {DB}"))
        .await?;
    let result = run(&args, &db_url).await;
    let cleanup = cleanup(&args, &admin).await;
    result.and(cleanup)
}

async fn run(args: &Args, db_url: &str) -> anyhow::Result<()> {
    let pg = connect(db_url).await?;
    let rows = args.rows.max(100_000);
    pg.batch_execute(&format!(
        "CREATE TABLE bench_items (id bigint PRIMARY KEY, val bigint NOT NULL);
         INSERT INTO bench_items SELECT g, 0 FROM generate_series(1, {rows}) g;
         CREATE TABLE naive_items (id bigint PRIMARY KEY, val bigint NOT NULL);
         INSERT INTO naive_items SELECT g, 0 FROM generate_series(1, {rows}) g;
         CREATE FUNCTION naive_notify() RETURNS trigger LANGUAGE plpgsql AS $$
         BEGIN PERFORM pg_notify('bench_naive', '{NS}:naive:' || NEW.id); RETURN NULL; END $$;
         CREATE TRIGGER naive_notify AFTER UPDATE ON naive_items
           FOR EACH ROW EXECUTE FUNCTION naive_notify();"
    ))
    .await?;
    pg.batch_execute("VACUUM ANALYZE bench_items, naive_items")
        .await?;
    let mut daemon = daemon::Daemon::start(args, db_url).await?;
    println!("# smartcache-bench\n");
    println!(
        "runs: {}, commit → delete: {} s at 1,000 commits/s per run, throughput rows: {}, \
         daemon: {} (separate process, batch_size {}, doorbell_payload {})\n",
        args.runs,
        args.commit_secs,
        args.rows,
        args.daemon_bin.display(),
        args.batch_size.map_or("default".into(), |b| b.to_string()),
        args.doorbell_payload
    );
    println!("daemon RSS idle: {:.1} MB\n", daemon.rss_mb()?);
    let sections = |s: &str| args.only.iter().any(|o| o == s);
    let result = async {
        if sections("hit") {
            hit::run(args).await?;
        }
        if sections("latency") {
            latency::run(args, db_url).await?;
        }
        if sections("local") {
            local::run(args, db_url).await?;
        }
        if sections("rest") {
            rest::run(args, db_url, &mut daemon).await?;
        }
        if sections("horizon") {
            horizon::run(args, db_url, &mut daemon).await?;
        }
        if sections("throughput") {
            throughput::run(args, db_url, &mut daemon).await?;
        }
        anyhow::Ok(())
    }
    .await;
    daemon.stop().await?;
    result
}

/// Removes the bench's database and every key of its namespace.
async fn cleanup(args: &Args, admin: &Client) -> anyhow::Result<()> {
    admin
        .batch_execute(&format!("DROP DATABASE IF EXISTS {DB} WITH (FORCE)"))
        .await?;
    let mut options = smartcache_core::conn::Options::default();
    options.cluster = args.redis_cluster;
    let mut con = smartcache_core::conn::Conn::open(&args.redis_url, &options)?;
    for key in con.scan_all(&format!("{NS}:*")).await? {
        let _: () = redis::cmd("UNLINK").arg(key).query_async(&mut con).await?;
    }
    Ok(())
}

pub(crate) async fn connect(url: &str) -> anyhow::Result<Client> {
    let (client, connection) = tokio_postgres::connect(url, NoTls)
        .await
        .with_context(|| format!("connecting to PostgreSQL at {url}"))?;
    tokio::spawn(connection);
    Ok(client)
}

/// A connection of the type the library and the daemon use.
pub(crate) async fn redis_manager(url: &str) -> anyhow::Result<redis::aio::ConnectionManager> {
    Ok(redis::Client::open(url)?.get_connection_manager().await?)
}

/// A separate connection for the observer side of a measurement.
pub(crate) async fn redis_con(url: &str) -> anyhow::Result<redis::aio::MultiplexedConnection> {
    Ok(redis::Client::open(url)?
        .get_multiplexed_async_connection()
        .await?)
}
