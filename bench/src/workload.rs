//! What the benchmarks share: a topic pre-filled with mandate events, a bare consumer of it
//! (the baseline), and the IoT platform's projector folding it into a chosen store.

use std::collections::BTreeMap;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use anyhow::bail;
use iot_platform::configuration::Settings;
use iot_platform::generations;
use projectors::store::any::StoreKind;
use rdkafka::admin::AdminOptions;
use rdkafka::consumer::{BaseConsumer, Consumer, StreamConsumer};
use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use rdkafka::producer::{BaseProducer, BaseRecord, Producer};
use tokio::sync::oneshot;
use topics::cluster::Cluster;
use topics::codec::Encoder;
use topics::events::{ConnectionMandateChanged, MandateLevel};
use topics::registry::Registry;
use topics::settings::KafkaSettings;
use topics::spec::{CleanupPolicy, TopicSpec, CONNECTION_MANDATES};
use uuid::Uuid;

/// A fresh 4-partition topic of `events` mandate events over `connections` connections.
pub struct Workload {
    pub topic: String,
    pub events: usize,
    pub fill_time: Duration,
    /// Per partition, the high watermark after the fill: the next offset to read once every
    /// event is taken.
    pub ends: BTreeMap<i32, i64>,
}

impl Workload {
    pub async fn prefill(
        kafka: &KafkaSettings,
        events: usize,
        connections: usize,
    ) -> anyhow::Result<Self> {
        let topic = format!("bench-mandates-{}", Uuid::new_v4().simple());
        let spec = TopicSpec {
            name: Box::leak(topic.clone().into_boxed_str()),
            cleanup_policy: CleanupPolicy::Delete,
            ..CONNECTION_MANDATES
        };
        Cluster::connect(kafka)?.create(&spec, 1).await?;
        let encoder = Encoder::<ConnectionMandateChanged>::connect(&Registry::new(
            &kafka.schema_registry_url,
        ))
        .await?;
        let producer: BaseProducer = topics::kafka::producer_config(kafka)
            .set("queue.buffering.max.messages", "500000")
            .create()?;
        let started = Instant::now();
        for i in 0..events {
            let event = ConnectionMandateChanged {
                event_id: Uuid::new_v4(),
                connection_id: format!("bench-{}", i % connections).parse()?,
                customer_id: (i % connections) as i64,
                mandate: MandateLevel::from_level((i % 3) as u8).unwrap_or(MandateLevel::None),
                occurred_at: 1_763_750_000_000 + i as i64,
            };
            let payload = encoder.encode(&event)?;
            let mut record = BaseRecord::to(&topic)
                .key(event.connection_id.as_str())
                .payload(&payload);
            loop {
                match producer.send(record) {
                    Ok(()) => break,
                    Err((KafkaError::MessageProduction(RDKafkaErrorCode::QueueFull), returned)) => {
                        record = returned;
                        producer.poll(Duration::from_millis(5));
                    }
                    Err((e, _)) => return Err(e.into()),
                }
            }
        }
        producer.flush(Duration::from_secs(120))?;
        let fill_time = started.elapsed();
        let consumer: BaseConsumer =
            topics::kafka::consumer_config(kafka, &format!("{topic}-ends")).create()?;
        let ends = tokio::task::spawn_blocking({
            let topic = topic.clone();
            move || {
                (0..CONNECTION_MANDATES.partitions)
                    .map(|partition| {
                        let (_, high) = consumer.fetch_watermarks(
                            &topic,
                            partition,
                            Duration::from_secs(10),
                        )?;
                        anyhow::Ok((partition, high))
                    })
                    .collect::<anyhow::Result<BTreeMap<_, _>>>()
            }
        })
        .await??;
        Ok(Self {
            topic,
            events,
            fill_time,
            ends,
        })
    }

