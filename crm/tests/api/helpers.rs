use std::path::{Path, PathBuf};
use std::time::Duration;

use crm::configuration::Settings;
use crm::seed::SeedOutcome;
use crm::startup::Application;
use rdkafka::consumer::{Consumer, StreamConsumer};
use rdkafka::message::{Headers, Message};
use rdkafka::{Offset, TopicPartitionList};
use serde_json::{json, Value};
use sqlx::{Connection, PgConnection};
use tokio::sync::oneshot;
use tokio::task::JoinHandle;
use tokio::time::Instant;
use topics::apply::apply;
use topics::cluster::Cluster;
use topics::codec::Decoder;
use topics::events::ConnectionMandateChanged;
use topics::kafka::{consumer_config, EVENT_ID_HEADER, SEQUENCE_HEADER};
use topics::registry::Registry;
use topics::settings::KafkaSettings;
use topics::spec::{CATALOGUE, CONNECTION_MANDATES};
use uuid::Uuid;

/// Settings from the environment (`eval "$(scripts/infra env)"`) with a database of the
/// test's own, an ephemeral port and a seed file with no customers.
pub fn test_settings() -> Settings {
    if std::env::var_os("TEST_LOG").is_some() {
        let _log = crm::telemetry::init();
    }
    let mut settings = crm::configuration::load().expect("settings load");
    settings.crm_database = format!("crm_test_{}", Uuid::new_v4().simple());
    settings.crm_listen_addr = "127.0.0.1:0".to_owned();
    settings.crm_seed_csv =
        write_seed("id,firstName,lastName,city,connectionId,connectionMandate\n");
    settings
}

/// Writes a seed file under the temp dir and returns its path.
pub fn write_seed(content: &str) -> PathBuf {
    let path = std::env::temp_dir().join(format!("crm-seed-{}.csv", Uuid::new_v4()));
    std::fs::write(&path, content).expect("seed file written");
    path
}

fn is_test_seed(path: &Path) -> bool {
    path.starts_with(std::env::temp_dir())
        && path
            .file_name()
            .is_some_and(|name| name.to_string_lossy().starts_with("crm-seed-"))
}

/// A connection id no other test (or run) uses, so the test's events are its own.
pub fn connection_id() -> String {
    format!("test-{}", Uuid::new_v4().simple())
}

pub fn customer_body(connection_id: &str, mandate: Value) -> Value {
    json!({
        "firstName": "Lieke",
        "lastName": "van der Meer",
        "city": "Leuven",
        "connectionId": connection_id,
        "connectionMandate": mandate,
    })
}

pub struct TestApp {
    pub address: String,
    pub settings: Settings,
    pub seed: SeedOutcome,
    pub client: reqwest::Client,
    stop: Option<oneshot::Sender<()>>,
    served: Option<JoinHandle<anyhow::Result<()>>>,
}

pub async fn spawn_app() -> TestApp {
    spawn_with(test_settings()).await
}

pub async fn spawn_with(settings: Settings) -> TestApp {
    let app = Application::build(settings.clone())
        .await
        .expect("app builds");
    let address = format!("http://127.0.0.1:{}", app.port());
    let seed = app.seed_outcome().clone();
    let (stop, stopped) = oneshot::channel();
    let served = tokio::spawn(app.run_until(async {
        let _ = stopped.await;
    }));
    TestApp {
        address,
        settings,
        seed,
        client: reqwest::Client::new(),
        stop: Some(stop),
        served: Some(served),
    }
}

impl TestApp {
    pub async fn get(&self, path: &str) -> reqwest::Response {
        self.client
            .get(format!("{}{path}", self.address))
            .send()
            .await
            .expect("request sent")
    }

    pub async fn post_customer(&self, body: &Value) -> reqwest::Response {
        self.client
            .post(format!("{}/customers", self.address))
            .json(body)
            .send()
            .await
            .expect("request sent")
    }

    pub async fn put_customer(&self, id: i64, body: &Value) -> reqwest::Response {
        self.client
            .put(format!("{}/customers/{id}", self.address))
            .json(body)
            .send()
            .await
            .expect("request sent")
    }

    /// POSTs `body`, asserts 201, returns the created customer.
    pub async fn create(&self, body: &Value) -> Value {
        let response = self.post_customer(body).await;
        assert_eq!(response.status(), 201);
        response.json().await.expect("customer JSON")
    }

    pub async fn database(&self) -> PgConnection {
        PgConnection::connect_with(&self.settings.database_options().unwrap())
            .await
            .expect("test database connects")
    }

