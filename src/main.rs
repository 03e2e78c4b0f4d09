//! The `switchboard` binary: parses the command line and configuration, sets up tracing and
//! metrics, and runs a role until SIGTERM/SIGINT. No logic lives here.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};
use switchboard::config::Config;
use switchboard::{start, Role};
use tokio_util::sync::CancellationToken;
use tracing_subscriber::EnvFilter;

/// jemalloc rather than glibc's malloc: less CPU on the ingest path, and memory freed after a
/// wave of connections goes back to the system (BENCHMARKS.md, "Issue 12: allocator").
#[global_allocator]
static ALLOCATOR: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;

#[derive(Parser)]
#[command(
    version,
    about = "Self-hosted realtime + analytics pipeline (Pusher and Segment compatible)"
)]
struct Cli {
    /// TOML configuration file; the environment overrides it.
    #[arg(long, global = true, value_name = "FILE")]
    config: Option<PathBuf>,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand, Clone, Copy)]
enum Command {
    /// Gateway, dispatcher and worker in one process.
    Serve,
    /// Gateway and dispatcher (scale out behind a load balancer).
    Gateway,
    /// Consumer worker (scale out as competing consumers).
    Worker,
    /// Create the database if missing and apply migrations.
    Migrate,
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    tracing_subscriber::fmt()
        .with_env_filter(
            EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info")),
        )
        .init();
    let runtime = tokio::runtime::Runtime::new().expect("the tokio runtime starts");
    match runtime.block_on(run(cli)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            // Each cause once: many errors print their source and also return it.
            eprintln!("error: {}", ingest::error::Chain(error.as_ref()));
            ExitCode::FAILURE
        }
    }
}

async fn run(cli: Cli) -> anyhow::Result<()> {
    let config = Config::load(cli.config.as_deref())?;
    let role = match cli.command {
        Command::Migrate => {
            consumer_worker::prepare_database(
                &config.database_url,
                config.worker.partition_days_ahead,
            )
            .await?;
            tracing::info!("database is migrated");
            return Ok(());
        }
        Command::Serve => Role::Serve,
        Command::Gateway => Role::Gateway,
        Command::Worker => Role::Worker,
    };
    switchboard::admin::metrics_handle();
    let shutdown = CancellationToken::new();
    let running = start(role, config, shutdown.clone()).await?;
    wait_for_signal().await?;
    tracing::info!("shutting down");
    shutdown.cancel();
    anyhow::ensure!(running.finished().await, "shutdown did not finish in time");
    tracing::info!("stopped");
    Ok(())
}

async fn wait_for_signal() -> anyhow::Result<()> {
    let mut terminate = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
    tokio::select! {
        result = tokio::signal::ctrl_c() => result?,
        _ = terminate.recv() => {}
    }
    Ok(())
}
