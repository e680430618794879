//! `bench`: measurements of the platform against the local infrastructure
//! (`scripts/infra up`). Every benchmark runs its baseline in the same run and prints a table.
//! Load loops are bounded and talk to 127.0.0.1 only.
//!
//! - [`connector`]: the CDC connector against pg_recvlogical and COPY (the physical limits)
//!   and, when fetched, a tuned Debezium.
//! - [`mandates`]: the CQRS loop: CRM API change → visible in the IoT platform, and the IoT
//!   projector's fold rate against a bare rdkafka consumer of the same topic.
//! - [`orders`]: orders through the commerce services against a bare conditional UPDATE loop
//!   on the same PostgreSQL, 0 oversold.
//! - [`queries`]: the continuous-query engine: a review posted until the catalogue shows it,
//!   and review changes applied incrementally against recomputing the aggregate with SQL.
//! - [`replay`]: rebuilding read models from the log into Redis and MySQL, and a rebuild's
//!   time to switch.
//! - [`service`]: a commerce service run in-process (orders, queries).
//! - [`workload`]: the pre-filled topic, the bare-consumer baseline and the projector runs.

mod connector;
mod mandates;
mod orders;
mod queries;
mod replay;
mod service;
mod workload;

use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(about = "Benchmarks of the platform; run `scripts/infra up` first")]
struct Cli {
    #[command(subcommand)]
    benchmark: Benchmark,
    /// Install the services' telemetry first, as their `main` does (`telemetry::init`): logs
    /// to stderr after `RUST_LOG`, the Prometheus recorder, and spans only when
    /// `OTEL_EXPORTER_*` names an exporter. Without it the in-process services run with no
    /// subscriber and no recorder.
    #[arg(long, global = true)]
    telemetry: bool,
}

#[derive(Subcommand)]
enum Benchmark {
    /// Mandate changes through the CRM until visible in the IoT platform, and the IoT
    /// projector folding a pre-filled topic vs a bare consumer.
    Mandates(mandates::Options),
    /// Replay of a pre-filled topic into Redis and MySQL vs a bare consumer, and the rebuild's
    /// time to switch.
    Replay(replay::Options),
    /// Orders/s through the commerce services at concurrency 64 vs a bare conditional UPDATE
    /// loop on the same PostgreSQL, alternating rounds, 0 oversold.
    Orders(orders::Options),
    /// The CDC connector's streaming and snapshot rates against pg_recvlogical and a bare COPY
    /// on the same PostgreSQL, commit-to-Kafka latency, RSS and CPU; Debezium with
    /// --debezium-home.
    Connector(connector::Options),
    /// A review through the reviews service, connector, query engine and catalogue until
    /// visible (p50/p99), and review changes applied incrementally by the engine vs an SQL
    /// recompute of the aggregate per change, same run (ratio).
    Queries(queries::Options),
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    let _telemetry = cli.telemetry.then(|| telemetry::init("bench"));
    match cli.benchmark {
        Benchmark::Mandates(options) => mandates::run(options).await,
        Benchmark::Replay(options) => replay::run(options).await,
        Benchmark::Orders(options) => orders::run(options).await,
        Benchmark::Connector(options) => connector::run(options).await,
        Benchmark::Queries(options) => queries::run(options).await,
    }
}
