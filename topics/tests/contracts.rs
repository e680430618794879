//! The contracts against the real broker and schema registry started by `scripts/infra up`.

use std::process::Command;
use std::time::{Duration, Instant};

use apache_avro::types::Value;
use apache_avro::writer::datum::GenericDatumWriter;
use apache_avro::Schema;
use rdkafka::consumer::{Consumer, StreamConsumer};
use rdkafka::message::{Headers, Message};
use rdkafka::producer::{FutureProducer, FutureRecord};
use topics::apply::{apply, SchemaOutcome, TopicOutcome};
use topics::cluster::Cluster;
use topics::codec::{Decoder, Encoder};
use topics::events::{ConnectionMandateChanged, MandateLevel};
use topics::registry::{Compatibility, Registry};
use topics::settings::{self, KafkaSettings};
use topics::spec::{CleanupPolicy, TopicSpec, CONNECTION_MANDATES};
use topics::Error;
use uuid::Uuid;

const V1: &str = match CONNECTION_MANDATES.value_schema {
    Some(schema) => schema,
    None => panic!("connection-mandates has a value schema"),
};

fn settings() -> KafkaSettings {
    settings::load("topics-test").expect("settings load")
}

/// A topic of the test's own, so runs never see each other's records or schemas.
fn test_spec(partitions: i32, schema: &str) -> TopicSpec {
    TopicSpec {
        name: Box::leak(format!("test-contracts-{}", Uuid::new_v4()).into_boxed_str()),
        partitions,
        value_schema: Some(Box::leak(schema.to_owned().into_boxed_str())),
        ..CONNECTION_MANDATES
    }
}

/// V1 plus a field; with a default old records still resolve (BACKWARD), without one they don't.
fn v2(default: bool) -> String {
    let field = if default {
        r#"{ "name": "channel", "type": "string", "default": "api" }"#
    } else {
        r#"{ "name": "channel", "type": "string" }"#
    };
    let mut schema: serde_json::Value = serde_json::from_str(V1).unwrap();
    schema["fields"]
        .as_array_mut()
        .unwrap()
        .push(serde_json::from_str(field).unwrap());
    schema.to_string()
}

#[tokio::test]
async fn apply_creates_topics_and_schemas_then_changes_nothing() {
    let settings = settings();
    let cluster = Cluster::connect(&settings).unwrap();
    let registry = Registry::new(&settings.schema_registry_url);
    let spec = test_spec(4, V1);

    let first = apply(&cluster, &registry, &[spec]).await.unwrap();
    assert!(
        matches!(
            first.topics[0].1,
            TopicOutcome::Created { partitions: 4, .. }
        ),
        "{first}"
    );
    assert!(
        matches!(first.schemas[0].1, SchemaOutcome::Registered { .. }),
        "{first}"
    );

    let state = cluster
        .topic(spec.name)
        .await
        .unwrap()
        .expect("topic exists");
    assert_eq!(state.partitions.len(), 4);
    assert_eq!(
        CleanupPolicy::from_config(&state.configs["cleanup.policy"]),
        Some(CleanupPolicy::Compact)
    );
    let latest = registry
        .latest(&spec.value_subject())
        .await
        .unwrap()
        .expect("schema registered");
    assert_eq!(latest.version, 1);

    let second = apply(&cluster, &registry, &[spec]).await.unwrap();
    assert!(
        second.changed_nothing(),
        "second apply changed something:\n{second}"
    );
}

#[tokio::test]
async fn an_existing_topic_with_other_partitions_is_reported() {
    let settings = settings();
    let cluster = Cluster::connect(&settings).unwrap();
    let registry = Registry::new(&settings.schema_registry_url);
    let spec = test_spec(2, V1);
    apply(&cluster, &registry, &[spec]).await.unwrap();

    let report = apply(
        &cluster,
        &registry,
        &[TopicSpec {
            partitions: 3,
            ..spec
        }],
    )
    .await
    .unwrap();
    let drifted: Vec<_> = report.drifted().collect();
    assert_eq!(drifted.len(), 1, "{report}");
    assert!(
        drifted[0].1[0].contains("has 2 partitions, spec says 3"),
        "{report}"
    );
}

#[tokio::test]
async fn a_schema_change_that_breaks_backward_compatibility_is_refused() {
    let settings = settings();
    let cluster = Cluster::connect(&settings).unwrap();
    let registry = Registry::new(&settings.schema_registry_url);
    let spec = test_spec(1, V1);
    apply(&cluster, &registry, &[spec]).await.unwrap();

    let breaking = TopicSpec {
        value_schema: Some(Box::leak(v2(false).into_boxed_str())),
        ..spec
    };
    let err = apply(&cluster, &registry, &[breaking]).await.unwrap_err();
    assert!(matches!(err, Error::IncompatibleSchema { .. }), "{err}");
    let latest = registry
        .latest(&spec.value_subject())
        .await
        .unwrap()
        .unwrap();
    assert_eq!(latest.version, 1, "a refused schema must not be registered");

    let compatible = TopicSpec {
        value_schema: Some(Box::leak(v2(true).into_boxed_str())),
        ..spec
    };
    assert_eq!(
        registry
            .check_compatibility(&spec.value_subject(), compatible.value_schema.unwrap())
            .await
            .unwrap(),
        Compatibility::Compatible
    );
    let report = apply(&cluster, &registry, &[compatible]).await.unwrap();
    assert!(
        matches!(report.schemas[0].1, SchemaOutcome::Registered { .. }),
        "{report}"
    );
    assert_eq!(
        registry
            .latest(&spec.value_subject())
            .await
            .unwrap()
            .unwrap()
            .version,
        2
    );
}

