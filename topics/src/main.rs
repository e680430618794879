//! `topics`: apply the platform's topics and schemas, and inspect them.

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::{bail, Context};
use clap::{Parser, Subcommand};
use topics::apply::apply;
use topics::cluster::Cluster;
use topics::groups::{self, PartitionLag, ResetTarget};
use topics::registry::Registry;
use topics::settings::{self, KafkaSettings};
use topics::spec::{self, TopicSpec};

#[derive(Parser)]
#[command(
    version,
    about = "Apply and inspect the platform's Kafka topics and Avro schemas"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Create missing topics and register their value schemas; refuse a schema that breaks
    /// BACKWARD compatibility.
    Apply {
        /// Apply a proposed value schema for TOPIC from FILE instead of the built-in one.
        #[arg(long = "schema", value_name = "TOPIC=FILE")]
        schemas: Vec<String>,
    },
    /// List the topics of the catalogue and of the cluster.
    List,
    /// Show a topic's spec, partitions, configs and registered schema.
    Describe { topic: String },
    /// Show a consumer group's committed offset, log end offset and lag per partition.
    Lag {
        group: String,
        /// Only this topic (default: every topic the group has committed offsets on).
        #[arg(long)]
        topic: Option<String>,
    },
    /// Move a consumer group's committed offsets; refused while the group has members.
    Reset {
        group: String,
        /// `earliest`, `latest`, or the first record at or after a time (RFC 3339 like
        /// 2026-11-21T10:00:00Z, or epoch milliseconds).
        #[arg(long, value_name = "earliest|latest|TIME")]
        to: ResetTarget,
        /// Only this topic (default: every topic the group has committed offsets on; required
        /// when it has none).
        #[arg(long)]
        topic: Option<String>,
    },
}

fn main() -> ExitCode {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "warn".into()),
        )
        .with_writer(std::io::stderr)
        .init();
    let cli = Cli::parse();
    let runtime = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(runtime) => runtime,
        Err(e) => {
            eprintln!("topics: cannot start the async runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(run(cli)) {
        Ok(code) => code,
        Err(e) => {
            // One line, so scripts and people see the cause at once.
            eprintln!("topics: {}", one_line(&e));
            ExitCode::FAILURE
        }
    }
}

/// The error and its causes on one line, skipping a cause its parent already quotes.
fn one_line(error: &anyhow::Error) -> String {
    let mut line = error.to_string();
    for cause in error.chain().skip(1) {
        let cause = cause.to_string();
        if !line.contains(&cause) {
            line = format!("{line}: {cause}");
        }
    }
    line
}

async fn run(cli: Cli) -> anyhow::Result<ExitCode> {
    let settings: KafkaSettings = settings::load("topics")?;
    let registry = Registry::new(&settings.schema_registry_url);
    let cluster = Cluster::connect(&settings)?;
    match cli.command {
        Command::Apply { schemas } => {
            let specs = with_proposed_schemas(&schemas)?;
            let report = apply(&cluster, &registry, &specs).await?;
            print!("{report}");
            let drifted: Vec<&str> = report.drifted().map(|(name, _)| name).collect();
            if !drifted.is_empty() {
                eprintln!(
                    "topics: {} differ from their spec: {}",
                    drifted.len(),
                    drifted.join(", ")
                );
                return Ok(ExitCode::FAILURE);
            }
            if report.changed_nothing() {
                println!("nothing to change");
            }
        }
        Command::List => {
            let existing = cluster.topic_names()?;
            for spec in spec::CATALOGUE {
                let state = if existing.iter().any(|name| name == spec.name) {
                    "present"
                } else {
                    "MISSING"
                };
                println!("{:<32} {state:<8} catalogue", spec.name);
            }
            for name in existing.iter().filter(|name| spec::find(name).is_none()) {
                println!("{name:<32} present  not in catalogue");
            }
        }
        Command::Describe { topic } => describe(&cluster, &registry, &topic).await?,
        Command::Lag { group, topic } => lag(&settings, &group, topic.as_deref())?,
        Command::Reset { group, to, topic } => reset(&settings, &group, topic.as_deref(), to)?,
    }
    Ok(ExitCode::SUCCESS)
}

/// The catalogue, with the value schemas named on the command line swapped in.
fn with_proposed_schemas(overrides: &[String]) -> anyhow::Result<Vec<TopicSpec>> {
    let mut specs = spec::CATALOGUE.to_vec();
    for entry in overrides {
        let Some((topic, file)) = entry.split_once('=') else {
            bail!("--schema takes TOPIC=FILE, got {entry:?}");
        };
        let Some(spec) = specs.iter_mut().find(|s| s.name == topic) else {
            bail!("--schema names {topic}, which is not in the catalogue");
        };
        let path = PathBuf::from(file);
        let text = std::fs::read_to_string(&path)
            .with_context(|| format!("cannot read {}", path.display()))?;
        apache_avro::Schema::parse_str(&text)
            .with_context(|| format!("{} is not a valid Avro schema", path.display()))?;
        // The CLI applies once and exits; the spec wants the schema for the whole run.
        spec.value_schema = Some(Box::leak(text.into_boxed_str()));
    }
    Ok(specs)
}

