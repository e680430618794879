//! The runtime against the real broker, registry and MariaDB: changes the store can never
//! take are dead-lettered with its reason, and everything else applies, in order, once.
//!
//! Two kinds of refusal: a key beyond the store's limits (refused before any SQL runs) and a
//! real constraint violation (SQLSTATE 23000 from a CHECK constraint on the documents table),
//! which fails a whole batch and sends the runtime down its event-by-event path.

use std::collections::HashMap;
use std::time::Duration;

use projectors::store::mysql::{table_prefix, MysqlStore};
use projectors::{Projection, Projector, ProjectorSettings, Store};
use rdkafka::producer::{FutureProducer, FutureRecord};
use serde_json::{json, Value};
use testkit::{eventually, unique};
use topics::apply::apply;
use topics::cluster::Cluster;
use topics::codec::Encoder;
use topics::events::{ConnectionMandateChanged, Event, MandateLevel};
use topics::registry::Registry;
use topics::settings::KafkaSettings;
use topics::spec::{CleanupPolicy, TopicSpec, CATALOGUE, CONNECTION_MANDATES};
use uuid::Uuid;

/// Customer ids that make the projection write what the store refuses.
const LONG_KEY: i64 = 666;
const VIOLATES_CHECK: i64 = 667;

/// Counts each connection's events; two customer ids produce documents the store refuses (a
/// poisoned document stays poisoned, so the constraint sees it whatever follows in a batch).
struct Counts;

impl Projection for Counts {
    type Event = ConnectionMandateChanged;
    type Document = Value;

    fn name(&self) -> &str {
        "counts"
    }

    fn key(&self, event: &ConnectionMandateChanged) -> String {
        match event.customer_id {
            LONG_KEY => "k".repeat(300),
            _ => event.key().to_owned(),
        }
    }

    fn fold(&self, state: Option<&Value>, event: &ConnectionMandateChanged) -> Option<Value> {
        let count = state.and_then(|s| s["count"].as_u64()).unwrap_or(0) + 1;
        let mut document = json!({ "count": count, "last": event.event_id });
        if event.customer_id == VIOLATES_CHECK || state.is_some_and(|s| s["poison"] == true) {
            document["poison"] = json!(true);
        }
        Some(document)
    }
}

fn kafka() -> KafkaSettings {
    KafkaSettings {
        kafka_bootstrap_servers: testkit::env::kafka_bootstrap(),
        schema_registry_url: testkit::env::registry_url(),
    }
}

async fn topic(kafka: &KafkaSettings, prefix: &str) -> String {
    let name = unique(prefix);
    let spec = TopicSpec {
        name: Box::leak(name.clone().into_boxed_str()),
        cleanup_policy: CleanupPolicy::Delete,
        value_schema: None,
        ..CONNECTION_MANDATES
    };
    let cluster = Cluster::connect(kafka).unwrap();
    let registry = Registry::new(&kafka.schema_registry_url);
    apply(&cluster, &registry, &[spec]).await.unwrap();
    apply(&cluster, &registry, CATALOGUE).await.unwrap();
    name
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn changes_the_store_refuses_are_dead_lettered_and_the_rest_apply() {
    let kafka = kafka();
    let (events_topic, dead_letter_topic) = (
        topic(&kafka, "test-refused").await,
        topic(&kafka, "test-refused-dlq").await,
    );
    let namespace = format!("test:{}", unique("refused"));
    let store = MysqlStore::connect(&testkit::env::mysql_url(), &namespace)
        .await
        .unwrap();
    sqlx::query(&format!(
        "ALTER TABLE `{}_documents` ADD CONSTRAINT no_poison CHECK (JSON_EXTRACT(document, '$.poison') IS NULL)",
        table_prefix(&namespace)
    ))
    .execute(store.pool())
    .await
    .unwrap();

    // 8 connections × 25 events; every 10th event of a connection is refused by the store.
    let mut published = Vec::new();
    let mut expected: HashMap<String, u64> = HashMap::new();
    for i in 0..200 {
        let connection = format!("c-{}", i % 8);
        let customer_id = match i / 8 {
            n if n % 10 == 3 => LONG_KEY,
            n if n % 10 == 7 => VIOLATES_CHECK,
            _ => 1,
        };
        if customer_id == 1 {
            *expected.entry(connection.clone()).or_default() += 1;
        }
        published.push(ConnectionMandateChanged {
            event_id: Uuid::new_v4(),
            connection_id: connection.parse().unwrap(),
            customer_id,
            mandate: MandateLevel::RealTime,
            occurred_at: i,
        });
    }
    let of = |customer| {
        published
            .iter()
            .filter(|e| e.customer_id == customer)
            .count()
    };
    let (long_keys, violations) = (of(LONG_KEY), of(VIOLATES_CHECK));
    let encoder =
        Encoder::<ConnectionMandateChanged>::connect(&Registry::new(&kafka.schema_registry_url))
            .await
            .unwrap();
    let producer: FutureProducer = topics::kafka::producer_config(&kafka).create().unwrap();
    for event in &published {
        let payload = encoder.encode(event).unwrap();
        producer
            .send(
                FutureRecord::to(&events_topic)
                    .key(event.key())
                    .payload(&payload),
                Duration::from_secs(10),
            )
            .await
            .map_err(|(e, _)| e)
            .unwrap();
    }

    let group = unique("test-refused");
    let projector = Projector::new(
        Counts,
        store.clone(),
        ProjectorSettings {
            kafka: kafka.clone(),
            group_id: group.clone(),
            topic: events_topic.clone(),
            dead_letter_topic: dead_letter_topic.clone(),
            max_batch: 64,
        },
    )
    .unwrap();
    let status = projector.status();
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let task = tokio::spawn(projector.run(async move {
        let _ = stopped.await;
    }));
    eventually(
        "every event applied or dead-lettered",
        Duration::from_secs(60),
        || {
            let status = status.clone();
            async move {
                use std::sync::atomic::Ordering::Relaxed;
                status.applied.load(Relaxed) + status.dead_lettered.load(Relaxed) >= 200
            }
        },
    )
    .await;
    let _ = stop.send(());
    task.await.unwrap().unwrap();

    for (connection, count) in &expected {
        let document = store.get(connection).await.unwrap().unwrap();
        assert_eq!(document["count"], *count, "{connection}: {document}");
        assert!(document.get("poison").is_none(), "{connection}: {document}");
    }
    let (kafka2, topic2, group2) = (kafka.clone(), dead_letter_topic.clone(), group.clone());
    let dead = tokio::task::spawn_blocking(move || {
        projectors::dead_letters::of_group(&kafka2, &topic2, &group2, None).unwrap()
    })
    .await
    .unwrap();
    assert_eq!(dead.len(), long_keys + violations, "{dead:?}");
    assert!(dead.iter().all(|d| d.topic == events_topic));
    let too_long = dead
        .iter()
        .filter(|d| d.reason.contains("300 characters"))
        .count();
    let constraint = dead
        .iter()
        .filter(|d| d.reason.contains("no_poison") || d.reason.contains("CONSTRAINT"))
        .count();
    assert_eq!((too_long, constraint), (long_keys, violations), "{dead:?}");
    store.clear().await.unwrap();
}
