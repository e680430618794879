//! The store owns the offsets: whatever the store lost, the projector refills it from the log;
//! what it can never hold is dead-lettered; a store ahead of its topic is a loud stop. Judged
//! with the digest every connection keeps, so "answers exactly as before" means every event.

mod common;

use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use apache_avro::writer::datum::GenericDatumWriter;
use common::{
    await_fold, create_topic, events, fold, prefilled_topic, private_topic, publish_to,
    test_settings, ChildApp,
};
use iot_platform::configuration::Settings;
use projectors::store::any::StoreKind;
use projectors::store::mysql::table_prefix;
use rdkafka::admin::AdminOptions;
use topics::cluster::Cluster;
use topics::events::{ConnectionMandateChanged, Event, MandateLevel};
use uuid::Uuid;

const MINUTE: Duration = Duration::from_secs(60);

/// Publishes `events` in slices over about a second, so a fault lands while they flow.
async fn publish_slowly(settings: Settings, events: Vec<ConnectionMandateChanged>) {
    for slice in events.chunks(events.len().div_ceil(10).max(1)) {
        publish_to(&settings, &settings.iot_topic, slice).await;
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Redis loses everything (FLUSHALL: what a lost AOF tail does to the last second, in full)
/// while the platform runs and events flow; after a restart every connection answers exactly
/// as the fold of the whole log says, not a subset.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_flushed_redis_is_refilled_from_the_log() {
    let redis = testkit::Isolated::start("redis");
    let mut settings = test_settings();
    settings.redis_url = format!("redis://{}", redis.address());
    let mut published = prefilled_topic(&mut settings, "flush", 200, 4000).await;
    let app = ChildApp::start(&settings);
    await_fold(&app.base_url, &fold(&published), MINUTE).await;

    let more = events(&format!("flush-more-{}", Uuid::new_v4()), 50, 1000);
    let flowing = tokio::spawn(publish_slowly(settings.clone(), more.clone()));
    tokio::time::sleep(Duration::from_millis(300)).await;
    let mut connection = redis::Client::open(settings.redis_url.as_str())
        .unwrap()
        .get_multiplexed_async_connection()
        .await
        .unwrap();
    let _: () = redis::cmd("FLUSHALL")
        .query_async(&mut connection)
        .await
        .unwrap();
    flowing.await.unwrap();
    published.extend(more);
    // The running instance notices on its next writes (the store no longer has the offsets
    // it expects) and refills every partition from the log by itself...
    await_fold(&app.base_url, &fold(&published), MINUTE).await;

    // ...and so does a restarted one, from what the store now holds.
    app.kill_9();
    let restarted = ChildApp::start(&settings);
    await_fold(&restarted.base_url, &fold(&published), MINUTE).await;
}

/// The MySQL store's tables are dropped while the platform runs and events flow (an operator
/// recreating the schema); after a restart every connection answers exactly as before.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dropped_mysql_tables_are_refilled_from_the_log() {
    let mut settings = test_settings();
    settings.iot_store = StoreKind::Mysql;
    let mut published = prefilled_topic(&mut settings, "drop", 200, 4000).await;
    let app = ChildApp::start(&settings);
    await_fold(&app.base_url, &fold(&published), MINUTE).await;

    let more = events(&format!("drop-more-{}", Uuid::new_v4()), 50, 1000);
    let flowing = tokio::spawn(publish_slowly(settings.clone(), more.clone()));
    tokio::time::sleep(Duration::from_millis(300)).await;
    let pool = sqlx::MySqlPool::connect(&settings.mysql_url).await.unwrap();
    let prefix = table_prefix(&settings.iot_namespace);
    sqlx::query(&format!(
        "DROP TABLE `{prefix}_offsets`, `{prefix}_sequences`, `{prefix}_documents`"
    ))
    .execute(&pool)
    .await
    .unwrap();
    flowing.await.unwrap();
    published.extend(more);
    // The running instance notices on its next writes (the store no longer has the offsets
    // it expects) and refills every partition from the log by itself...
    await_fold(&app.base_url, &fold(&published), MINUTE).await;

    // ...and so does a restarted one, from what the store now holds.
    app.kill_9();
    let restarted = ChildApp::start(&settings);
    await_fold(&restarted.base_url, &fold(&published), MINUTE).await;
    sqlx::query(&format!(
        "DROP TABLE IF EXISTS `{prefix}_offsets`, `{prefix}_sequences`, `{prefix}_documents`"
    ))
    .execute(&pool)
    .await
    .unwrap();
}

