//! Helpers shared by the IoT platform's integration tests: running the service in-process or
//! as a child process, publishing mandate events, and checking the read model against the
//! fold of what was published.

#![allow(dead_code)] // each test binary uses a different subset

use std::collections::HashMap;
use std::net::TcpListener;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use futures::future::try_join_all;
use iot_platform::configuration::Settings;
use iot_platform::startup::Application;
use projectors::digest::Digest;
use rdkafka::message::{Header, OwnedHeaders};
use rdkafka::producer::{FutureProducer, FutureRecord};
use reqwest::StatusCode;
use serde_json::Value;
use sqlx::Connection;
#[allow(unused_imports)]
pub use testkit::eventually;
use testkit::fold::Fold;
use tokio::sync::oneshot;
use tokio::task::JoinHandle;
use topics::apply::apply;
use topics::cluster::Cluster;
use topics::codec::Encoder;
use topics::events::{ConnectionMandateChanged, Event, MandateLevel};
use topics::registry::Registry;
use topics::spec::{CleanupPolicy, TopicSpec, CATALOGUE, CONNECTION_MANDATES};
use uuid::Uuid;

/// Settings for an app of the test's own: its own group and key space, a random port.
pub fn test_settings() -> Settings {
    let run = Uuid::new_v4();
    Settings {
        iot_listen_addr: "127.0.0.1:0".to_owned(),
        iot_group: format!("test-iot-{run}"),
        iot_namespace: format!("test:iot:{run}"),
        ..Settings::load().unwrap()
    }
}

/// A fresh topic shaped like `connection-mandates`, for tests that fold a whole topic.
pub async fn private_topic(settings: &Settings, prefix: &str) -> String {
    let name = format!("{prefix}-{}", Uuid::new_v4());
    create_topic(settings, &name).await;
    name
}

/// Creates topic `name` shaped like `connection-mandates` (4 partitions), if it is missing.
pub async fn create_topic(settings: &Settings, name: &str) {
    let name = name.to_owned();
    let spec = TopicSpec {
        name: Box::leak(name.clone().into_boxed_str()),
        cleanup_policy: CleanupPolicy::Delete,
        value_schema: None,
        ..CONNECTION_MANDATES
    };
    let cluster = Cluster::connect(&settings.kafka).unwrap();
    apply(
        &cluster,
        &Registry::new(&settings.kafka.schema_registry_url),
        &[spec],
    )
    .await
    .unwrap();
}

/// Points `settings` at a fresh private topic holding `count` events over `connections`
/// connections, and returns what was published.
pub async fn prefilled_topic(
    settings: &mut Settings,
    name: &str,
    connections: usize,
    count: usize,
) -> Vec<ConnectionMandateChanged> {
    settings.iot_topic = private_topic(settings, &format!("test-{name}")).await;
    let published = events(&format!("{name}-{}", Uuid::new_v4()), connections, count);
    publish_to(settings, &settings.iot_topic, &published).await;
    published
}

pub struct RunningApp {
    pub base_url: String,
    stop: oneshot::Sender<()>,
    task: JoinHandle<()>,
}

impl RunningApp {
    pub async fn stop(self) {
        let _ = self.stop.send(());
        self.task.await.unwrap();
    }
}

pub async fn spawn(settings: Settings) -> RunningApp {
    let app = Application::build(settings).await.unwrap();
    let base_url = format!("http://127.0.0.1:{}", app.port());
    let (stop, stopped) = oneshot::channel();
    let task = tokio::spawn(async move {
        app.run_until_stopped(async move {
            let _ = stopped.await;
        })
        .await
        .unwrap();
    });
    RunningApp {
        base_url,
        stop,
        task,
    }
}

/// The service as a separate process, so a test can `kill -9` it.
pub struct ChildApp {
    pub base_url: String,
    child: Child,
}

