//! The command line: clap definitions and what each command does.

use crate::catalog;
use crate::config::{Config, ConfigError, Overrides};
use crate::mapping::truncation_targets;
use crate::schema;
use clap::{Args, Parser, Subcommand, ValueEnum};
use smartcache_core::invalidate::invalidate;
use smartcache_core::keys::TableName;
use std::path::PathBuf;

/// Deletes exactly the Redis keys that committed PostgreSQL changes affect.
#[derive(Debug, Parser)]
#[command(name = "smartcache-invalidator", version, about)]
pub struct Cli {
    /// Settings shared by every command.
    #[command(flatten)]
    pub global: GlobalArgs,
    /// What to do.
    #[command(subcommand)]
    pub command: Command,
}

/// Flags accepted before or after the command.
#[derive(Debug, Args)]
pub struct GlobalArgs {
    /// Config file [default: smartcache.toml in the working directory, if it exists]
    #[arg(long, global = true, value_name = "PATH")]
    pub config: Option<PathBuf>,
    /// PostgreSQL connection string, with libpq's sslmode, sslrootcert,
    /// sslcert, sslkey [env: DATABASE_URL] [default:
    /// postgres://postgres@127.0.0.1:5432/postgres]
    // The environment is read in `load_config`, not by clap: a flag must
    // beat DATABASE_URL_FILE, and clap would print the value (a password)
    // in --help.
    #[arg(long, global = true, value_name = "URL")]
    pub database_url: Option<String>,
    /// File holding the PostgreSQL connection string (a mounted secret)
    /// [env: DATABASE_URL_FILE]
    #[arg(long, global = true, value_name = "PATH")]
    pub database_url_file: Option<PathBuf>,
    /// Redis URL [env: REDIS_URL] [default: redis://127.0.0.1:6379/0]
    // Read from the environment in `load_config`, like DATABASE_URL.
    #[arg(long, global = true, value_name = "URL")]
    pub redis_url: Option<String>,
    /// Redis is a cluster; --redis-url may then list seed nodes separated by commas
    #[arg(long, global = true, env = "SMARTCACHE_REDIS_CLUSTER")]
    pub redis_cluster: bool,
    /// File holding the Redis URL (with its password), instead of --redis-url;
    /// a trailing newline is ignored [env: REDIS_URL_FILE]
    #[arg(long, global = true, value_name = "PATH")]
    pub redis_url_file: Option<PathBuf>,
    /// PEM file of the CA(s) that signed the Redis server's certificate, for
    /// rediss:// [default: the system's roots]
    #[arg(
        long,
        global = true,
        env = "SMARTCACHE_REDIS_CA_FILE",
        value_name = "PATH"
    )]
    pub redis_ca_file: Option<PathBuf>,
    /// PEM client certificate (chain) for Redis servers that require one (mTLS)
    #[arg(
        long,
        global = true,
        env = "SMARTCACHE_REDIS_CLIENT_CERT_FILE",
        value_name = "PATH"
    )]
    pub redis_client_cert_file: Option<PathBuf>,
    /// PEM private key of --redis-client-cert-file
    #[arg(
        long,
        global = true,
        env = "SMARTCACHE_REDIS_CLIENT_KEY_FILE",
        value_name = "PATH"
    )]
    pub redis_client_key_file: Option<PathBuf>,
    /// PostgreSQL replica the applications read from (repeat for several);
    /// keys are deleted only once each has replayed the change
    #[arg(
        long = "replica-url",
        global = true,
        env = "SMARTCACHE_REPLICA_URLS",
        value_delimiter = ',',
        value_name = "URL"
    )]
    pub replica_urls: Vec<String>,
    /// Namespace: first segment of every Redis key [default: cache]
    #[arg(long, global = true, env = "SMARTCACHE_NAMESPACE", value_name = "NAME")]
    pub namespace: Option<String>,
    /// Log format (filter with RUST_LOG, default info); colour only on a terminal
    #[arg(
        long,
        global = true,
        value_enum,
        env = "SMARTCACHE_LOG_FORMAT",
        default_value_t = LogFormat::Text
    )]
    pub log_format: LogFormat,
}

/// How logs are written.
#[derive(Debug, Clone, Copy, ValueEnum)]
pub enum LogFormat {
    /// Human-readable lines.
    Text,
    /// One JSON object per line.
    Json,
}

/// The commands.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Create or upgrade the SQL objects and attach triggers to the configured tables
    Install {
        /// Print the SQL and change nothing
        #[arg(long)]
        dry_run: bool,
    },
    /// Remove every object that install created
    Uninstall,
    /// Run the daemon until SIGTERM or SIGINT
    Run {
        /// Serve /metrics and /healthz on this address (e.g. 127.0.0.1:9187;
        /// bind a non-loopback address only behind a firewall)
        #[arg(long, value_name = "ADDR")]
        metrics_addr: Option<std::net::SocketAddr>,
    },
    /// Validate the config, connect to both servers, verify the installed triggers
    Check,
    /// List cached keys with their size and dependencies
    Keys {
        /// Glob on cache keys, without the namespace
        #[arg(default_value = "*")]
        pattern: String,
    },
    /// Delete cache entries by hand, inside the namespace only
    Clear(ClearArgs),
    /// Serve the admin page: keys with size, dependencies and age, recent
    /// invalidations, and (with `admin_token` set) buttons to clear a key or
    /// a table
    Admin {
        /// Address to serve on
        #[arg(long, value_name = "ADDR", default_value = "127.0.0.1:9188")]
        addr: std::net::SocketAddr,
        /// Allow a non-loopback address (put TLS and a firewall in front)
        #[arg(long)]
        allow_remote: bool,
    },
}

