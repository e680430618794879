//! (a) N mandate changes through the CRM API → time until all are visible in the IoT platform,
//! with the PUT-to-visible latency distribution, closed loop (N clients, each waiting for its
//! change to show) and open loop (changes sent at a fixed rate, latency from each change's
//! scheduled send time, so a slow response cannot hide queueing); (b) the IoT projector folding
//! a pre-filled topic vs a bare rdkafka consumer reading the same topic without decoding.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use futures::stream::{self, StreamExt};
use hdrhistogram::Histogram;
use iot_platform::generations::{self, ReadStore};
use projectors::store::any::StoreKind;
use rdkafka::consumer::{Consumer, StreamConsumer};
use rdkafka::{Message, Offset, TopicPartitionList};
use serde_json::{json, Value};
use sqlx::Connection;
use tokio::sync::{mpsc, oneshot};
use topics::settings::KafkaSettings;
use topics::spec::CONNECTION_MANDATES;
use uuid::Uuid;

use crate::workload::fold_against_bare;

#[derive(clap::Args)]
pub struct Options {
    /// Mandate changes made through the CRM API in part (a).
    #[arg(long, default_value_t = 1000)]
    changes: usize,
    /// Concurrent API clients in part (a).
    #[arg(long, default_value_t = 16)]
    concurrency: usize,
    /// Events pre-filled into the topic for part (b).
    #[arg(long, default_value_t = 1_000_000)]
    events: usize,
    /// Distinct connections those events are spread over.
    #[arg(long, default_value_t = 10_000)]
    connections: usize,
    /// Rounds of bare consumer and projector in part (b).
    #[arg(long, default_value_t = 3)]
    rounds: usize,
    /// Open-loop rates in part (a), changes per second.
    #[arg(long, value_delimiter = ',', default_value = "500,2000")]
    rates: Vec<u32>,
    /// How long each open-loop rate is held, seconds.
    #[arg(long, default_value_t = 3)]
    open_seconds: u32,
    /// The CRM API's PostgreSQL connections (`crm_max_connections`, default 10).
    #[arg(long)]
    crm_connections: Option<u32>,
}

pub async fn run(options: Options) -> anyhow::Result<()> {
    let run_id = Uuid::new_v4().simple().to_string();
    let kafka: KafkaSettings = topics::settings::load("bench")?;

    println!("(a) mandate changes through the CRM API until visible in the IoT platform");
    let api = api_to_visible(&run_id, &options).await?;
    println!("| loop | changes | offered | total s | changes/s | p50 ms | p99 ms | max ms | PUT answered p50 / p99 ms | in Kafka p50 / p99 ms |");
    println!("|---|---|---|---|---|---|---|---|---|---|");
    let ms = |micros: u64| micros as f64 / 1000.0;
    let quantiles = |h: &Option<Histogram<u64>>| {
        h.as_ref().map_or("-".to_owned(), |h| {
            format!(
                "{:.1} / {:.1}",
                ms(h.value_at_quantile(0.5)),
                ms(h.value_at_quantile(0.99))
            )
        })
    };
    for result in &api {
        let answered = quantiles(&result.answered_ms);
        let in_kafka = quantiles(&result.in_kafka_ms);
        println!(
            "| {} | {} | {} | {:.2} | {:.0} | {:.1} | {:.1} | {:.1} | {answered} | {in_kafka} |",
            result.mode,
            result.changes,
            result.offered,
            result.total.as_secs_f64(),
            result.changes as f64 / result.total.as_secs_f64(),
            ms(result.latency_ms.value_at_quantile(0.5)),
            ms(result.latency_ms.value_at_quantile(0.99)),
            ms(result.latency_ms.max()),
        );
    }
    println!("closed: PUT to visible over HTTP (polled every 2 ms); open: scheduled send time to visible in the read model's store (what GET /mandates serves; all pending changes checked with one MGET per ms), to the CRM's answer to the PUT and to the event on the topic");

    println!();
    let workload = fold_against_bare(
        &kafka,
        "(b) the IoT projector folding",
        options.events,
        options.connections,
        options.rounds,
        &[(
            "IoT projector: decode + fold + Redis + commit",
            StoreKind::Redis,
        )],
    )
    .await?;
    workload.delete(&kafka).await?;
    Ok(())
}

