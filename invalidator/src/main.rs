//! `smartcache-invalidator`: parse the command line, set up logging, load
//! the config, call the library. Exit status: 0 success, 1 runtime
//! failure, 2 usage or configuration error.

use clap::Parser;
use smartcache_invalidator::cli::{self, Cli, Command, LogFormat};
use smartcache_invalidator::config::ConfigError;
use std::process::ExitCode;
use tracing_subscriber::EnvFilter;

#[tokio::main(flavor = "current_thread")]
async fn main() -> ExitCode {
    let cli = Cli::parse();
    init_logging(cli.global.log_format);
    match dispatch(cli).await {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) if e.downcast_ref::<ConfigError>().is_some() => {
            eprintln!("error: {e:#}");
            ExitCode::from(2)
        }
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::from(1)
        }
    }
}

async fn dispatch(cli: Cli) -> anyhow::Result<()> {
    let metrics_addr = match cli.command {
        Command::Run { metrics_addr } => metrics_addr,
        _ => None,
    };
    let config = cli.global.load_config(metrics_addr)?;
    match cli.command {
        Command::Install { dry_run } => cli::install(&config, dry_run).await,
        Command::Uninstall => cli::uninstall(&config).await,
        Command::Check => cli::check(&config).await,
        Command::Run { .. } => smartcache_invalidator::run(config, shutdown_signal()).await,
        Command::Keys { pattern } => cli::keys(&config, &pattern).await,
        Command::Clear(args) => cli::clear(&config, &args).await,
        Command::Admin { addr, allow_remote } => {
            smartcache_invalidator::admin::check_addr(addr, allow_remote)?;
            smartcache_invalidator::admin::serve(config, addr, shutdown_signal()).await
        }
    }
}

/// Colour only for a person at a terminal: a file, a pipe, journald or a
/// container's log collector gets plain text (or JSON), no escapes.
/// `NO_COLOR` turns it off on a terminal too.
fn init_logging(format: LogFormat) {
    use std::io::IsTerminal;
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info"));
    let colour = std::io::stderr().is_terminal()
        && std::env::var_os("NO_COLOR").is_none_or(|v| v.is_empty());
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(colour && matches!(format, LogFormat::Text))
        .with_writer(std::io::stderr);
    match format {
        LogFormat::Text => builder.init(),
        LogFormat::Json => builder.json().init(),
    }
}

/// Completes on SIGTERM or SIGINT.
async fn shutdown_signal() {
    use tokio::signal::unix::{signal, SignalKind};
    let mut term = signal(SignalKind::terminate()).expect("install SIGTERM handler");
    let mut int = signal(SignalKind::interrupt()).expect("install SIGINT handler");
    tokio::select! {
        _ = term.recv() => tracing::info!("SIGTERM: finishing the batch in hand"),
        _ = int.recv() => tracing::info!("SIGINT: finishing the batch in hand"),
    }
}
