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
use rdkafka::message::{Header, OwnedHeaders};
use rdkafka::producer::{FutureProducer, FutureRecord};
use reqwest::StatusCode;
use serde_json::Value;
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
    name
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
        connection_id: connection_id.to_owned(),
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

/// The fold of a sequence of events: the last event id per connection.
pub fn fold(events: &[ConnectionMandateChanged]) -> HashMap<String, String> {
    events
        .iter()
        .map(|e| (e.connection_id.clone(), e.event_id.to_string()))
        .collect()
}

/// Waits until the read model behind `base_url` serves exactly `expected` (last event id per
/// connection), or panics after `within`.
pub async fn await_fold(base_url: &str, expected: &HashMap<String, String>, within: Duration) {
    let deadline = Instant::now() + within;
    let client = reqwest::Client::new();
    let mut pending: Vec<(&String, &String)> = expected.iter().collect();
    loop {
        let mut still = Vec::new();
        for (connection, event_id) in pending {
            let response = client
                .get(format!("{base_url}/mandates/{connection}"))
                .send()
                .await;
            let shown = match response {
                Ok(r) if r.status() == StatusCode::OK => r.json::<Value>().await.ok(),
                _ => None,
            };
            if shown.as_ref().and_then(|b| b["eventId"].as_str()) != Some(event_id.as_str()) {
                still.push((connection, event_id));
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
            pending.first()
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// Polls `condition` every 100 ms until it holds, or panics with `what` after `within`.
pub async fn eventually<F, Fut>(what: &str, within: Duration, mut condition: F)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let deadline = Instant::now() + within;
    while !condition().await {
        assert!(Instant::now() < deadline, "timed out waiting until {what}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// A second instance of one infrastructure service, started by `scripts/infra` under a home
/// and port of its own, so a test can stop it without disturbing other tests.
pub struct IsolatedService {
    service: &'static str,
    home: std::path::PathBuf,
    port: u16,
}

impl IsolatedService {
    pub fn start(service: &'static str) -> Self {
        let port = TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let home = std::env::temp_dir().join(format!("iot-{service}-{}", Uuid::new_v4().simple()));
        let isolated = Self {
            service,
            home,
            port,
        };
        isolated.infra("up");
        isolated
    }

    pub fn port(&self) -> u16 {
        self.port
    }

    pub fn stop(&self) {
        self.infra("down");
    }

    pub fn resume(&self) {
        self.infra("up");
    }

    fn infra(&self, action: &str) {
        let script = concat!(env!("CARGO_MANIFEST_DIR"), "/../scripts/infra");
        let status = Command::new(script)
            .args([action, self.service])
            .env("INFRA_HOME", &self.home)
            .env(
                format!("{}_PORT", self.service.to_uppercase()),
                self.port.to_string(),
            )
            .stdout(Stdio::null())
            .status()
            .unwrap();
        assert!(
            status.success(),
            "scripts/infra {action} {} failed",
            self.service
        );
    }
}

impl Drop for IsolatedService {
    fn drop(&mut self) {
        self.infra("down");
        let _ = std::fs::remove_dir_all(&self.home);
    }
}
