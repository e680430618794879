//! (a) N mandate changes through the CRM API → time until all are visible in the IoT platform,
//! with the POST/PUT-to-visible latency distribution; (b) the IoT projector folding a
//! pre-filled topic vs a bare rdkafka consumer reading the same topic without decoding.

use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use futures::stream::{self, StreamExt};
use hdrhistogram::Histogram;
use iot_platform::mandates::MandatesProjection;
use projectors::store::redis::RedisStore;
use projectors::{Projector, ProjectorSettings};
use rdkafka::admin::AdminOptions;
use rdkafka::consumer::{Consumer, StreamConsumer};
use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use rdkafka::producer::{BaseProducer, BaseRecord, Producer};
use serde_json::{json, Value};
use sqlx::Connection;
use tokio::sync::oneshot;
use topics::cluster::Cluster;
use topics::codec::Encoder;
use topics::events::{ConnectionMandateChanged, MandateLevel};
use topics::registry::Registry;
use topics::settings::KafkaSettings;
use topics::spec::{CleanupPolicy, TopicSpec, CONNECTION_MANDATES};
use uuid::Uuid;

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
}

pub async fn run(options: Options) -> anyhow::Result<()> {
    let run_id = Uuid::new_v4().simple().to_string();
    let kafka: KafkaSettings = topics::settings::load("bench")?;

    println!("(a) mandate changes through the CRM API until visible in the IoT platform");
    let api = api_to_visible(&run_id, &options).await?;
    println!("| changes | concurrency | total s | changes/s | p50 ms | p99 ms | max ms |");
    println!("|---|---|---|---|---|---|---|");
    println!(
        "| {} | {} | {:.2} | {:.0} | {:.1} | {:.1} | {:.1} |",
        options.changes,
        options.concurrency,
        api.total.as_secs_f64(),
        options.changes as f64 / api.total.as_secs_f64(),
        api.latency_ms.value_at_quantile(0.5) as f64 / 1000.0,
        api.latency_ms.value_at_quantile(0.99) as f64 / 1000.0,
        api.latency_ms.max() as f64 / 1000.0,
    );

    println!(
        "\n(b) folding a pre-filled topic of {} events ({} connections, 4 partitions)",
        options.events, options.connections
    );
    let topic = format!("bench-mandates-{run_id}");
    let filled = prefill(&kafka, &topic, &options).await?;
    println!("pre-filled in {:.1} s", filled.as_secs_f64());
    let bare = bare_consumer(&kafka, &topic, options.events).await?;
    let fold = projector(&kafka, &topic, &run_id, options.events).await?;
    println!("| consumer | events | seconds | events/s | vs bare |");
    println!("|---|---|---|---|---|");
    for (name, took) in [
        ("bare rdkafka StreamConsumer, no decoding", bare),
        ("IoT projector: decode + fold + Redis + commit", fold),
    ] {
        println!(
            "| {name} | {} | {:.2} | {:.0} | {:.2} |",
            options.events,
            took.as_secs_f64(),
            options.events as f64 / took.as_secs_f64(),
            bare.as_secs_f64() / took.as_secs_f64(),
        );
    }
    let admin = topics::kafka::admin_client(&kafka)?;
    admin.delete_topics(&[&topic], &AdminOptions::new()).await?;
    Ok(())
}