#[test]
fn the_cli_applies_the_catalogue_and_refuses_a_breaking_schema() {
    let topics = env!("CARGO_BIN_EXE_topics");
    let run = |args: &[&str]| {
        Command::new(topics)
            .args(args)
            .output()
            .expect("topics runs")
    };

    let first = run(&["apply"]);
    assert!(
        first.status.success(),
        "{}",
        String::from_utf8_lossy(&first.stderr)
    );
    let second = run(&["apply"]);
    let stdout = String::from_utf8_lossy(&second.stdout);
    assert!(
        second.status.success() && stdout.contains("nothing to change"),
        "{stdout}"
    );

    let describe = run(&["describe", CONNECTION_MANDATES.name]);
    let stdout = String::from_utf8_lossy(&describe.stdout);
    assert_eq!(
        stdout
            .lines()
            .filter(|l| l.starts_with(char::is_numeric))
            .count(),
        4,
        "{stdout}"
    );

    let file = std::env::temp_dir().join(format!("breaking-{}.avsc", Uuid::new_v4()));
    std::fs::write(&file, v2(false)).unwrap();
    let refused = run(&[
        "apply",
        "--schema",
        &format!("connection-mandates={}", file.display()),
    ]);
    std::fs::remove_file(&file).unwrap();
    let stderr = String::from_utf8_lossy(&refused.stderr);
    assert!(!refused.status.success(), "a breaking schema was accepted");
    assert_eq!(
        stderr.trim().lines().count(),
        1,
        "cause is not one line: {stderr}"
    );
    assert!(stderr.contains("breaks BACKWARD compatibility"), "{stderr}");

    let missing = run(&["describe", "no-such-topic"]);
    assert!(!missing.status.success());
}

fn mandate(connection_id: &str, mandate: MandateLevel) -> ConnectionMandateChanged {
    ConnectionMandateChanged {
        event_id: Uuid::new_v4(),
        connection_id: connection_id.parse().unwrap(),
        customer_id: 42,
        mandate,
        occurred_at: 1_763_750_000_000,
    }
}

#[tokio::test]
async fn events_round_trip_through_kafka_in_the_wire_format() {
    let settings = settings();
    let cluster = Cluster::connect(&settings).unwrap();
    let registry = Registry::new(&settings.schema_registry_url);
    let spec = test_spec(1, V1);
    apply(&cluster, &registry, &[spec]).await.unwrap();
    let v1_id = registry
        .latest(&spec.value_subject())
        .await
        .unwrap()
        .unwrap()
        .id;

    // A newer producer writes with a compatible v2; the v1 reader must still decode it.
    let v2_text = v2(true);
    let v2_id = registry
        .register(&spec.value_subject(), &v2_text)
        .await
        .unwrap();
    assert_ne!(v1_id, v2_id);

    let encoder = Encoder::<ConnectionMandateChanged>::with_schema_id(v1_id).unwrap();
    let sent = mandate("EAN-1", MandateLevel::RealTime);
    let v1_payload = encoder.encode(&sent).unwrap();
    assert_eq!(
        &v1_payload[..5],
        &[
            0,
            (v1_id >> 24) as u8,
            (v1_id >> 16) as u8,
            (v1_id >> 8) as u8,
            v1_id as u8
        ]
    );

    let v2_schema = Schema::parse_str(&v2_text).unwrap();
    let newer = Value::Record(vec![
        ("event_id".into(), Value::String(Uuid::new_v4().to_string())),
        ("connection_id".into(), Value::String("EAN-2".into())),
        ("customer_id".into(), Value::Long(7)),
        ("mandate".into(), Value::Enum(1, "BILLING_ONLY".into())),
        (
            "occurred_at".into(),
            Value::TimestampMillis(1_763_750_000_001),
        ),
        ("channel".into(), Value::String("csv".into())),
    ]);
    let mut v2_payload = vec![0];
    v2_payload.extend_from_slice(&v2_id.to_be_bytes());
    v2_payload.extend(
        GenericDatumWriter::builder(&v2_schema)
            .build()
            .unwrap()
            .write_value_to_vec(newer)
            .unwrap(),
    );

    let producer: FutureProducer = topics::kafka::producer_config(&settings).create().unwrap();
    for (key, payload) in [("EAN-1", &v1_payload), ("EAN-2", &v2_payload)] {
        producer
            .send(
                FutureRecord::to(spec.name).key(key).payload(payload),
                Duration::from_secs(10),
            )
            .await
            .map_err(|(e, _)| e)
            .unwrap();
    }

    let group = format!("test-contracts-{}", Uuid::new_v4());
    let consumer: StreamConsumer = topics::kafka::consumer_config(&settings, &group)
        .create()
        .unwrap();
    consumer.subscribe(&[spec.name]).unwrap();
    let decoder = Decoder::<ConnectionMandateChanged>::new(registry.clone());
    let mut received = Vec::new();
    let deadline = Instant::now() + Duration::from_secs(30);
    while received.len() < 2 {
        assert!(
            Instant::now() < deadline,
            "only {} of 2 records arrived",
            received.len()
        );
        let message = tokio::time::timeout(Duration::from_secs(30), consumer.recv())
            .await
            .expect("a record within the deadline")
            .unwrap();
        assert!(message.headers().is_none_or(|h| h.count() == 0));
        received.push(decoder.decode(message.payload().unwrap()).await.unwrap());
    }
    assert_eq!(received[0], sent);
    assert_eq!(received[1].connection_id.as_str(), "EAN-2");
    assert_eq!(received[1].mandate, MandateLevel::BillingOnly);

    let garbage = decoder.decode(b"{\"not\":\"avro\"}").await.unwrap_err();
    assert!(!garbage.is_retryable(), "{garbage}");
}