    /// Settings of an IoT platform of the benchmark's own over this topic, folding it as a
    /// rebuild does (its batch cap).
    pub fn iot_settings(&self, store: StoreKind) -> anyhow::Result<Settings> {
        let run = Uuid::new_v4().simple();
        let settings = Settings::load()?;
        Ok(Settings {
            iot_store: store,
            iot_topic: self.topic.clone(),
            iot_group: format!("bench-{run}"),
            iot_namespace: format!("bench:{run}"),
            iot_max_batch: settings.iot_rebuild_max_batch,
            ..settings
        })
    }

    /// Reads every record with the platform's consumer settings, decoding nothing.
    pub async fn bare_consumer(&self, kafka: &KafkaSettings) -> anyhow::Result<Duration> {
        let group = format!("{}-bare-{}", self.topic, Uuid::new_v4().simple());
        let consumer: StreamConsumer = topics::kafka::consumer_config(kafka, &group).create()?;
        let started = Instant::now();
        consumer.subscribe(&[&self.topic])?;
        let mut seen = 0;
        while seen < self.events {
            match tokio::time::timeout(Duration::from_secs(30), consumer.recv()).await {
                Ok(Ok(_)) => seen += 1,
                Ok(Err(e)) => return Err(e.into()),
                Err(_) => bail!("bare consumer stalled at {seen} of {}", self.events),
            }
        }
        Ok(started.elapsed())
    }

    /// Runs the IoT platform's projector over the topic into generation 1 of `settings`' store,
    /// until it has taken every event; the store is cleared afterwards. Returns the time it
    /// took and the time until its first event applied (joining the group, positioning).
    pub async fn projector(&self, settings: &Settings) -> anyhow::Result<(Duration, Duration)> {
        let store = generations::open_store(settings, generations::FIRST).await?;
        let projector = generations::projector(settings, generations::FIRST, store.clone())?;
        let status = projector.status();
        let (stop, stopped) = oneshot::channel::<()>();
        let started = Instant::now();
        let task = tokio::spawn(projector.run(async move {
            let _ = stopped.await;
        }));
        let deadline = started + Duration::from_secs(900);
        let mut first = None;
        let took = loop {
            let taken = status.applied.load(Ordering::Relaxed)
                + status.dead_lettered.load(Ordering::Relaxed);
            if taken > 0 && first.is_none() {
                first = Some(started.elapsed());
            }
            // Or every partition read to its end while idle: a store write that timed out
            // but had applied is not counted in `applied` (the projector folds again from
            // what the store has), so the count alone can stay short of `events`.
            if taken as usize >= self.events || self.read_to_end(&status.idle_positions()) {
                break (started.elapsed(), first.unwrap_or_default());
            }
            if Instant::now() > deadline || task.is_finished() {
                bail!("projector took only {taken} of {} events", self.events);
            }
            tokio::time::sleep(Duration::from_millis(5)).await;
        };
        let _ = stop.send(());
        task.await??;
        projectors::Store::clear(&store).await?;
        Ok(took)
    }

    /// Whether `idle` (a projector's idle positions) stands at the end of every partition.
    fn read_to_end(&self, idle: &BTreeMap<i32, i64>) -> bool {
        self.ends
            .iter()
            .all(|(partition, end)| idle.get(partition).is_some_and(|next| next >= end))
    }

    pub async fn delete(self, kafka: &KafkaSettings) -> anyhow::Result<()> {
        let admin = topics::kafka::admin_client(kafka)?;
        admin
            .delete_topics(&[&self.topic], &AdminOptions::new())
            .await?;
        Ok(())
    }
}

