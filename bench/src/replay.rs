//! Replaying a read model from the log: the IoT projector folding a pre-filled topic into Redis
//! and into MySQL against a bare rdkafka consumer of the same topic, and a rebuild's time from
//! start until reads switch to the new generation.

use projectors::store::any::StoreKind;
use topics::settings::KafkaSettings;

use crate::workload::fold_against_bare;

#[derive(clap::Args)]
pub struct Options {
    /// Events pre-filled into the topic.
    #[arg(long, default_value_t = 1_000_000)]
    events: usize,
    /// Distinct connections those events are spread over.
    #[arg(long, default_value_t = 10_000)]
    connections: usize,
    /// Rounds of bare consumer and projectors, one after the other.
    #[arg(long, default_value_t = 3)]
    rounds: usize,
    /// Stores to replay into.
    #[arg(long, value_delimiter = ',', default_value = "redis,mysql")]
    stores: Vec<StoreKind>,
    /// Skip the rebuild-while-serving measurement.
    #[arg(long)]
    no_rebuild: bool,
}

pub async fn run(options: Options) -> anyhow::Result<()> {
    let kafka: KafkaSettings = topics::settings::load("bench")?;
    let workload = fold_against_bare(
        &kafka,
        "replay",
        options.events,
        options.connections,
        options.rounds,
        &options
            .stores
            .iter()
            .map(|store| match store {
                StoreKind::Redis => ("IoT projector → Redis", *store),
                StoreKind::Mysql => ("IoT projector → MySQL (MariaDB)", *store),
            })
            .collect::<Vec<_>>(),
    )
    .await?;
    if options.no_rebuild {
        workload.delete(&kafka).await?;
        return Ok(());
    }

    println!("\nrebuild while serving: generation 1 → 2 from the start of the topic (Redis)");
    let settings = workload.iot_settings(StoreKind::Redis)?;
    let report = iot_platform::rebuild::rebuild(&settings, false, false).await?;
    println!("| events applied | time to switch s | events/s |");
    println!("|---|---|---|");
    println!(
        "| {} | {:.2} | {:.0} |",
        report.applied,
        report.time_to_switch.as_secs_f64(),
        report.applied as f64 / report.time_to_switch.as_secs_f64()
    );
    let new_generation = iot_platform::generations::open_store(&settings, report.to).await?;
    projectors::Store::clear(&new_generation).await?;
    workload.delete(&kafka).await?;
    Ok(())
}