async fn describe(cluster: &Cluster, registry: &Registry, topic: &str) -> anyhow::Result<()> {
    let Some(state) = cluster.topic(topic).await? else {
        bail!("topic {topic} does not exist");
    };
    println!("topic              {}", state.name);
    if let Some(spec) = spec::find(topic) {
        println!(
            "spec               {} partitions, replication factor {}, cleanup.policy {}, key {:?}",
            spec.partitions, spec.replication_factor, spec.cleanup_policy, spec.key
        );
    } else {
        println!("spec               not in the catalogue");
    }
    println!("replication factor {}", state.replication_factor());
    for key in ["cleanup.policy", "retention.ms", "min.insync.replicas"] {
        if let Some(value) = state.configs.get(key) {
            println!("{key:<18} {value}");
        }
    }
    println!("partition  leader  replicas  in-sync  low  high");
    for p in &state.partitions {
        println!(
            "{:<10} {:<7} {:<9} {:<8} {:<4} {}",
            p.id,
            p.leader,
            format!("{:?}", p.replicas),
            format!("{:?}", p.in_sync),
            p.low_watermark,
            p.high_watermark
        );
    }
    let subject = spec::value_subject(topic);
    match registry.latest(&subject).await? {
        Some(latest) => println!(
            "value schema       {subject} version {} (id {})",
            latest.version, latest.id
        ),
        None => println!("value schema       {subject} not registered"),
    }
    Ok(())
}

fn lag(settings: &KafkaSettings, group: &str, topic: Option<&str>) -> anyhow::Result<()> {
    let lags = groups::lag(settings, group, topic)?;
    let state = groups::state(settings, group)?;
    println!(
        "group     {group} ({}, {} members)",
        state.state,
        state.members.len()
    );
    for (i, chunk) in lags.chunk_by(|a, b| a.topic == b.topic).enumerate() {
        if i > 0 {
            println!();
        }
        println!("topic     {}", chunk[0].topic);
        let mut rows = vec![[
            "partition".to_owned(),
            "committed".to_owned(),
            "end".to_owned(),
            "lag".to_owned(),
        ]];
        rows.extend(chunk.iter().map(|p: &PartitionLag| {
            [
                p.partition.to_string(),
                p.committed
                    .map_or_else(|| "-".to_owned(), |c| c.to_string()),
                p.high_watermark.to_string(),
                p.lag.to_string(),
            ]
        }));
        let total: i64 = chunk.iter().map(|p| p.lag).sum();
        rows.push([
            "total".to_owned(),
            String::new(),
            String::new(),
            total.to_string(),
        ]);
        print_columns(&rows);
    }
    Ok(())
}

fn reset(
    settings: &KafkaSettings,
    group: &str,
    topic: Option<&str>,
    target: ResetTarget,
) -> anyhow::Result<()> {
    let changes = match groups::reset(settings, group, topic, target) {
        Err(e @ topics::Error::NoCommittedOffsets { topic: None, .. }) => {
            bail!("{e}; name the topic to reset with --topic")
        }
        result => result?,
    };
    println!("reset group {group} to {target}");
    for (i, chunk) in changes.chunk_by(|a, b| a.topic == b.topic).enumerate() {
        if i > 0 {
            println!();
        }
        println!("topic {}", chunk[0].topic);
        for change in chunk {
            let old = change
                .old
                .map_or_else(|| "-".to_owned(), |old| old.to_string());
            let note = if change.old == Some(change.new) {
                "  (unchanged)"
            } else {
                ""
            };
            println!("  {}: {old} → {}{note}", change.partition, change.new);
        }
    }
    Ok(())
}

/// Left-aligned columns as wide as their widest cell, the last one unpadded.
fn print_columns<const N: usize>(rows: &[[String; N]]) {
    let mut widths = [0; N];
    for row in rows {
        for (width, cell) in widths.iter_mut().zip(row) {
            *width = (*width).max(cell.chars().count());
        }
    }
    for row in rows {
        let mut line = String::new();
        for (i, cell) in row.iter().enumerate() {
            if i + 1 < N {
                line.push_str(&format!("{cell:<width$}  ", width = widths[i]));
            } else {
                line.push_str(cell);
            }
        }
        println!("{}", line.trim_end());
    }
}
