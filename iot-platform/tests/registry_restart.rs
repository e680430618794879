//! Issue 8's "done when" for durable schema ids: the schema registry is killed (`kill -9`) and
//! started again, then the IoT platform restarts; a mandate changed in the CRM afterwards is
//! served, every record on the topic still decodes, and nothing was dead-lettered.
//!
//! Runs on a Kafka and a registry of its own (isolated `scripts/infra` instances), so the
//! topics, their schema ids and the dead-letter topic belong to this test alone and the
//! shared registry is never touched. The CRM's database, the registry's database and the read
//! model's namespace are private names on the shared PostgreSQL and Redis.

mod common;

use std::collections::HashSet;
use std::path::PathBuf;
use std::process::Command;
use std::time::{Duration, Instant};

use iot_platform::configuration::Settings as IotSettings;
use projectors::digest::Digest;
use rdkafka::consumer::{Consumer, StreamConsumer};
use rdkafka::error::KafkaError;
use rdkafka::message::Message;
use rdkafka::{Offset, TopicPartitionList};
use reqwest::StatusCode;
use serde_json::{json, Value};
use testkit::fold::Fold;
use testkit::{eventually, Isolated};
use tokio::sync::oneshot;
use tokio::task::JoinHandle;
use topics::apply::apply;
use topics::cluster::Cluster;
use topics::codec::Decoder;
use topics::events::{ConnectionMandateChanged, Event};
use topics::registry::Registry;
use topics::settings::KafkaSettings;
use topics::spec::{CATALOGUE, CONNECTION_MANDATES, IOT_PLATFORM_DEAD_LETTERS};

const CUSTOMERS: u64 = 12;
const WITHIN: Duration = Duration::from_secs(90);

/// What lives outside the isolated instances' homes: two databases on the shared PostgreSQL
/// and the seed file. Declared first, so it is dropped after the apps and the instances.
struct Cleanup {
    postgres_url: String,
    databases: Vec<String>,
    seed: PathBuf,
}

impl Drop for Cleanup {
    fn drop(&mut self) {
        for database in &self.databases {
            let _ = Command::new("psql")
                .args(["-X", "-q", &self.postgres_url, "-c"])
                .arg(format!(
                    "drop database if exists \"{database}\" with (force)"
                ))
                .output();
        }
        let _ = std::fs::remove_file(&self.seed);
    }
}

struct Crm {
    base_url: String,
    stop: oneshot::Sender<()>,
    task: JoinHandle<anyhow::Result<()>>,
}

impl Crm {
    async fn start(settings: crm::configuration::Settings) -> Self {
        let app = crm::startup::Application::build(settings).await.unwrap();
        let base_url = format!("http://127.0.0.1:{}", app.port());
        let (stop, stopped) = oneshot::channel();
        let task = tokio::spawn(app.run_until(async move {
            let _ = stopped.await;
        }));
        Self {
            base_url,
            stop,
            task,
        }
    }

    async fn put(&self, id: u64, connection: &str, mandate: u64) {
        let response = reqwest::Client::new()
            .put(format!("{}/customers/{id}", self.base_url))
            .json(&json!({
                "firstName": "Femke", "lastName": "Bakker", "city": "Delft",
                "connectionId": connection, "connectionMandate": mandate,
            }))
            .send()
            .await
            .unwrap();
        assert!(
            response.status().is_success(),
            "PUT /customers/{id}: {}",
            response.status()
        );
    }

    async fn stop(self) {
        let _ = self.stop.send(());
        self.task.await.unwrap().unwrap();
    }
}

async fn get_json(url: &str) -> Option<Value> {
    let response = reqwest::get(url).await.ok()?;
    if response.status() != StatusCode::OK {
        return None;
    }
    response.json().await.ok()
}

