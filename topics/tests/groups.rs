//! `topics lag` and `topics reset` against the real broker started by `scripts/infra up`.

use std::collections::HashMap;
use std::process::{Command, Output};
use std::time::{Duration, Instant};

use futures::future::try_join_all;
use rdkafka::admin::AdminOptions;
use rdkafka::consumer::{CommitMode, Consumer, StreamConsumer};
use rdkafka::message::Message;
use rdkafka::producer::{FutureProducer, FutureRecord};
use rdkafka::{Offset, TopicPartitionList};
use topics::apply::apply;
use topics::cluster::Cluster;
use topics::groups::{self, OffsetChange, PartitionLag, ResetTarget};
use topics::registry::Registry;
use topics::settings::{self, KafkaSettings};
use topics::spec::{CleanupPolicy, Retention, TopicSpec, CONNECTION_MANDATES};
use topics::Error;
use uuid::Uuid;

const PARTITIONS: i32 = 3;
const PER_PARTITION: i64 = 10;
/// Record `i` of every partition is stamped `base + i * STEP_MS`.
const STEP_MS: i64 = 1_000;
const DEADLINE: Duration = Duration::from_secs(60);

fn settings() -> KafkaSettings {
    settings::load("topics-test").expect("settings load")
}

/// A topic of the test's own; `delete` so records can be removed from its head, kept forever
/// so the back-dated test records are not.
fn test_spec() -> TopicSpec {
    TopicSpec {
        name: Box::leak(format!("test-groups-{}", Uuid::new_v4()).into_boxed_str()),
        partitions: PARTITIONS,
        cleanup_policy: CleanupPolicy::Delete,
        retention: Retention::Forever,
        value_schema: None,
        ..CONNECTION_MANDATES
    }
}

fn cli(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_topics"))
        .args(args)
        .output()
        .expect("topics runs")
}

fn assert_one_line_failure(output: &Output, needle: &str) {
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(!output.status.success(), "succeeded: {stderr}");
    assert_eq!(stderr.trim().lines().count(), 1, "not one line: {stderr}");
    assert!(stderr.contains(needle), "{stderr}");
}

/// (partition, committed, lag) of every row, in partition order.
fn summary(lags: &[PartitionLag]) -> Vec<(i32, Option<i64>, i64)> {
    lags.iter()
        .map(|l| (l.partition, l.committed, l.lag))
        .collect()
}

/// (partition, old, new) of every change, in partition order.
fn moves(changes: &[OffsetChange]) -> Vec<(i32, Option<i64>, i64)> {
    changes
        .iter()
        .map(|c| (c.partition, c.old, c.new))
        .collect()
}