struct ApiResult {
    mode: &'static str,
    changes: usize,
    /// Concurrency (closed loop) or rate (open loop).
    offered: String,
    total: Duration,
    /// Microseconds from sending the request (closed loop) or its scheduled time (open loop)
    /// to the change being served.
    latency_ms: Histogram<u64>,
    /// Open loop: microseconds from a change's scheduled send time until the CRM answered
    /// its PUT, and until its event was on the topic (committed, as a `read_committed`
    /// consumer sees it), so each stretch of the way shows its own queueing.
    answered_ms: Option<Histogram<u64>>,
    in_kafka_ms: Option<Histogram<u64>>,
}

/// A service running in this process until its stop sender fires.
struct Running {
    base_url: String,
    stop: oneshot::Sender<()>,
    task: tokio::task::JoinHandle<anyhow::Result<()>>,
}

impl Running {
    async fn stop(self) -> anyhow::Result<()> {
        let _ = self.stop.send(());
        self.task.await?
    }
}

async fn api_to_visible(run_id: &str, options: &Options) -> anyhow::Result<Vec<ApiResult>> {
    let seed = std::env::temp_dir().join(format!("bench-seed-{run_id}.csv"));
    std::fs::write(
        &seed,
        "id,firstName,lastName,city,connectionId,connectionMandate\n",
    )?;
    let mut crm_settings = crm::configuration::load()?;
    crm_settings.crm_database = format!("crm_bench_{run_id}");
    crm_settings.crm_listen_addr = "127.0.0.1:0".to_owned();
    crm_settings.crm_seed_csv = seed.clone();
    if let Some(connections) = options.crm_connections {
        crm_settings.crm_max_connections = connections;
    }
    let iot_settings = iot_platform::configuration::Settings {
        iot_listen_addr: "127.0.0.1:0".to_owned(),
        iot_group: format!("bench-{run_id}"),
        iot_namespace: format!("bench:{run_id}"),
        ..iot_platform::configuration::Settings::load()?
    };

    let crm_app = crm::startup::Application::build(crm_settings.clone()).await?;
    let (stop, stopped) = oneshot::channel::<()>();
    let crm = Running {
        base_url: format!("http://127.0.0.1:{}", crm_app.port()),
        stop,
        task: tokio::spawn(crm_app.run_until(async move {
            let _ = stopped.await;
        })),
    };
    let iot_app = iot_platform::startup::Application::build(iot_settings.clone()).await?;
    let (stop, stopped) = oneshot::channel::<()>();
    let iot = Running {
        base_url: format!("http://127.0.0.1:{}", iot_app.port()),
        stop,
        task: tokio::spawn(async move {
            iot_app
                .run_until_stopped(async move {
                    let _ = stopped.await;
                })
                .await
                .map_err(anyhow::Error::from)
        }),
    };
    // The store the IoT platform serves reads from, for the open loop's watcher.
    let catalog = generations::open_store(&iot_settings, generations::FIRST).await?;
    let serving = generations::open_store(
        &iot_settings,
        generations::current(&catalog, &iot_settings).await?,
    )
    .await?;

    let api = Api {
        client: reqwest::Client::new(),
        crm: crm.base_url.clone(),
        iot: iot.base_url.clone(),
    };
    let mut results = Vec::new();

    // Closed loop: customers to change, created first and awaited, so it times changes only.
    let customers = api
        .create(
            &format!("{run_id}-closed"),
            options.changes,
            options.concurrency,
        )
        .await?;
    let mut latency_ms = Histogram::<u64>::new(3)?;
    let started = Instant::now();
    let latencies: Vec<anyhow::Result<Duration>> = stream::iter(customers)
        .map(|(id, connection)| {
            let api = &api;
            async move {
                let sent = Instant::now();
                api.change(id, &connection, 2).await?;
                await_mandate(&api.client, &api.iot, &connection, 2).await?;
                Ok(sent.elapsed())
            }
        })
        .buffer_unordered(options.concurrency)
        .collect()
        .await;
    let total = started.elapsed();
    for latency in latencies {
        latency_ms.record(u64::try_from(latency?.as_micros())?)?;
    }
    results.push(ApiResult {
        mode: "closed",
        changes: options.changes,
        offered: format!("{} clients", options.concurrency),
        total,
        latency_ms,
        answered_ms: None,
        in_kafka_ms: None,
    });

    for &rate in &options.rates {
        let changes = (rate * options.open_seconds) as usize;
        let customers = api
            .create(&format!("{run_id}-open{rate}"), changes, 64)
            .await?;
        let arrivals = Arrivals::watch(&crm_settings.kafka, CONNECTION_MANDATES.name).await?;
        let (total, latency_ms, answered_ms, scheduled) =
            open_loop(&api, &serving, customers, rate).await?;
        let in_kafka_ms = arrivals.latencies(&scheduled).await?;
        results.push(ApiResult {
            mode: "open",
            changes,
            offered: format!("{rate}/s"),
            total,
            latency_ms,
            answered_ms: Some(answered_ms),
            in_kafka_ms: Some(in_kafka_ms),
        });
    }

    iot.stop().await?;
    crm.stop().await?;
    projectors::Store::clear(&serving).await?;
    std::fs::remove_file(seed)?;
    let mut admin = sqlx::PgConnection::connect(&crm_settings.postgres_url).await?;
    sqlx::query(&format!(
        "DROP DATABASE IF EXISTS \"{}\" WITH (FORCE)",
        crm_settings.crm_database
    ))
    .execute(&mut admin)
    .await?;
    Ok(results)
}

