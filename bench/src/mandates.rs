//! (a) N mandate changes through the CRM API → time until all are visible in the IoT platform,
//! with the POST/PUT-to-visible latency distribution; (b) the IoT projector folding a
//! pre-filled topic vs a bare rdkafka consumer reading the same topic without decoding.

use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use futures::stream::{self, StreamExt};
use hdrhistogram::Histogram;
use projectors::store::any::StoreKind;
use serde_json::{json, Value};
use sqlx::Connection;
use tokio::sync::oneshot;
use topics::settings::KafkaSettings;
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

    println!();
    let workload = fold_against_bare(
        &kafka,
        "(b) the IoT projector folding",
        options.events,
        options.connections,
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
