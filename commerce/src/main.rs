//! `commerce <service>`: runs one of the four commerce services as its own process.

use anyhow::Context;
use clap::Parser;
use commerce::startup::Application;
use commerce::Service;

#[derive(Parser)]
#[command(about = "The commerce services; each runs as its own process with its own database")]
struct Cli {
    #[arg(value_enum)]
    service: Service,
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    commerce::telemetry::init();
    let cli = Cli::parse();
    let settings = commerce::configuration::load().context("loading the commerce settings")?;
    let app = Application::build(settings, cli.service).await?;
    app.run_until_stopped().await
}