/// Pre-fills a topic, then runs `rounds` rounds of the bare consumer and the projector into
/// each store, one after the other, so each projector run is compared with a bare read
/// measured moments before it. Prints every round and a summary: median and range of the
/// rates and of the ratios to the same round's bare consumer. Returns the topic for further
/// runs; the caller deletes it.
pub async fn fold_against_bare(
    kafka: &KafkaSettings,
    title: &str,
    events: usize,
    connections: usize,
    rounds: usize,
    stores: &[(&str, StoreKind)],
) -> anyhow::Result<Workload> {
    println!(
        "{title}: a pre-filled topic of {events} events ({connections} connections, 4 partitions), {rounds} alternating rounds"
    );
    let workload = Workload::prefill(kafka, events, connections).await?;
    println!("pre-filled in {:.1} s", workload.fill_time.as_secs_f64());
    println!("| round | consumer | seconds | events/s | vs bare | process CPU s | first event s |");
    println!("|---|---|---|---|---|---|---|");
    let rate = |took: Duration| events as f64 / took.as_secs_f64();
    let mut bare_rates = Vec::with_capacity(rounds);
    let mut folds: Vec<(Vec<f64>, Vec<f64>)> = vec![(Vec::new(), Vec::new()); stores.len()];
    for round in 1..=rounds {
        let cpu = process_cpu();
        let bare = workload.bare_consumer(kafka).await?;
        println!(
            "| {round} | bare rdkafka StreamConsumer, no decoding | {:.2} | {:.0} | 1.00 | {:.1} | - |",
            bare.as_secs_f64(),
            rate(bare),
            process_cpu() - cpu
        );
        bare_rates.push(rate(bare));
        for ((name, store), (rates, ratios)) in stores.iter().zip(&mut folds) {
            let cpu = process_cpu();
            let (took, first) = workload.projector(&workload.iot_settings(*store)?).await?;
            let ratio = bare.as_secs_f64() / took.as_secs_f64();
            println!(
                "| {round} | {name} | {:.2} | {:.0} | {ratio:.2} | {:.1} | {:.2} |",
                took.as_secs_f64(),
                rate(took),
                process_cpu() - cpu,
                first.as_secs_f64()
            );
            rates.push(rate(took));
            ratios.push(ratio);
        }
    }
    println!("\nsummary over {rounds} rounds: median [min–max]");
    println!("| consumer | events/s | vs bare (same round) |");
    println!("|---|---|---|");
    println!(
        "| bare rdkafka StreamConsumer, no decoding | {} | 1.00 |",
        spread(&bare_rates, 0)
    );
    for ((name, _), (rates, ratios)) in stores.iter().zip(&folds) {
        println!("| {name} | {} | {} |", spread(rates, 0), spread(ratios, 2));
    }
    Ok(workload)
}

/// `median [min–max]` of `values`, with `decimals` decimals.
pub fn spread(values: &[f64], decimals: usize) -> String {
    let mut sorted = values.to_vec();
    sorted.sort_by(f64::total_cmp);
    match sorted.as_slice() {
        [] => "-".to_owned(),
        [.., last] => {
            let middle = sorted.len() / 2;
            let median = if sorted.len().is_multiple_of(2) {
                (sorted[middle - 1] + sorted[middle]) / 2.0
            } else {
                sorted[middle]
            };
            format!(
                "{median:.decimals$} [{:.decimals$}–{last:.decimals$}]",
                sorted[0]
            )
        }
    }
}

/// CPU seconds (user + system) this process has used so far, from `/proc/self/stat`; 0 where
/// that is not readable. Shows whether a run was CPU-bound or waiting.
pub fn process_cpu() -> f64 {
    let Ok(stat) = std::fs::read_to_string("/proc/self/stat") else {
        return 0.0;
    };
    // Fields after the command name (which may hold spaces) start at the state, field 3;
    // utime and stime are fields 14 and 15, in clock ticks (100 per second on Linux).
    let Some((_, rest)) = stat.rsplit_once(')') else {
        return 0.0;
    };
    let fields: Vec<&str> = rest.split_whitespace().collect();
    let ticks = |i: usize| {
        fields
            .get(i)
            .and_then(|f| f.parse::<f64>().ok())
            .unwrap_or(0.0)
    };
    (ticks(11) + ticks(12)) / 100.0
}
