//! The `queries` binary.
//!
//! - `queries run` (default): the continuous-query engine ([`queries::runner`]), with
//!   `GET /metrics` on `QUERIES_METRICS_ADDR` (127.0.0.1:3019).
//! - `queries catalogue`: the catalogue read model and service ([`queries::catalogue`]).
//!   Every service answers `GET /metrics` (Prometheus text) next to its routes.
//! - `queries notifications`: the stock notifications service ([`queries::notifications`]).
//! - `queries dashboard`: the live dashboard ([`queries::dashboard`]).
//! - `queries show <query>`: the current result of a query, read back from its topic.

use clap::{Parser, Subcommand};
use queries::settings::Settings;

#[derive(Parser)]
#[command(about = "Continuous queries over the commerce change topics")]
struct Cli {
    #[command(subcommand)]
    command: Option<Command>,
}

#[derive(Subcommand)]
enum Command {
    /// Maintain every declared query and publish its result changes.
    Run,
    /// Fold the product catalogue into its read model and serve it (127.0.0.1:3014).
    Catalogue,
    /// Serve the low- and critical-stock notifications (127.0.0.1:3015).
    Notifications,
    /// Serve the live dashboard (127.0.0.1:3016).
    Dashboard,
    /// Print a query's current result (one JSON row per line), read back from its topic.
    Show { query: String },
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    let command = cli.command.unwrap_or(Command::Run);
    // Logs (`RUST_LOG`), span export when configured by environment, the metrics registry.
    let _telemetry = telemetry::init(match command {
        Command::Catalogue => "catalogue",
        Command::Notifications => "notifications",
        Command::Dashboard => "dashboard",
        Command::Run | Command::Show { .. } => "queries",
    });
    match command {
        Command::Catalogue => {
            let settings = topics::settings::load("catalogue")?;
            return queries::catalogue::serve(settings, shutdown()).await;
        }
        Command::Notifications => {
            let settings = topics::settings::load("notifications")?;
            return queries::notifications::serve(settings, shutdown()).await;
        }
        Command::Dashboard => {
            let settings = topics::settings::load("dashboard")?;
            return queries::dashboard::serve(settings, shutdown()).await;
        }
        _ => {}
    }
    let settings: Settings = topics::settings::load("queries")?;
    match command {
        Command::Catalogue | Command::Notifications | Command::Dashboard => {}
        Command::Run => queries::runner::run(settings, shutdown()).await?,
        Command::Show { query } => {
            let query = queries::declared::find(&query)
                .ok_or_else(|| anyhow::anyhow!("no query named {query}"))?;
            let schemas = queries::avro::Schemas::new(topics::registry::Registry::new(
                &settings.kafka.schema_registry_url,
            ));
            let changes = queries::results::read_all(
                &settings.kafka,
                &schemas,
                query,
                &settings.result_topic(query),
            )
            .await?;
            let (answer, _) = queries::results::fold(&changes);
            let mut rows: Vec<_> = answer.into_iter().collect();
            rows.sort();
            for (_, row) in rows {
                println!("{}", queries::row::row_json(query.columns, &row));
            }
        }
    }
    Ok(())
}

/// Ctrl-C or SIGTERM.
async fn shutdown() {
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
        .expect("install the SIGTERM handler");
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {}
        _ = term.recv() => {}
    }
}