#[tokio::test]
async fn lag_shows_the_group_and_reset_moves_it_only_while_it_is_empty() {
    let settings = settings();
    let spec = test_spec();
    let topic = spec.name;
    apply(
        &Cluster::connect(&settings).unwrap(),
        &Registry::new(&settings.schema_registry_url),
        &[spec],
    )
    .await
    .unwrap();

    let base = chrono::Utc::now().timestamp_millis() - 3_600_000;
    let producer: FutureProducer = topics::kafka::producer_config(&settings).create().unwrap();
    let mut sends = Vec::new();
    for partition in 0..PARTITIONS {
        for i in 0..PER_PARTITION {
            let payload = format!("{partition}-{i}");
            let producer = &producer;
            sends.push(async move {
                producer
                    .send(
                        FutureRecord::to(topic)
                            .partition(partition)
                            .key("k")
                            .payload(&payload)
                            .timestamp(base + i * STEP_MS),
                        Duration::from_secs(10),
                    )
                    .await
                    .map_err(|(e, _)| e)
            });
        }
    }
    try_join_all(sends).await.unwrap();

    // Retention's work done by hand: partition 0 now starts at 2, partition 2 at 3.
    let mut head = TopicPartitionList::new();
    head.add_partition_offset(topic, 0, Offset::Offset(2))
        .unwrap();
    head.add_partition_offset(topic, 2, Offset::Offset(3))
        .unwrap();
    topics::kafka::admin_client(&settings)
        .unwrap()
        .delete_records(&head, &AdminOptions::new())
        .await
        .unwrap();

    // A member that has read part of partitions 0 and 1 and committed that, and nothing of 2.
    let group = format!("test-groups-{}", Uuid::new_v4());
    let consumer: StreamConsumer = topics::kafka::consumer_config(&settings, &group)
        .create()
        .unwrap();
    consumer.subscribe(&[topic]).unwrap();
    let mut seen: HashMap<i32, i64> = HashMap::new();
    let deadline = Instant::now() + DEADLINE;
    while seen.get(&0).is_none_or(|&o| o < 3) || seen.get(&1).is_none_or(|&o| o < 6) {
        let left = deadline.saturating_duration_since(Instant::now());
        let message = tokio::time::timeout(left, consumer.recv())
            .await
            .unwrap_or_else(|_| panic!("records of partitions 0 and 1 by now, got {seen:?}"))
            .unwrap();
        let last = seen.entry(message.partition()).or_default();
        *last = (*last).max(message.offset());
    }
    let mut commit = TopicPartitionList::new();
    commit
        .add_partition_offset(topic, 0, Offset::Offset(4))
        .unwrap();
    commit
        .add_partition_offset(topic, 1, Offset::Offset(7))
        .unwrap();
    consumer.commit(&commit, CommitMode::Sync).unwrap();

    let lags = groups::lag(&settings, &group, None).unwrap();
    assert!(lags.iter().all(|l| l.topic == topic), "{lags:?}");
    assert_eq!(
        summary(&lags),
        [(0, Some(4), 6), (1, Some(7), 3), (2, None, 7)],
        "a partition without a commit lags by everything it holds"
    );
    assert_eq!(
        lags.iter()
            .map(|l| (l.low_watermark, l.high_watermark))
            .collect::<Vec<_>>(),
        [(2, 10), (0, 10), (3, 10)]
    );
    assert_eq!(groups::lag(&settings, &group, Some(topic)).unwrap(), lags);

    let shown = cli(&["lag", &group]);
    let stdout = String::from_utf8_lossy(&shown.stdout);
    assert!(
        shown.status.success(),
        "{}",
        String::from_utf8_lossy(&shown.stderr)
    );
    let rows: Vec<Vec<&str>> = stdout
        .lines()
        .map(|line| line.split_whitespace().collect())
        .collect();
    for row in [
        vec!["0", "4", "10", "6"],
        vec!["1", "7", "10", "3"],
        vec!["2", "-", "10", "7"],
        vec!["total", "16"],
    ] {
        assert!(rows.contains(&row), "no row {row:?} in:\n{stdout}");
    }

    let refused = groups::reset(&settings, &group, None, ResetTarget::Earliest).unwrap_err();
    assert!(
        matches!(refused, Error::GroupActive { members: 1, .. }),
        "{refused}"
    );
    assert_one_line_failure(&cli(&["reset", &group, "--to", "earliest"]), "member");
    assert_eq!(
        groups::lag(&settings, &group, None).unwrap(),
        lags,
        "a refused reset changed offsets"
    );

    drop(consumer);
    let deadline = Instant::now() + DEADLINE;
    loop {
        let state = groups::state(&settings, &group).unwrap();
        if state.is_idle() {
            break;
        }
        assert!(Instant::now() < deadline, "group still active: {state:?}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }

    let earliest = groups::reset(&settings, &group, None, ResetTarget::Earliest).unwrap();
    assert_eq!(
        moves(&earliest),
        [(0, Some(4), 2), (1, Some(7), 0), (2, None, 3)]
    );
    assert_eq!(
        summary(&groups::lag(&settings, &group, None).unwrap()),
        [(0, Some(2), 8), (1, Some(0), 10), (2, Some(3), 7)]
    );

    let latest = groups::reset(&settings, &group, Some(topic), ResetTarget::Latest).unwrap();
    assert_eq!(
        moves(&latest),
        [(0, Some(2), 10), (1, Some(0), 10), (2, Some(3), 10)]
    );
    assert_eq!(
        summary(&groups::lag(&settings, &group, None).unwrap()),
        [(0, Some(10), 0), (1, Some(10), 0), (2, Some(10), 0)]
    );

    // The first record at or after the time; where that was removed, the first one left.
    let at = |i: i64| ResetTarget::Timestamp(base + i * STEP_MS - STEP_MS / 2);
    let to_5 = groups::reset(&settings, &group, None, at(5)).unwrap();
    assert_eq!(
        moves(&to_5),
        [(0, Some(10), 5), (1, Some(10), 5), (2, Some(10), 5)]
    );
    let to_1 = groups::reset(&settings, &group, None, at(1)).unwrap();
    assert_eq!(to_1.iter().map(|c| c.new).collect::<Vec<_>>(), [2, 1, 3]);
    let after_the_last = groups::reset(&settings, &group, None, at(PER_PARTITION + 5)).unwrap();
    assert_eq!(
        after_the_last.iter().map(|c| c.new).collect::<Vec<_>>(),
        [10, 10, 10],
        "past the last record the group waits for the next one"
    );

    // The CLI takes an RFC 3339 time and shows what it moved.
    let time = chrono::DateTime::from_timestamp_millis(base + 5 * STEP_MS)
        .unwrap()
        .to_rfc3339();
    let reset = cli(&["reset", &group, "--to", &time, "--topic", topic]);
    let stdout = String::from_utf8_lossy(&reset.stdout);
    assert!(
        reset.status.success(),
        "{}",
        String::from_utf8_lossy(&reset.stderr)
    );
    assert!(stdout.contains("0: 10 → 5"), "{stdout}");
    assert_eq!(
        summary(&groups::lag(&settings, &group, None).unwrap()),
        [(0, Some(5), 5), (1, Some(5), 5), (2, Some(5), 5)]
    );
}

#[test]
fn a_group_without_offsets_is_an_error() {
    let settings = settings();
    let group = format!("test-groups-none-{}", Uuid::new_v4());

    let err = groups::lag(&settings, &group, None).unwrap_err();
    assert!(
        matches!(err, Error::NoCommittedOffsets { topic: None, .. }),
        "{err}"
    );
    let err = groups::reset(&settings, &group, None, ResetTarget::Latest).unwrap_err();
    assert!(matches!(err, Error::NoCommittedOffsets { .. }), "{err}");
    let err = groups::lag(&settings, &group, Some("no-such-topic-for-groups")).unwrap_err();
    assert!(matches!(err, Error::UnknownTopic(_)), "{err}");

    assert_one_line_failure(&cli(&["lag", &group]), "no committed offsets");
    assert_one_line_failure(&cli(&["reset", &group, "--to", "latest"]), "--topic");
}

/// On a cluster that never had a consumer group, the first group request makes the broker
/// create `__consumer_offsets` and elect the coordinators, and is answered "not coordinator"
/// or "coordinator not available" meanwhile (the fresh CI machine met it): a reset waits for
/// the coordinator instead of failing.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reset_on_a_fresh_cluster_waits_for_the_group_coordinator() {
    let kafka = testkit::Isolated::new("kafka");
    kafka.up_async().await;
    let mut settings = settings();
    settings.kafka_bootstrap_servers = kafka.address();
    let spec = test_spec();
    let topic = spec.name;
    apply(
        &Cluster::connect(&settings).unwrap(),
        &Registry::new(&settings.schema_registry_url),
        &[spec],
    )
    .await
    .unwrap();

    let group = format!("test-groups-fresh-{}", Uuid::new_v4());
    let changes = tokio::task::spawn_blocking(move || {
        groups::reset(&settings, &group, Some(topic), ResetTarget::Latest)
    })
    .await
    .unwrap()
    .expect("the reset waits for the coordinator");
    assert_eq!(moves(&changes), [(0, None, 0), (1, None, 0), (2, None, 0)]);
}
