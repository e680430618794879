//! The `queries` binary.
//!
//! - `queries run` (default): the continuous-query engine ([`queries::runner`]).
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
    /// Print a query's current result (one JSON row per line), read back from its topic.
    Show { query: String },
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| "info,rdkafka=warn".into()),
        )
        .with_writer(std::io::stderr)
        .init();
    let cli = Cli::parse();
    let settings: Settings = topics::settings::load("queries")?;
    match cli.command.unwrap_or(Command::Run) {
        Command::Run => {
            queries::runner::run(settings, async {
                let _ = tokio::signal::ctrl_c().await;
            })
            .await?
        }
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
