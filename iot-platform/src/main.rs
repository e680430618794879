//! `iot-platform`: serves the current mandate of every connection, folded from Kafka
//! (`serve`, the default), or rebuilds the read model from the log (`rebuild`).

use clap::{Parser, Subcommand};
use iot_platform::configuration::Settings;
use iot_platform::rebuild::rebuild;
use iot_platform::startup::Application;

#[derive(Parser)]
#[command(version, about = "The IoT platform's mandates read model")]
struct Cli {
    #[command(subcommand)]
    command: Option<Command>,
}

#[derive(Subcommand)]
enum Command {
    /// Fold connection-mandates into the read model and serve it over HTTP (the default).
    Serve,
    /// Build the next generation from the start of the topic while the current one keeps
    /// answering; switch reads to it once caught up and drop the old one. Refuses to switch
    /// while the new generation has dead-lettered records.
    Rebuild {
        /// Switch even though the new generation dead-lettered records.
        #[arg(long)]
        accept_dead_letters: bool,
    },
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    // Logs (`RUST_LOG`), span export when configured by environment, `GET /metrics`.
    let _telemetry = telemetry::init("iot-platform");
    let settings = Settings::load()?;
    match Cli::parse().command.unwrap_or(Command::Serve) {
        Command::Serve => {
            let app = Application::build(settings).await?;
            app.run_until_stopped(shutdown_signal()).await?;
        }
        Command::Rebuild {
            accept_dead_letters,
        } => {
            let report = rebuild(&settings, true, accept_dead_letters).await?;
            println!(
                "generation {} → {}: {} events applied, reads switched after {:.2} s",
                report.from,
                report.to,
                report.applied,
                report.time_to_switch.as_secs_f64()
            );
        }
    }
    Ok(())
}

/// SIGTERM (service managers, `kill`) or Ctrl-C.
async fn shutdown_signal() {
    let ctrl_c = async {
        let _ = tokio::signal::ctrl_c().await;
    };
    #[cfg(unix)]
    let terminate = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut signal) => {
                signal.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    #[cfg(not(unix))]
    let terminate = std::future::pending::<()>();
    tokio::select! {
        () = ctrl_c => {},
        () = terminate => {},
    }
    tracing::info!("shutting down");
}