    /// Stops serving and the relay, leaving the database for another start.
    pub async fn shutdown(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        if let Some(served) = self.served.take() {
            served.await.expect("app task").expect("app served");
        }
    }

    /// Stops the app and drops its database.
    pub async fn stop(mut self) {
        self.shutdown().await;
        let mut server = PgConnection::connect_with(&self.settings.server_options().unwrap())
            .await
            .expect("server connects");
        sqlx::query(&format!(
            "DROP DATABASE IF EXISTS \"{}\" WITH (FORCE)",
            self.settings.crm_database
        ))
        .execute(&mut server)
        .await
        .expect("test database dropped");
        if is_test_seed(&self.settings.crm_seed_csv) {
            let _ = std::fs::remove_file(&self.settings.crm_seed_csv);
        }
    }
}

/// Makes sure the topic and its schema exist on the cluster `kafka` points at.
pub async fn apply_topics(kafka: &KafkaSettings) {
    let kafka = kafka.clone();
    let cluster = tokio::task::spawn_blocking(move || Cluster::connect(&kafka))
        .await
        .unwrap()
        .expect("cluster connects");
    let registry = Registry::new(
        &crm::configuration::load()
            .unwrap()
            .kafka
            .schema_registry_url,
    );
    apply(&cluster, &registry, CATALOGUE)
        .await
        .expect("topics apply");
}

/// A mandate event as a consumer sees it.
#[derive(Debug, Clone)]
pub struct Received {
    pub key: String,
    pub header_event_id: Option<String>,
    /// The `event-seq` header: the outbox row id.
    pub seq: Option<i64>,
    pub event: ConnectionMandateChanged,
}

/// Reads `connection-mandates` from fixed offsets, keeping only the test's connections.
pub struct EventProbe {
    consumer: StreamConsumer,
    decoder: Decoder<ConnectionMandateChanged>,
}

impl EventProbe {
    /// From the current end of every partition: only what happens after this call.
    pub async fn from_end(kafka: &KafkaSettings) -> Self {
        Self::start(kafka, true).await
    }

    pub async fn from_beginning(kafka: &KafkaSettings) -> Self {
        Self::start(kafka, false).await
    }

    async fn start(kafka: &KafkaSettings, from_end: bool) -> Self {
        let group = format!("crm-test-{}", Uuid::new_v4());
        let consumer: StreamConsumer = consumer_config(kafka, &group)
            .create()
            .expect("consumer created");
        let topic = CONNECTION_MANDATES.name;
        let mut assignment = TopicPartitionList::new();
        for partition in 0..CONNECTION_MANDATES.partitions {
            let offset = if from_end {
                // Explicit offsets, not Offset::End: that is resolved later, when fetching
                // starts, and would miss events produced in between.
                let (_, high) = consumer
                    .fetch_watermarks(topic, partition, Duration::from_secs(10))
                    .expect("watermarks");
                Offset::Offset(high)
            } else {
                Offset::Beginning
            };
            assignment
                .add_partition_offset(topic, partition, offset)
                .unwrap();
        }
        consumer.assign(&assignment).expect("partitions assigned");
        let registry = Registry::new(&kafka.schema_registry_url);
        Self {
            consumer,
            decoder: Decoder::new(registry),
        }
    }

    /// Waits until `count` events for `keys` arrived, or fails after `timeout`.
    pub async fn expect(&self, keys: &[&str], count: usize, timeout: Duration) -> Vec<Received> {
        let deadline = Instant::now() + timeout;
        let mut received = Vec::new();
        while received.len() < count {
            let message = match tokio::time::timeout_at(deadline, self.consumer.recv()).await {
                Ok(message) => message.expect("consumer error"),
                Err(_) => panic!(
                    "only {} of {count} events for {keys:?} within {timeout:?}: {received:#?}",
                    received.len()
                ),
            };
            let key = String::from_utf8_lossy(message.key().unwrap_or_default()).into_owned();
            if !keys.contains(&key.as_str()) {
                continue;
            }
            let header = |name: &str| {
                message.headers().and_then(|headers| {
                    headers
                        .iter()
                        .find(|h| h.key == name)
                        .and_then(|h| h.value)
                        .map(|v| String::from_utf8_lossy(v).into_owned())
                })
            };
            let header_event_id = header(EVENT_ID_HEADER);
            let seq = header(SEQUENCE_HEADER).map(|v| v.parse().expect("event-seq is decimal"));
            let event = self
                .decoder
                .decode(message.payload().expect("payload"))
                .await
                .expect("event decodes");
            received.push(Received {
                key,
                header_event_id,
                seq,
                event,
            });
        }
        received
    }
}