/// The CRM and IoT APIs of one benchmark run.
struct Api {
    client: reqwest::Client,
    crm: String,
    iot: String,
}

impl Api {
    fn body(connection: &str, mandate: u8) -> Value {
        json!({ "firstName": "Bram", "lastName": "Visser", "city": "Almere",
                "connectionId": connection, "connectionMandate": mandate })
    }

    /// Creates `count` customers with mandate 0 and waits until the IoT platform shows each.
    async fn create(
        &self,
        prefix: &str,
        count: usize,
        concurrency: usize,
    ) -> anyhow::Result<Vec<(u64, String)>> {
        stream::iter(0..count)
            .map(|i| async move {
                let connection = format!("bench-{prefix}-{i}");
                let created: Value = self
                    .client
                    .post(format!("{}/customers", self.crm))
                    .json(&Self::body(&connection, 0))
                    .send()
                    .await?
                    .error_for_status()?
                    .json()
                    .await?;
                let id = created["id"]
                    .as_u64()
                    .context("created customer has no id")?;
                await_mandate(&self.client, &self.iot, &connection, 0).await?;
                anyhow::Ok((id, connection))
            })
            .buffer_unordered(concurrency)
            .collect::<Vec<_>>()
            .await
            .into_iter()
            .collect()
    }

    async fn change(&self, id: u64, connection: &str, mandate: u8) -> anyhow::Result<()> {
        self.client
            .put(format!("{}/customers/{id}", self.crm))
            .json(&Self::body(connection, mandate))
            .send()
            .await?
            .error_for_status()?;
        Ok(())
    }
}