/// What `clear` deletes; exactly one of the three.
#[derive(Debug, Args)]
#[group(required = true, multiple = false)]
pub struct ClearArgs {
    /// Cache keys to delete (exact names, no globs)
    pub keys: Vec<String>,
    /// Delete every entry of this table: its key templates and everything
    /// registered as depending on it or its rows
    #[arg(long, value_name = "TABLE")]
    pub table: Option<String>,
    /// Delete every entry of the namespace
    #[arg(long)]
    pub all: bool,
}

impl GlobalArgs {
    /// Loads the config with these flags (and `run --metrics-addr`) on top.
    pub fn load_config(
        &self,
        metrics_addr: Option<std::net::SocketAddr>,
    ) -> Result<Config, ConfigError> {
        let env = |name: &str| std::env::var_os(name).filter(|v| !v.is_empty());
        let text = |name: &str| env(name).map(|v| v.to_string_lossy().into_owned());
        let overrides = Overrides {
            database_url: self.database_url.clone(),
            database_url_file: self.database_url_file.clone(),
            database_url_env: text("DATABASE_URL"),
            database_url_file_env: env("DATABASE_URL_FILE").map(PathBuf::from),
            redis_url: self.redis_url.clone(),
            redis_url_env: text("REDIS_URL"),
            redis_url_file_env: env("REDIS_URL_FILE").map(PathBuf::from),
            redis_cluster: self.redis_cluster.then_some(true),
            redis_url_file: self.redis_url_file.clone(),
            redis_ca_file: self.redis_ca_file.clone(),
            redis_client_cert_file: self.redis_client_cert_file.clone(),
            redis_client_key_file: self.redis_client_key_file.clone(),
            replica_urls: (!self.replica_urls.is_empty()).then(|| self.replica_urls.clone()),
            namespace: self.namespace.clone(),
            metrics_addr,
            admin_token: std::env::var("SMARTCACHE_ADMIN_TOKEN").ok(),
        };
        Config::load(self.config.as_deref(), &overrides)
    }
}

async fn connect_pg(config: &Config) -> anyhow::Result<crate::pg::Session> {
    let target = crate::pg::target(config)?;
    Ok(crate::pg::connect(&target).await?)
}

/// `install`: prints the plan, applies it unless `dry_run`.
pub async fn install(config: &Config, dry_run: bool) -> anyhow::Result<()> {
    let mut session = connect_pg(config).await?;
    let plan = schema::install_plan(&session.client, config).await?;
    if dry_run {
        println!("-- smartcache-invalidator install --dry-run: nothing was changed");
        for stmt in &plan.statements {
            println!("{};\n", stmt.trim_end().trim_end_matches(';'));
        }
        if plan.statements.is_empty() {
            println!("-- already up to date");
        }
        return Ok(());
    }
    if plan.statements.is_empty() {
        println!("already up to date: nothing to change");
        return Ok(());
    }
    schema::apply(&mut session.client, &plan).await?;
    for line in &plan.summary {
        println!("{line}");
    }
    println!("installed schema version {}", schema::SCHEMA_VERSION);
    Ok(())
}

/// `uninstall`.
pub async fn uninstall(config: &Config) -> anyhow::Result<()> {
    let mut session = connect_pg(config).await?;
    let pending = schema::uninstall(&mut session.client).await?;
    if pending > 0 {
        println!("warning: {pending} pending outbox rows were discarded; affected keys were not invalidated");
    }
    println!("removed the smartcache schema and its triggers");
    Ok(())
}

/// `check`: returns an error naming every problem found: a
/// [`ConfigError`] when the config names tables or columns the database
/// does not have (exit status 2), a plain error otherwise (1).
pub async fn check(config: &Config) -> anyhow::Result<()> {
    println!("config: ok ({})", config.origin());
    let session = connect_pg(config).await?;
    println!("postgresql: connected");
    let mut tables = Vec::new();
    let mut mismatch = false;
    for spec in &config.tables {
        match catalog::resolve_one(&session.client, spec).await? {
            Ok(t) => tables.push(t),
            Err(_) => mismatch = true,
        }
    }
    let installed = schema::inspect(&session.client).await?;
    let mut problems = crate::capture::problems(&session.client, config, &installed).await?;
    if problems.is_empty() {
        println!(
            "tables: {} configured, all exist with their columns; capture is on",
            tables.len()
        );
    }
    let drift = schema::drift(&installed, &tables, config);
    if drift.is_empty() && !mismatch {
        println!("triggers: match the config");
    }
    problems.extend(drift.into_iter().map(|d| {
        format!("{d}: run `smartcache-invalidator install` to bring the installed objects in line with the config")
    }));
    let mut redis_config_error = false;
    match redis_problems(config).await {
        Ok((policy, found)) => {
            let kind = if config.redis_cluster {
                "cluster"
            } else {
                "server"
            };
            println!("redis: connected to the {kind} (maxmemory-policy {policy})");
            problems.extend(found);
        }
        // A Redis connection problem is named with its cause and the
        // setting to change, never as drift of the installed objects.
        Err(e) => {
            redis_config_error = e.downcast_ref::<ConfigError>().is_some();
            problems.push(format!("redis: {e:#}"));
        }
    }
    if problems.is_empty() {
        println!("ok");
        return Ok(());
    }
    for p in &problems {
        println!("problem: {p}");
    }
    let summary = format!("check found {} problem(s), listed above", problems.len());
    if mismatch || redis_config_error {
        return Err(ConfigError(summary).into());
    }
    anyhow::bail!(summary)
}

