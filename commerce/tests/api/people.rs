//! The users and delivery services under test: settings of their own (databases, read-model
//! namespaces, consumer groups, change topic), the connector streaming the users database
//! in this process, and cleanup of what they leave on the shared servers.

use std::time::Duration;

use commerce::configuration::Settings;
use serde_json::{json, Value};
use sqlx::{Connection, PgConnection};
use tokio::sync::watch;
use tokio::task::JoinHandle;

use rdkafka::consumer::{CommitMode, Consumer, StreamConsumer};
use topics::commerce::{DeliveryEvent, OrderEvent, UserEvent};
use topics::events::Event;
use topics::kafka::consumer_config;
use topics::settings::KafkaSettings;
use topics::spec::TopicSpec;

use crate::helpers::{end_offsets, test_settings};

/// [`test_settings`] plus the users and delivery services' names of their own.
pub fn people_settings() -> Settings {
    let mut settings = test_settings();
    let name = testkit::unique("cu");
    settings.users_database = format!("commerce_test_users_{name}");
    settings.delivery_database = format!("commerce_test_delivery_{name}");
    settings.users_listen_addr = "127.0.0.1:0".to_owned();
    settings.delivery_listen_addr = "127.0.0.1:0".to_owned();
    settings.users_changes_topic = format!("{name}.public.users");
    settings.users_read_model = format!("{name}:users");
    settings.delivery_read_model = format!("{name}:packages");
    settings.users_group = format!("{name}-users");
    settings.delivery_group = format!("{name}-delivery");
    settings.mysql_url = testkit::env::mysql_url();
    settings.delivery_dispatch_interval_ms = 200;
    settings
}

/// Commits `group`'s offsets at the topic's end, so the group follows only what comes next
/// (the shared topics hold every other test's events).
pub async fn start_group_at_end(kafka: &KafkaSettings, group: &str, topic: &TopicSpec) {
    let consumer: StreamConsumer = consumer_config(kafka, group).create().expect("consumer");
    let offsets = end_offsets(&consumer, topic);
    consumer.assign(&offsets).expect("assigned");
    // A new group's coordinator may still be moving or loading (NotCoordinator,
    // CoordinatorLoadInProgress): transient, so retried for a bounded time.
    let (consumer, offsets) = (&consumer, &offsets);
    testkit::eventually(
        "the group's offsets are committed",
        std::time::Duration::from_secs(30),
        || async move { consumer.commit(offsets, CommitMode::Sync).is_ok() },
    )
    .await;
}

/// Starts the delivery service's and the users service's groups of `settings` at the end of
/// the shared topics they follow: every other test's Shipped orders and delivery agents are
/// on them, and a service reading them from the beginning would act on those.
pub async fn start_groups_at_end(settings: &Settings) {
    for (suffix, topic) in [("orders", OrderEvent::TOPIC), ("users", UserEvent::TOPIC)] {
        let group = format!("{}.{suffix}", settings.delivery_group);
        start_group_at_end(&settings.kafka, &group, topic).await;
    }
    let group = format!("{}.deliveries", settings.users_group);
    start_group_at_end(&settings.kafka, &group, DeliveryEvent::TOPIC).await;
}

/// The connector streaming the users database to `settings.users_changes_topic`, in this
/// process; [`Connector::stop`] drops its slot.
pub struct Connector {
    stop: watch::Sender<bool>,
    task: Option<JoinHandle<connector::Result<()>>>,
    slot: String,
    settings: Settings,
}

impl Connector {
    pub async fn start(settings: &Settings) -> Self {
        let name = settings
            .users_changes_topic
            .strip_suffix(".public.users")
            .expect("a change topic of public.users")
            .to_owned();
        let slot = format!("{}_slot", settings.users_database);
        let file = std::env::temp_dir().join(format!("{name}.toml"));
        std::fs::write(
            &file,
            format!(
                "name = \"{name}\"\nslot_name = \"{slot}\"\npublication_name = \"{}_pub\"\n\
                 tables = [\"public.users\"]\nformat = \"avro\"\noffsets_topic = \"{name}.offsets\"\n\
                 heartbeat_interval_ms = 500\nlinger_ms = 1\n",
                settings.users_database
            ),
        )
        .expect("connector config written");
        let mut config = connector::config::Config::load(Some(&file)).expect("connector config");
        std::fs::remove_file(&file).ok();
        config.postgres_url =
            testkit::env::with_database(&settings.postgres_url, &settings.users_database);
        config.kafka_bootstrap_servers = settings.kafka.kafka_bootstrap_servers.clone();
        config.schema_registry_url = settings.kafka.schema_registry_url.clone();
        let (stop, stopped) = watch::channel(false);
        // A connector that gives up says why at once, instead of the test waiting it out.
        let task = tokio::spawn(async move {
            let ended = connector::runner::run(config, stopped).await;
            if let Err(e) = &ended {
                eprintln!("the users connector stopped: {e}");
            }
            ended
        });
        Self {
            stop,
            task: Some(task),
            slot,
            settings: settings.clone(),
        }
    }