struct ApiResult {
    total: Duration,
    /// Microseconds from sending the request to the change being served.
    latency_ms: Histogram<u64>,
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

async fn api_to_visible(run_id: &str, options: &Options) -> anyhow::Result<ApiResult> {
    let seed = std::env::temp_dir().join(format!("bench-seed-{run_id}.csv"));
    std::fs::write(
        &seed,
        "id,firstName,lastName,city,connectionId,connectionMandate\n",
    )?;
    let mut crm_settings = crm::configuration::load()?;
    crm_settings.crm_database = format!("crm_bench_{run_id}");
    crm_settings.crm_listen_addr = "127.0.0.1:0".to_owned();
    crm_settings.crm_seed_csv = seed.clone();
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
    let iot_app = iot_platform::startup::Application::build(iot_settings).await?;
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

    let client = reqwest::Client::new();
    let body = |connection: &str, mandate: u8| {
        json!({ "firstName": "Bram", "lastName": "Visser", "city": "Almere",
                "connectionId": connection, "connectionMandate": mandate })
    };
    // Customers to change, created first and awaited, so part (a) times changes only.
    let customers: Vec<(u64, String)> = stream::iter(0..options.changes)
        .map(|i| {
            let client = client.clone();
            let connection = format!("bench-{run_id}-{i}");
            let url = format!("{}/customers", crm.base_url);
            let body = body(&connection, 0);
            let iot_url = iot.base_url.clone();
            async move {
                let created: Value = client
                    .post(url)
                    .json(&body)
                    .send()
                    .await?
                    .error_for_status()?
                    .json()
                    .await?;
                let id = created["id"]
                    .as_u64()
                    .context("created customer has no id")?;
                await_mandate(&client, &iot_url, &connection, 0).await?;
                anyhow::Ok((id, connection))
            }
        })
        .buffer_unordered(options.concurrency)
        .collect::<Vec<_>>()
        .await
        .into_iter()
        .collect::<anyhow::Result<_>>()?;

    let mut latency_ms = Histogram::<u64>::new(3)?;
    let started = Instant::now();
    let latencies: Vec<anyhow::Result<Duration>> = stream::iter(customers)
        .map(|(id, connection)| {
            let client = client.clone();
            let url = format!("{}/customers/{id}", crm.base_url);
            let body = body(&connection, 2);
            let iot_url = iot.base_url.clone();
            async move {
                let sent = Instant::now();
                client
                    .put(url)
                    .json(&body)
                    .send()
                    .await?
                    .error_for_status()?;
                await_mandate(&client, &iot_url, &connection, 2).await?;
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

    iot.stop().await?;
    crm.stop().await?;
    std::fs::remove_file(seed)?;
    let mut admin = sqlx::PgConnection::connect(&crm_settings.postgres_url).await?;
    sqlx::query(&format!(
        "DROP DATABASE IF EXISTS \"{}\" WITH (FORCE)",
        crm_settings.crm_database
    ))
    .execute(&mut admin)
    .await?;
    Ok(ApiResult { total, latency_ms })
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

/// Fills a fresh 4-partition topic with encoded mandate events; returns how long it took.
async fn prefill(
    kafka: &KafkaSettings,
    topic: &str,
    options: &Options,
) -> anyhow::Result<Duration> {
    let spec = TopicSpec {
        name: Box::leak(topic.to_owned().into_boxed_str()),
        cleanup_policy: CleanupPolicy::Delete,
        ..CONNECTION_MANDATES
    };
    Cluster::connect(kafka)?.create(&spec, 1).await?;
    let encoder =
        Encoder::<ConnectionMandateChanged>::connect(&Registry::new(&kafka.schema_registry_url))
            .await?;
    let producer: BaseProducer = topics::kafka::producer_config(kafka)
        .set("queue.buffering.max.messages", "500000")
        .create()?;
    let started = Instant::now();
    for i in 0..options.events {
        let event = ConnectionMandateChanged {
            event_id: Uuid::new_v4(),
            connection_id: format!("bench-{}", i % options.connections),
            customer_id: (i % options.connections) as i64,
            mandate: MandateLevel::from_level((i % 3) as u8).unwrap_or(MandateLevel::None),
            occurred_at: 1_763_750_000_000 + i as i64,
        };
        let payload = encoder.encode(&event)?;
        let mut record = BaseRecord::to(topic)
            .key(&event.connection_id)
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
    Ok(started.elapsed())
}

/// Reads every record of the topic with the platform's consumer settings, decoding nothing.
async fn bare_consumer(
    kafka: &KafkaSettings,
    topic: &str,
    events: usize,
) -> anyhow::Result<Duration> {
    let consumer: StreamConsumer =
        topics::kafka::consumer_config(kafka, &format!("{topic}-bare")).create()?;
    let started = Instant::now();
    consumer.subscribe(&[topic])?;
    let mut seen = 0;
    let deadline = started + Duration::from_secs(600);
    while seen < events {
        if Instant::now() > deadline {
            bail!("bare consumer read only {seen} of {events} records in 600 s");
        }
        match tokio::time::timeout(Duration::from_secs(30), consumer.recv()).await {
            Ok(Ok(_)) => seen += 1,
            Ok(Err(e)) => return Err(e.into()),
            Err(_) => bail!("bare consumer stalled at {seen} of {events}"),
        }
    }
    Ok(started.elapsed())
}

/// Runs the IoT platform's projector over the topic into a fresh Redis key space.
async fn projector(
    kafka: &KafkaSettings,
    topic: &str,
    run_id: &str,
    events: usize,
) -> anyhow::Result<Duration> {
    let iot = iot_platform::configuration::Settings::load()?;
    let store = RedisStore::connect(&iot.redis_url, &format!("bench:fold:{run_id}")).await?;
    let projector = Projector::new(
        MandatesProjection,
        store,
        ProjectorSettings {
            kafka: kafka.clone(),
            group_id: format!("{topic}-projector"),
            topic: topic.to_owned(),
            dead_letter_topic: iot.iot_dead_letter_topic.clone(),
            max_batch: iot.iot_max_batch,
        },
    )?;
    let status = projector.status();
    let (stop, stopped) = oneshot::channel::<()>();
    let started = Instant::now();
    let task = tokio::spawn(projector.run(async move {
        let _ = stopped.await;
    }));
    let deadline = started + Duration::from_secs(600);
    let done = loop {
        let applied = status.applied.load(Ordering::Relaxed) as usize
            + status.dead_lettered.load(Ordering::Relaxed) as usize;
        if applied >= events {
            break started.elapsed();
        }
        if Instant::now() > deadline || task.is_finished() {
            bail!("projector applied only {applied} of {events} events");
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    };
    let _ = stop.send(());
    task.await??;
    Ok(done)
}
