//! `connector`: streams committed PostgreSQL row changes into Kafka as
//! Debezium-compatible events. The library crate holds the modules
//! (`config`, `pg`, `schema`, `value`, `envelope`, `publisher`, `snapshot`,
//! `stream`, `incremental`, `offsets`, `runner`, `error`); this binary only parses the
//! command line, sets up logging and signals, and prints one-line errors.

use std::path::PathBuf;

use clap::{Parser, Subcommand};
use connector::config::Config;
use connector::runner;

#[derive(Parser)]
#[command(
    version,
    about = "PostgreSQL logical replication → Kafka (Debezium envelope)"
)]
struct Cli {
    /// TOML configuration file (default: ./connector.toml if present).
    #[arg(short, long, env = "CONNECTOR_CONFIG")]
    config: Option<PathBuf>,
    #[command(subcommand)]
    command: Option<Command>,
}

#[derive(Subcommand)]
enum Command {
    /// Snapshot (per snapshot_mode) and stream changes (the default).
    Run,
    /// Show the slot (with lag in bytes) and the stored offset.
    Status,
    /// Drop the slot and forget the offset, so the next run re-snapshots.
    Reset,
}

fn main() {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| "info,pg_walstream=warn".into()),
        )
        .with_writer(std::io::stderr)
        .init();
    telemetry::prometheus::install_recorder("connector");
    let cli = Cli::parse();
    if let Err(e) = run(cli) {
        eprintln!(
            "connector: {}",
            connector::error::one_line(&format!("{e:#}"))
        );
        std::process::exit(1);
    }
}

#[tokio::main]
async fn run(cli: Cli) -> anyhow::Result<()> {
    let cfg = Config::load(cli.config.as_deref())?;
    match cli.command.unwrap_or(Command::Run) {
        Command::Run => {
            let (tx, rx) = tokio::sync::watch::channel(false);
            tokio::spawn(async move {
                let mut term =
                    tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
                        .expect("SIGTERM handler");
                tokio::select! {
                    _ = tokio::signal::ctrl_c() => {}
                    _ = term.recv() => {}
                }
                tracing::info!("stopping");
                let _ = tx.send(true);
            });
            runner::run(cfg, rx).await?;
        }
        Command::Status => print!("{}", runner::status(&cfg).await?),
        Command::Reset => {
            runner::reset(&cfg).await?;
            println!(
                "slot {} dropped and offset of {} cleared: the next run takes a new snapshot",
                cfg.slot_name, cfg.name
            );
        }
    }
    Ok(())
}
