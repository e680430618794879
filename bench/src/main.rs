//! `bench`: measurements of the platform against the local infrastructure
//! (`scripts/infra up`). Every benchmark runs its baseline in the same run and prints a table.
//! Load loops are bounded and talk to 127.0.0.1 only.
//!
//! - [`mandates`]: the CQRS loop: CRM API change → visible in the IoT platform, and the IoT
//!   projector's fold rate against a bare rdkafka consumer of the same topic.

mod mandates;

use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(about = "Benchmarks of the platform; run `scripts/infra up` first")]
struct Cli {
    #[command(subcommand)]
    benchmark: Benchmark,
}

#[derive(Subcommand)]
enum Benchmark {
    /// Mandate changes through the CRM until visible in the IoT platform, and the IoT
    /// projector folding a pre-filled topic vs a bare consumer.
    Mandates(mandates::Options),
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    match Cli::parse().benchmark {
        Benchmark::Mandates(options) => mandates::run(options).await,
    }
}