/// A foreign producer publishes a 256-character connection id (valid Avro, the registered
/// schema): it never gets past the edge (the contract's `ConnectionId` is bounded), so it is
/// dead-lettered with the reason, and later events on every partition still apply.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_key_the_store_cannot_hold_is_dead_lettered_and_every_partition_goes_on() {
    let mut settings = test_settings();
    settings.iot_store = StoreKind::Mysql;
    settings.iot_dead_letter_topic = private_topic(&settings, "test-long-key-dlq").await;
    let before = prefilled_topic(&mut settings, "long-key", 40, 200).await;
    let long = foreign_record(&settings, &"8".repeat(256)).await;
    let producer: rdkafka::producer::FutureProducer =
        topics::kafka::producer_config(&settings.kafka)
            .create()
            .unwrap();
    producer
        .send(
            rdkafka::producer::FutureRecord::to(&settings.iot_topic)
                .key(&"8".repeat(256))
                .payload(&long),
            Duration::from_secs(10),
        )
        .await
        .map_err(|(e, _)| e)
        .unwrap();
    let after = events(&format!("long-key-after-{}", Uuid::new_v4()), 40, 200);
    publish_to(&settings, &settings.iot_topic, &after).await;

    let app = ChildApp::start(&settings);
    let mut expected = before;
    expected.extend(after);
    await_fold(&app.base_url, &fold(&expected), MINUTE).await;

    let (kafka, topic, group) = (
        settings.kafka.clone(),
        settings.iot_dead_letter_topic.clone(),
        settings.iot_group.clone(),
    );
    let dead = tokio::task::spawn_blocking(move || {
        projectors::dead_letters::of_group(&kafka, &topic, &group, None).unwrap()
    })
    .await
    .unwrap();
    assert_eq!(dead.len(), 1, "{dead:?}");
    assert!(dead[0].reason.contains("256"), "{:?}", dead[0]);
    assert_eq!(dead[0].topic, settings.iot_topic);
    let health = app.health().await.unwrap();
    assert_eq!(health["deadLettered"], 1, "{health}");
    assert_eq!(health["status"], "ok", "{health}");
}

/// A mandate event as a producer that does not use the platform's types would write it: the
/// registered schema and wire format, with any connection id.
async fn foreign_record(settings: &Settings, connection_id: &str) -> Vec<u8> {
    #[derive(serde::Serialize)]
    struct Foreign<'a> {
        event_id: Uuid,
        connection_id: &'a str,
        customer_id: i64,
        mandate: MandateLevel,
        occurred_at: i64,
    }
    let registry = topics::registry::Registry::new(&settings.kafka.schema_registry_url);
    let schema_id = topics::codec::Encoder::<ConnectionMandateChanged>::connect(&registry)
        .await
        .unwrap()
        .schema_id();
    let writer = GenericDatumWriter::builder(ConnectionMandateChanged::schema())
        .human_readable(true)
        .build()
        .unwrap();
    let mut payload = vec![0];
    payload.extend_from_slice(&schema_id.to_be_bytes());
    let record = Foreign {
        event_id: Uuid::new_v4(),
        connection_id,
        customer_id: 1,
        mandate: MandateLevel::RealTime,
        occurred_at: 1,
    };
    writer.write_ser(&mut payload, &record).unwrap();
    payload
}

/// The topic is deleted and created again, empty, under the same name: the store has applied
/// records the topic no longer has. The projector stops with one line naming topic,
/// partition and both offsets, instead of waiting silently for offsets that will not come.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_store_ahead_of_a_recreated_topic_stops_with_one_line() {
    let mut settings = test_settings();
    let published = prefilled_topic(&mut settings, "recreated", 20, 400).await;
    let app = ChildApp::start(&settings);
    await_fold(&app.base_url, &fold(&published), MINUTE).await;
    app.kill_9();

    let admin = topics::kafka::admin_client(&settings.kafka).unwrap();
    admin
        .delete_topics(&[settings.iot_topic.as_str()], &AdminOptions::new())
        .await
        .unwrap();
    let cluster = Cluster::connect(&settings.kafka).unwrap();
    testkit::eventually("the topic is gone", MINUTE, || async {
        cluster.topic(&settings.iot_topic).await.unwrap().is_none()
    })
    .await;
    create_topic(&settings, &settings.iot_topic).await;

    let mut child = Command::new(env!("CARGO_BIN_EXE_iot-platform"))
        .env("IOT_LISTEN_ADDR", "127.0.0.1:0")
        .env("IOT_GROUP", &settings.iot_group)
        .env("IOT_NAMESPACE", &settings.iot_namespace)
        .env("IOT_TOPIC", &settings.iot_topic)
        .env("REDIS_URL", &settings.redis_url)
        .env("RUST_LOG", "error")
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let deadline = Instant::now() + MINUTE;
    let status = loop {
        if let Some(status) = child.try_wait().unwrap() {
            break status;
        }
        assert!(Instant::now() < deadline, "the projector kept running");
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    let output = child.wait_with_output().unwrap();
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(!status.success());
    assert!(
        stderr.contains("beyond the topic's high watermark 0")
            && stderr.contains(&settings.iot_topic),
        "{stderr}"
    );
}