/// Waits until the IoT platform at `base_url` serves every `(connection, mandate)`; panics at
/// once if its projector dead-letters anything, and on timeout with its `/health`.
async fn await_served(what: &str, base_url: &str, expected: &[(String, u64)]) {
    let deadline = Instant::now() + WITHIN;
    loop {
        let health = get_json(&format!("{base_url}/health")).await;
        let dead = health.as_ref().and_then(|h| h["deadLettered"].as_u64());
        assert!(
            dead.unwrap_or(0) == 0,
            "{what}: the IoT platform dead-lettered events: {health:?}"
        );
        let mut pending = None;
        for (connection, mandate) in expected {
            let shown = get_json(&format!("{base_url}/mandates/{connection}")).await;
            if shown.as_ref().and_then(|s| s["mandate"].as_u64()) != Some(*mandate) {
                pending = Some((connection, mandate, shown));
                break;
            }
        }
        let Some((connection, mandate, shown)) = pending else {
            return;
        };
        assert!(
            Instant::now() < deadline,
            "timed out after {WITHIN:?} waiting until {what}: {connection} should have mandate \
             {mandate} but shows {shown:?}; health {health:?}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// Every record on the (isolated) mandates topic, decoded through the registry and folded per
/// connection, read until each partition reports its end. The topic is quiet by then.
async fn topic_fold(kafka: &KafkaSettings) -> Fold {
    let consumer: StreamConsumer =
        topics::kafka::consumer_config(kafka, &testkit::unique("registry_restart_fold"))
            .set("enable.partition.eof", "true")
            .create()
            .unwrap();
    let mut assignment = TopicPartitionList::new();
    for partition in 0..CONNECTION_MANDATES.partitions {
        assignment
            .add_partition_offset(CONNECTION_MANDATES.name, partition, Offset::Beginning)
            .unwrap();
    }
    consumer.assign(&assignment).unwrap();
    let decoder =
        Decoder::<ConnectionMandateChanged>::new(Registry::new(&kafka.schema_registry_url));
    let mut fold = Fold::default();
    let mut at_end = HashSet::new();
    while at_end.len() < CONNECTION_MANDATES.partitions as usize {
        let received = tokio::time::timeout(WITHIN, consumer.recv())
            .await
            .expect("the mandates topic reaches its end");
        match received {
            Err(KafkaError::PartitionEOF(partition)) => {
                at_end.insert(partition);
            }
            Err(e) => panic!("reading {}: {e}", CONNECTION_MANDATES.name),
            Ok(message) => {
                let payload = message.payload().expect("a mandate record has a value");
                let event = decoder.decode(payload).await.unwrap_or_else(|e| {
                    panic!(
                        "record {}/{} does not decode after the registry restart: {e}",
                        message.partition(),
                        message.offset()
                    )
                });
                fold.push(event.key(), &event.event_id.to_string());
            }
        }
    }
    fold
}

/// The read model at `base_url` holds, for every connection, the digest of exactly the events
/// the topic holds for it, in order.
async fn assert_matches_fold(base_url: &str, fold: &Fold) {
    for (connection, events) in fold.keys() {
        let shown = get_json(&format!("{base_url}/mandates/{connection}"))
            .await
            .unwrap_or_else(|| panic!("{base_url} serves nothing for {connection}"));
        let history: Digest = serde_json::from_value(shown["history"].clone()).unwrap();
        assert_eq!(
            history,
            Digest::of(events.iter().map(String::as_str)),
            "{connection} at {base_url}: {shown}"
        );
        assert_eq!(shown["eventId"].as_str(), events.last().map(String::as_str));
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn after_a_registry_kill_and_an_iot_restart_crm_changes_are_served_and_nothing_is_dead_lettered(
) {
    let run = testkit::unique("rr");
    let seed = std::env::temp_dir().join(format!("{run}-seed.csv"));
    let mut csv = String::from("id,firstName,lastName,city,connectionId,connectionMandate\n");
    let mut expected = Vec::new();
    for id in 1..=CUSTOMERS {
        let connection = format!("{run}-{id}");
        csv.push_str(&format!(
            "{id},Femke,Bakker,Delft,{connection},{}\n",
            id % 3
        ));
        expected.push((connection, id % 3));
    }
    std::fs::write(&seed, csv).unwrap();

    let crm_defaults = crm::configuration::load().unwrap();
    let registry_database = format!("{run}_registry");
    let crm_database = format!("{run}_crm");
    let _cleanup = Cleanup {
        postgres_url: crm_defaults.postgres_url.clone(),
        databases: vec![crm_database.clone(), registry_database.clone()],
        seed: seed.clone(),
    };

    let kafka = Isolated::new("kafka");
    let registry = Isolated::new("registry").with_env("REGISTRY_DB", &registry_database);
    tokio::join!(kafka.up_async(), registry.up_async());
    let registry_url = format!("http://127.0.0.1:{}/apis/ccompat/v7", registry.port());
    let kafka_settings = KafkaSettings {
        kafka_bootstrap_servers: kafka.address(),
        schema_registry_url: registry_url.clone(),
    };
    // `topics apply` against the isolated pair, once: never again after the restart.
    let connect = kafka_settings.clone();
    let cluster = tokio::task::spawn_blocking(move || Cluster::connect(&connect))
        .await
        .unwrap()
        .unwrap();
    apply(&cluster, &Registry::new(&registry_url), CATALOGUE)
        .await
        .unwrap();

    let crm = Crm::start(crm::configuration::Settings {
        kafka: kafka_settings.clone(),
        crm_database,
        crm_listen_addr: "127.0.0.1:0".to_owned(),
        crm_seed_csv: seed.clone(),
        ..crm_defaults
    })
    .await;
    let iot_settings = IotSettings {
        kafka: kafka_settings.clone(),
        iot_listen_addr: "127.0.0.1:0".to_owned(),
        iot_group: format!("{run}-iot"),
        iot_namespace: format!("test:{run}:iot"),
        ..IotSettings::load().unwrap()
    };
    let iot = common::spawn(iot_settings.clone()).await;
    await_served("the seeded mandates are served", &iot.base_url, &expected).await;
    iot.stop().await;

    // The registry crashes; a change made meanwhile waits in the CRM's outbox or is
    // published under the id the relay already knows.
    registry.kill();
    eventually("the killed registry stops answering", WITHIN, || async {
        reqwest::get(format!("{registry_url}/subjects"))
            .await
            .is_err()
    })
    .await;
    crm.put(1, &expected[0].0, 2).await;
    expected[0].1 = 2;
    registry.up_async().await;

    // The restarted IoT platform has no schema cached: it asks the restarted registry.
    let iot = common::spawn(iot_settings.clone()).await;
    await_served(
        "the change made while the registry was down is served",
        &iot.base_url,
        &expected,
    )
    .await;
    crm.put(2, &expected[1].0, 0).await;
    expected[1].1 = 0;
    await_served(
        "a change made after the restarts is served",
        &iot.base_url,
        &expected,
    )
    .await;

    // A fresh read model replays the whole topic, records from before the restart included.
    let replay = common::spawn(IotSettings {
        iot_group: format!("{run}-replay"),
        iot_namespace: format!("test:{run}:replay"),
        ..iot_settings
    })
    .await;
    await_served(
        "a replay from the beginning serves everything",
        &replay.base_url,
        &expected,
    )
    .await;

    let fold = topic_fold(&kafka_settings).await;
    let keys: HashSet<&str> = fold.keys().map(|(k, _)| k).collect();
    let connections: HashSet<&str> = expected.iter().map(|(c, _)| c.as_str()).collect();
    assert_eq!(keys, connections);
    assert!(
        fold.events() > expected.len(),
        "the two changes are on the topic"
    );
    assert_matches_fold(&iot.base_url, &fold).await;
    assert_matches_fold(&replay.base_url, &fold).await;

    let dead_letters = cluster
        .partitions(IOT_PLATFORM_DEAD_LETTERS.name)
        .await
        .unwrap()
        .expect("the dead-letter topic exists");
    assert!(
        dead_letters.iter().all(|p| p.high_watermark == 0),
        "records were dead-lettered: {dead_letters:?}"
    );

    replay.stop().await;
    iot.stop().await;
    crm.stop().await;
}