async fn redis_problems(config: &Config) -> anyhow::Result<(String, Vec<String>)> {
    let mut con = crate::redis_ops::connect_now(config).await?;
    Ok(crate::redis_ops::problems(&mut con).await?)
}

/// The library's view of the configured namespace, for management calls.
/// A connection failure says why, naming the setting to change.
pub(crate) async fn cache(config: &Config) -> anyhow::Result<smartcache::Cache> {
    crate::redis_ops::connect_now(config).await?;
    smartcache::Cache::builder(&config.redis_url)
        .namespace(config.namespace.name())
        .cluster(config.redis_cluster)
        .tls(config.redis_tls.clone())
        .build()
        .await
        .map_err(|e| match e {
            smartcache::Error::InvalidUrl { .. } => {
                anyhow::Error::new(ConfigError(format!("setting `redis_url`: {e}")))
            }
            e => anyhow::Error::new(e),
        })
}

/// `keys [PATTERN]`: one line per entry, size and dependencies.
pub async fn keys(config: &Config, pattern: &str) -> anyhow::Result<()> {
    let cache = cache(config).await?;
    let entries = cache.keys(pattern).await?;
    let width = entries
        .iter()
        .map(|e| e.key.len())
        .max()
        .unwrap_or(3)
        .max(3);
    println!("{:<width$}  {:>10}  DEPENDENCIES", "KEY", "BYTES");
    for e in &entries {
        let deps = if e.deps.is_empty() {
            "-".to_owned()
        } else {
            e.deps.join(" ")
        };
        println!("{:<width$}  {:>10}  {deps}", e.key, e.size_bytes);
    }
    let total: u64 = entries.iter().map(|e| e.size_bytes).sum();
    println!(
        "{} keys, {total} bytes in namespace {}",
        entries.len(),
        config.namespace.name()
    );
    Ok(())
}

/// `clear KEY...`, `clear --table T`, `clear --all`.
pub async fn clear(config: &Config, args: &ClearArgs) -> anyhow::Result<()> {
    let cache = cache(config).await?;
    let ns = config.namespace.name();
    if args.all {
        let n = cache.clear_all().await?;
        println!("cleared {n} entries in namespace {ns}");
    } else if let Some(table) = &args.table {
        let table = TableName::parse(table).map_err(|e| ConfigError(e.to_string()))?;
        let n = clear_table(config, &table).await?;
        println!("cleared {n} entries of table {table} in namespace {ns}");
    } else {
        let mut n = 0;
        for key in &args.keys {
            if cache.clear(key).await? {
                n += 1;
            } else {
                println!("not cached: {key}");
            }
        }
        println!("cleared {n} of {} keys in namespace {ns}", args.keys.len());
    }
    Ok(())
}

/// Deletes exactly what a TRUNCATE of `table` invalidates: the keys its
/// templates can produce and everything registered as depending on it or
/// its rows. Returns how many values were deleted.
pub async fn clear_table(config: &Config, table: &TableName) -> anyhow::Result<u64> {
    let mut con = crate::redis_ops::connect_now(config).await?;
    let (keys, mut deps) = truncation_targets(&mut con, config, table, &|| {}).await?;
    deps.push(table.table_dep());
    Ok(invalidate(&mut con, &config.namespace, &keys, &deps).await?)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn passwords_are_redacted() {
        use crate::conninfo::redact;
        assert_eq!(
            redact("postgres://u:secret@h:5432/db"),
            "postgres://u:***@h:5432/db"
        );
        assert_eq!(redact("postgres://u@h/db"), "postgres://u@h/db");
    }

    #[test]
    fn global_flags_after_the_command_are_accepted() {
        let cli = Cli::try_parse_from(["x", "check", "--namespace", "n"]).unwrap();
        assert_eq!(cli.global.namespace.as_deref(), Some("n"));
    }

    #[test]
    fn clear_needs_exactly_one_target() {
        assert!(Cli::try_parse_from(["x", "clear"]).is_err());
        assert!(Cli::try_parse_from(["x", "clear", "a", "--all"]).is_err());
        assert!(Cli::try_parse_from(["x", "clear", "--all"]).is_ok());
    }
}