/// Open loop: change `i` is sent at `start + i / rate` whatever became of the earlier ones;
/// one watcher reads every pending connection from the serving store each millisecond, and a
/// change's latency runs from its scheduled send time until the store shows it. Returns the
/// time from the first scheduled send until the last change showed, the latencies to visible
/// and those to the CRM's answer, and each change's connection with its scheduled time.
async fn open_loop(
    api: &Api,
    serving: &ReadStore,
    customers: Vec<(u64, String)>,
    rate: u32,
) -> anyhow::Result<OpenLoop> {
    const WANTED: u8 = 1;
    let count = customers.len();
    let start = tokio::time::Instant::now() + Duration::from_millis(100);
    let interval = Duration::from_secs(1) / rate;
    let (sent, mut to_watch) = mpsc::unbounded_channel::<(String, tokio::time::Instant)>();
    let senders = stream::iter(customers.into_iter().enumerate())
        .map(move |(i, (id, connection))| {
            let sent = sent.clone();
            async move {
                let scheduled = start + interval * u32::try_from(i)?;
                tokio::time::sleep_until(scheduled).await;
                api.change(id, &connection, WANTED).await?;
                let answered = scheduled.elapsed();
                let _ = sent.send((connection, scheduled));
                anyhow::Ok(answered)
            }
        })
        // Every change may be in flight at once: nothing waits for an earlier one.
        .buffer_unordered(count.max(1))
        .collect::<Vec<_>>();
    let watcher = async {
        let mut latency_ms = Histogram::<u64>::new(3)?;
        let mut pending: Vec<(String, tokio::time::Instant)> = Vec::new();
        let mut scheduled = Vec::with_capacity(count);
        let mut open = true;
        let deadline = start + Duration::from_secs(120) + interval * u32::try_from(count)?;
        let mut tick = tokio::time::interval(Duration::from_millis(1));
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        while open || !pending.is_empty() {
            if tokio::time::Instant::now() > deadline {
                bail!("{} changes not visible within the deadline", pending.len());
            }
            tick.tick().await;
            loop {
                match to_watch.try_recv() {
                    Ok(sent) => {
                        scheduled.push(sent.clone());
                        pending.push(sent);
                    }
                    Err(mpsc::error::TryRecvError::Empty) => break,
                    Err(mpsc::error::TryRecvError::Disconnected) => {
                        open = false;
                        break;
                    }
                }
            }
            if pending.is_empty() {
                continue;
            }
            let keys: Vec<&str> = pending.iter().map(|(c, _)| c.as_str()).collect();
            // The stored text, reading only its mandate: the watcher shares the CPU with
            // what it measures.
            let stored = projectors::Store::load_json(serving, &keys).await?;
            let seen = tokio::time::Instant::now();
            let shown: Vec<bool> = stored
                .iter()
                .map(|s| {
                    s.json.as_deref().is_some_and(|text| {
                        serde_json::from_str::<Shown>(text).is_ok_and(|d| d.mandate == WANTED)
                    })
                })
                .collect();
            let mut shown = shown.into_iter();
            pending.retain(|(_, scheduled)| {
                if shown.next().unwrap_or(false) {
                    let micros = (seen - *scheduled).as_micros();
                    let _ = latency_ms.record(u64::try_from(micros).unwrap_or(u64::MAX));
                    false
                } else {
                    true
                }
            });
        }
        anyhow::Ok((start.elapsed(), latency_ms, scheduled))
    };
    let (sends, watched) = tokio::join!(senders, watcher);
    let mut answered_ms = Histogram::<u64>::new(3)?;
    for send in sends {
        answered_ms.record(u64::try_from(send?.as_micros())?)?;
    }
    let (total, latency_ms, scheduled) = watched?;
    Ok((total, latency_ms, answered_ms, scheduled))
}

/// What [`open_loop`] measured: its time, the latencies to visible and to the CRM's answer,
/// and every change's connection with its scheduled send time.
type OpenLoop = (
    Duration,
    Histogram<u64>,
    Histogram<u64>,
    Vec<(String, tokio::time::Instant)>,
);

/// When each key first appeared on a topic after [`Arrivals::watch`], as a `read_committed`
/// consumer of the platform's settings sees it (committed by the relay's transaction).
struct Arrivals {
    seen: Arc<Mutex<HashMap<String, tokio::time::Instant>>>,
    stop: oneshot::Sender<()>,
    task: tokio::task::JoinHandle<anyhow::Result<()>>,
}