    /// Stops the connector and drops its slot (a slot left behind holds WAL on the server).
    pub async fn stop(mut self) {
        let _ = self.stop.send(true);
        if let Some(task) = self.task.take() {
            match tokio::time::timeout(Duration::from_secs(30), task).await {
                Ok(Ok(Ok(()))) => {}
                other => eprintln!("connector ended: {other:?}"),
            }
        }
        drop_slot(&self.settings.postgres_url, &self.slot).await;
    }
}

/// A test that failed before [`Connector::stop`] still drops the slot and the databases, on
/// a runtime of its own.
impl Drop for Connector {
    fn drop(&mut self) {
        let Some(task) = self.task.take() else {
            return;
        };
        task.abort();
        let (settings, slot) = (self.settings.clone(), self.slot.clone());
        let _ = std::thread::spawn(move || {
            if let Ok(runtime) = tokio::runtime::Runtime::new() {
                runtime.block_on(async {
                    drop_slot(&settings.postgres_url, &slot).await;
                    drop_people(&settings).await;
                });
            }
        })
        .join();
    }
}

async fn drop_slot(url: &str, slot: &str) {
    testkit::eventually(
        "the connector's slot is dropped",
        Duration::from_secs(20),
        || async move {
            let Ok(mut conn) = PgConnection::connect(url).await else {
                return false;
            };
            sqlx::query(
                "SELECT pg_drop_replication_slot(slot_name) FROM pg_replication_slots
                 WHERE slot_name = $1",
            )
            .bind(slot)
            .execute(&mut conn)
            .await
            .is_ok()
        },
    )
    .await;
}

/// Drops every database and read model of `settings` if the test fails before it does.
pub struct Cleanup {
    settings: Option<Settings>,
}

impl Cleanup {
    pub fn new(settings: &Settings) -> Self {
        Self {
            settings: Some(settings.clone()),
        }
    }

    /// The test cleans up itself from here on.
    pub fn disarm(mut self) {
        self.settings = None;
    }
}

impl Drop for Cleanup {
    fn drop(&mut self) {
        let Some(settings) = self.settings.take() else {
            return;
        };
        let _ = std::thread::spawn(move || {
            if let Ok(runtime) = tokio::runtime::Runtime::new() {
                runtime.block_on(async {
                    drop_people(&settings).await;
                    crate::helpers::drop_databases(&settings).await;
                });
            }
        })
        .join();
    }
}

/// Drops the users and delivery databases and the read models' tables.
pub async fn drop_people(settings: &Settings) {
    let mut server = PgConnection::connect_with(&settings.server_options().unwrap())
        .await
        .expect("server connects");
    for name in [&settings.users_database, &settings.delivery_database] {
        sqlx::query(&format!("DROP DATABASE IF EXISTS \"{name}\" WITH (FORCE)"))
            .execute(&mut server)
            .await
            .expect("test database dropped");
    }
    for namespace in [&settings.users_read_model, &settings.delivery_read_model] {
        let store = projectors::store::mysql::MysqlStore::connect(&settings.mysql_url, namespace)
            .await
            .expect("read model store");
        projectors::Store::clear(&store)
            .await
            .expect("read model dropped");
    }
}

/// A valid user body; `n` makes email and username unique.
pub fn user_body(n: usize, user_type: &str) -> Value {
    json!({
        "email": format!("user{n}@example.com"),
        "username": format!("user{n}"),
        "firstName": "Ann",
        "lastName": "Smit",
        "address": {
            "street": "Markt 1",
            "city": "Gouda",
            "state": "ZH",
            "zipCode": "2801 AA",
            "country": "NL"
        },
        "geolocation": { "latitude": 52.01, "longitude": 4.71 },
        "phoneNumber": "+31 182 000 000",
        "userType": user_type
    })
}
