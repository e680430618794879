//! `commerce <service>`: runs one of the four commerce services as its own process;
//! `commerce watch`: prints a domain event once it arrives on its topic.

use anyhow::Context;
use clap::{Parser, Subcommand};
use commerce::startup::Application;
use commerce::watch::Watch;
use commerce::Service;

#[derive(Parser)]
#[command(about = "The commerce services; each runs as its own process with its own database")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// The products service (default 127.0.0.1:3010).
    Products,
    /// The customers service (default 127.0.0.1:3011).
    Customers,
    /// The orders service (default 127.0.0.1:3012); reserves stock at the products service.
    Orders,
    /// The reviews service (default 127.0.0.1:3013).
    Reviews,
    /// The users service (default 127.0.0.1:3017); its query API reads a MySQL read model.
    Users,
    /// The delivery service (default 127.0.0.1:3018): packages of shipped orders, assigned
    /// to free delivery agents.
    Delivery,
    /// Wait for an order or stock event and print it decoded.
    Watch(Watch),
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let _telemetry = commerce::telemetry::init();
    let cli = Cli::parse();
    let settings = commerce::configuration::load().context("loading the commerce settings")?;
    let service = match cli.command {
        Command::Products => Service::Products,
        Command::Customers => Service::Customers,
        Command::Orders => Service::Orders,
        Command::Reviews => Service::Reviews,
        Command::Users => Service::Users,
        Command::Delivery => Service::Delivery,
        Command::Watch(watch) => return watch.run(&settings.kafka).await,
    };
    let app = Application::build(settings, service).await?;
    app.run_until_stopped().await
}