impl ChildApp {
    pub fn start(settings: &Settings) -> Self {
        let port = TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let child = Command::new(env!("CARGO_BIN_EXE_iot-platform"))
            .env("IOT_LISTEN_ADDR", format!("127.0.0.1:{port}"))
            .env("IOT_GROUP", &settings.iot_group)
            .env("IOT_NAMESPACE", &settings.iot_namespace)
            .env("IOT_TOPIC", &settings.iot_topic)
            .env("IOT_DEAD_LETTER_TOPIC", &settings.iot_dead_letter_topic)
            .env("REDIS_URL", &settings.redis_url)
            .env("MYSQL_URL", &settings.mysql_url)
            .env("IOT_STORE", settings.iot_store.to_string())
            .env("RUST_LOG", "warn")
            .stdout(Stdio::null())
            .spawn()
            .unwrap();
        Self {
            base_url: format!("http://127.0.0.1:{port}"),
            child,
        }
    }

    /// SIGKILL: no shutdown, no final commit.
    pub fn kill_9(mut self) {
        self.child.kill().unwrap();
        self.child.wait().unwrap();
    }

    /// The instance's `/health`, once it answers.
    pub async fn health(&self) -> Option<Value> {
        let response = reqwest::get(format!("{}/health", self.base_url))
            .await
            .ok()?;
        response.json().await.ok()
    }
}