impl Arrivals {
    /// Starts reading every partition of `topic` from its current end.
    async fn watch(kafka: &KafkaSettings, topic: &str) -> anyhow::Result<Self> {
        let group = format!("bench-arrivals-{}", Uuid::new_v4().simple());
        let consumer: StreamConsumer = topics::kafka::consumer_config(kafka, &group).create()?;
        let topic = topic.to_owned();
        // From the high watermarks read now, not a logical end resolved later: a change
        // sent meanwhile must not be skipped.
        let consumer = tokio::task::spawn_blocking(move || {
            let mut start = TopicPartitionList::new();
            for partition in 0..CONNECTION_MANDATES.partitions {
                let (_, high) =
                    consumer.fetch_watermarks(&topic, partition, Duration::from_secs(10))?;
                start.add_partition_offset(&topic, partition, Offset::Offset(high))?;
            }
            consumer.assign(&start)?;
            anyhow::Ok(consumer)
        })
        .await??;
        let seen = Arc::new(Mutex::new(HashMap::new()));
        let (stop, mut stopped) = oneshot::channel::<()>();
        let task = tokio::spawn({
            let seen = seen.clone();
            async move {
                loop {
                    tokio::select! {
                        _ = &mut stopped => return Ok(()),
                        received = consumer.recv() => {
                            let message = received?;
                            if let Some(key) = message.key() {
                                let key = String::from_utf8_lossy(key).into_owned();
                                seen.lock()
                                    .unwrap_or_else(|poisoned| poisoned.into_inner())
                                    .entry(key)
                                    .or_insert_with(tokio::time::Instant::now);
                            }
                        }
                    }
                }
            }
        });
        Ok(Self { seen, stop, task })
    }

    /// Stops reading; the latencies from each change's scheduled time to its key's arrival.
    /// Every change had arrived (the read model showed it, and it reads the same topic), but
    /// this consumer may not have fetched the last ones yet: they are waited for, at most 30 s.
    async fn latencies(
        self,
        scheduled: &[(String, tokio::time::Instant)],
    ) -> anyhow::Result<Histogram<u64>> {
        let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
        while tokio::time::Instant::now() < deadline && !self.task.is_finished() {
            let all_seen = {
                let seen = self
                    .seen
                    .lock()
                    .unwrap_or_else(|poisoned| poisoned.into_inner());
                scheduled
                    .iter()
                    .all(|(connection, _)| seen.contains_key(connection))
            };
            if all_seen {
                break;
            }
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        let _ = self.stop.send(());
        self.task.await??;
        let seen = self
            .seen
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        let mut latency_ms = Histogram::<u64>::new(3)?;
        for (connection, at) in scheduled {
            let arrived = seen
                .get(connection)
                .with_context(|| format!("{connection} was never seen on the topic"))?;
            latency_ms.record(u64::try_from(
                arrived.saturating_duration_since(*at).as_micros(),
            )?)?;
        }
        Ok(latency_ms)
    }
}

/// The one field of a stored mandate document the open loop's watcher reads.
#[derive(serde::Deserialize)]
struct Shown {
    mandate: u8,
}

/// Polls the IoT platform until the connection shows `mandate` (at most 60 s).
async fn await_mandate(
    client: &reqwest::Client,
    iot: &str,
    connection: &str,
    mandate: u8,
) -> anyhow::Result<()> {
    let deadline = Instant::now() + Duration::from_secs(60);
    let url = format!("{iot}/mandates/{connection}");
    while Instant::now() < deadline {
        let response = client.get(&url).send().await?;
        if response.status().is_success() {
            let shown: Value = response.json().await?;
            if shown["mandate"] == json!(mandate) {
                return Ok(());
            }
        }
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
    bail!("{connection} did not show mandate {mandate} within 60 s")
}