impl Drop for ChildApp {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

pub fn event(connection_id: &str, mandate: MandateLevel, at: i64) -> ConnectionMandateChanged {
    ConnectionMandateChanged {
        event_id: Uuid::new_v4(),
        connection_id: connection_id.parse().unwrap(),
        customer_id: 1,
        mandate,
        occurred_at: at,
    }
}

/// `count` events over `connections` connections named `<prefix>-<n>`.
pub fn events(prefix: &str, connections: usize, count: usize) -> Vec<ConnectionMandateChanged> {
    (0..count)
        .map(|i| {
            let level = MandateLevel::from_level((i % 3) as u8).unwrap();
            event(&format!("{prefix}-{}", i % connections), level, i as i64)
        })
        .collect()
}

/// Publishes the events to `topic` in order and waits until Kafka acknowledged all of them.
pub async fn publish_to(settings: &Settings, topic: &str, events: &[ConnectionMandateChanged]) {
    let registry = Registry::new(&settings.kafka.schema_registry_url);
    // The registry may have restarted since anyone applied the catalogue (it keeps schemas in
    // memory); applying is idempotent.
    let cluster = Cluster::connect(&settings.kafka).unwrap();
    apply(&cluster, &registry, CATALOGUE).await.unwrap();
    let encoder = Encoder::<ConnectionMandateChanged>::connect(&registry)
        .await
        .unwrap();
    let producer: FutureProducer = topics::kafka::producer_config(&settings.kafka)
        .create()
        .unwrap();
    let mut deliveries = Vec::with_capacity(events.len());
    for event in events {
        let payload = encoder.encode(event).unwrap();
        let event_id = event.event_id.to_string();
        let headers = OwnedHeaders::new().insert(Header {
            key: topics::kafka::EVENT_ID_HEADER,
            value: Some(&event_id),
        });
        let record = FutureRecord::to(topic)
            .key(event.key())
            .payload(&payload)
            .headers(headers);
        deliveries.push(producer.send_result(record).map_err(|(e, _)| e).unwrap());
    }
    for delivery in try_join_all(deliveries).await.unwrap() {
        delivery.map_err(|(e, _)| e).unwrap();
    }
}

pub async fn publish(settings: &Settings, events: &[ConnectionMandateChanged]) {
    publish_to(settings, ConnectionMandateChanged::TOPIC.name, events).await;
}

/// What a connection of the read model must show: its last event and the digest of all.
#[derive(Debug, Clone, PartialEq)]
pub struct Expected {
    pub last_event_id: String,
    pub history: Digest,
}

/// The fold of a sequence of events, per connection: every event id in order (through
/// `testkit::fold`), reduced to the last one and the digest the read model keeps. A lost,
/// repeated or reordered event changes the digest.
pub fn fold(events: &[ConnectionMandateChanged]) -> HashMap<String, Expected> {
    let mut fold = Fold::default();
    for event in events {
        fold.push(event.connection_id.as_str(), &event.event_id.to_string());
    }
    fold.keys()
        .map(|(connection, ids)| {
            let expected = Expected {
                last_event_id: ids.last().cloned().unwrap_or_default(),
                history: Digest::of(ids.iter().map(String::as_str)),
            };
            (connection.to_owned(), expected)
        })
        .collect()
}

/// Whether a served or stored mandate document is what `expected` says.
pub fn matches(document: &Value, expected: &Expected) -> bool {
    document["eventId"].as_str() == Some(expected.last_event_id.as_str())
        && serde_json::from_value::<Digest>(document["history"].clone())
            .ok()
            .as_ref()
            == Some(&expected.history)
}

/// Waits until the read model behind `base_url` serves exactly `expected` (per connection:
/// last event and the digest of every event), or panics after `within`.
pub async fn await_fold(base_url: &str, expected: &HashMap<String, Expected>, within: Duration) {
    let deadline = Instant::now() + within;
    let client = reqwest::Client::new();
    let mut pending: Vec<(&String, &Expected)> = expected.iter().collect();
    loop {
        let mut still = Vec::new();
        let mut example = None;
        for (connection, wanted) in pending {
            let response = client
                .get(format!("{base_url}/mandates/{connection}"))
                .send()
                .await;
            let shown = match response {
                Ok(r) if r.status() == StatusCode::OK => r.json::<Value>().await.ok(),
                _ => None,
            };
            if !shown.as_ref().is_some_and(|d| matches(d, wanted)) {
                example.get_or_insert_with(|| (connection.clone(), wanted.clone(), shown));
                still.push((connection, wanted));
            }
        }
        pending = still;
        if pending.is_empty() {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "{} of {} connections differ from the fold, e.g. {:?}",
            pending.len(),
            expected.len(),
            example
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// Checks a store holds exactly the fold: every connection's document, read from the store
/// itself rather than through the service.
pub async fn assert_store_holds(
    store: &impl projectors::Store,
    expected: &HashMap<String, Expected>,
) {
    let keys: Vec<&str> = expected.keys().map(String::as_str).collect();
    let stored = store.load(&keys).await.unwrap();
    let differing: Vec<_> = keys
        .iter()
        .zip(&stored)
        .filter(|(key, stored)| {
            !stored
                .document
                .as_ref()
                .is_some_and(|d| matches(d, &expected[**key]))
        })
        .map(|(key, stored)| (key.to_string(), stored.document.clone()))
        .collect();
    assert!(
        differing.is_empty(),
        "{} of {} stored connections differ from the fold, e.g. {:?}",
        differing.len(),
        keys.len(),
        differing.first()
    );
}

/// The CRM served in this process on a database of its own (`run`), seeded with customer 1
/// on `connection` with mandate 1; [`SeededCrm::stop`] stops it and drops the database.
pub struct SeededCrm {
    pub url: String,
    pub settings: crm::configuration::Settings,
    run: String,
    seed: std::path::PathBuf,
    stop: oneshot::Sender<()>,
    served: JoinHandle<anyhow::Result<()>>,
}

impl SeededCrm {
    pub async fn start(run: &str, connection: &str) -> Self {
        let seed = std::env::temp_dir().join(format!("{run}.csv"));
        std::fs::write(
            &seed,
            format!("id,firstName,lastName,city,connectionId,connectionMandate\n1,Femke,Bakker,Delft,{connection},1\n"),
        )
        .unwrap();
        let mut settings = crm::configuration::load().unwrap();
        settings.crm_database = run.to_owned();
        settings.crm_listen_addr = "127.0.0.1:0".to_owned();
        settings.crm_seed_csv = seed.clone();
        let app = crm::startup::Application::build(settings.clone())
            .await
            .unwrap();
        let url = format!("http://127.0.0.1:{}", app.port());
        let (stop, stopped) = oneshot::channel::<()>();
        let served = tokio::spawn(app.run_until(async move {
            let _ = stopped.await;
        }));
        Self {
            url,
            settings,
            run: run.to_owned(),
            seed,
            stop,
            served,
        }
    }

    pub async fn stop(self) {
        let _ = self.stop.send(());
        self.served.await.unwrap().unwrap();
        std::fs::remove_file(&self.seed).unwrap();
        let mut admin = sqlx::PgConnection::connect(&self.settings.postgres_url)
            .await
            .unwrap();
        sqlx::query(&format!(
            "DROP DATABASE IF EXISTS \"{}\" WITH (FORCE)",
            self.run
        ))
        .execute(&mut admin)
        .await
        .unwrap();
    }
}
