//! Read models that can be rebuilt, moved and scaled, on the real broker, registry and Redis:
//! each test folds a topic of its own, so "the fold of the topic" is exactly what it published.

mod common;

use std::time::Duration;

use common::{
    await_fold, events, eventually, fold, prefilled_topic, private_topic, publish_to, spawn,
    test_settings, ChildApp,
};
use iot_platform::generations;
use iot_platform::rebuild::rebuild;
use projectors::runtime::{DEAD_LETTER_OFFSET, DEAD_LETTER_REASON, DEAD_LETTER_TOPIC};
use projectors::store::any::StoreKind;
use projectors::Store;
use rdkafka::consumer::{Consumer, StreamConsumer};
use rdkafka::message::{Headers, Message};
use rdkafka::producer::{FutureProducer, FutureRecord};
use serde_json::Value;
use uuid::Uuid;

const MINUTE: Duration = Duration::from_secs(60);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rebuild_keeps_serving_then_switches_to_an_identical_generation() {
    let mut settings = test_settings();
    let published = prefilled_topic(&mut settings, "rebuild", 200, 3000).await;
    let app = spawn(settings.clone()).await;
    let expected = fold(&published);
    await_fold(&app.base_url, &expected, MINUTE).await;

    let rebuilding = tokio::spawn({
        let settings = settings.clone();
        async move { rebuild(&settings, false, false).await }
    });
    // The current generation keeps answering while the next one is built.
    let some = expected.keys().next().unwrap().clone();
    while !rebuilding.is_finished() {
        let response = reqwest::get(format!("{}/mandates/{some}", app.base_url))
            .await
            .unwrap();
        assert!(
            response.status().is_success(),
            "a read failed during the rebuild"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let report = rebuilding.await.unwrap().unwrap();
    assert_eq!((report.from, report.to), (1, 2));
    assert!(report.applied >= published.len() as u64, "{report:?}");

    eventually("the instance serves generation 2", MINUTE, || async {
        let health: Value = reqwest::get(format!("{}/health", app.base_url))
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        health["generation"] == 2
    })
    .await;
    await_fold(&app.base_url, &expected, MINUTE).await;
    let old = generations::open_store(&settings, 1).await.unwrap();
    assert_eq!(
        old.get(&some).await.unwrap(),
        None,
        "the old generation was not dropped"
    );

    // The instance now folds under generation 2's group and carries on from the rebuild.
    let later = events(&format!("rb-later-{}", Uuid::new_v4()), 10, 50);
    publish_to(&settings, &settings.iot_topic, &later).await;
    await_fold(&app.base_url, &fold(&later), MINUTE).await;
    app.stop().await;
    generations::open_store(&settings, 2)
        .await
        .unwrap()
        .clear()
        .await
        .unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_instances_split_the_partitions_and_a_survivor_of_kill_9_takes_them_all() {
    let mut settings = test_settings();
    settings.iot_topic = private_topic(&settings, "test-scale").await;
    let first = ChildApp::start(&settings);
    let second = ChildApp::start(&settings);
    let assigned = |health: Option<Value>| {
        health.map_or(0, |h| {
            h["assignedPartitions"].as_array().map_or(0, Vec::len)
        })
    };
    eventually(
        "the two instances own 2 partitions each",
        MINUTE,
        || async { assigned(first.health().await) == 2 && assigned(second.health().await) == 2 },
    )
    .await;

    // Events keep flowing while one instance dies without a goodbye.
    let published = events(&format!("scale-{}", Uuid::new_v4()), 300, 6000);
    let (before, after) = published.split_at(3000);
    publish_to(&settings, &settings.iot_topic, before).await;
    first.kill_9();
    publish_to(&settings, &settings.iot_topic, after).await;
    eventually("the survivor owns all 4 partitions", MINUTE, || async {
        assigned(second.health().await) == 4
    })
    .await;
    await_fold(&second.base_url, &fold(&published), MINUTE).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_projector_killed_mid_replay_resumes_to_the_fold() {
    let mut settings = test_settings();
    let published = prefilled_topic(&mut settings, "kill", 500, 40_000).await;

    let victim = ChildApp::start(&settings);
    eventually("the replay is under way", MINUTE, || async {
        victim
            .health()
            .await
            .and_then(|h| h["applied"].as_u64())
            .unwrap_or(0)
            > 0
    })
    .await;
    victim.kill_9();
    let restarted = ChildApp::start(&settings);
    await_fold(&restarted.base_url, &fold(&published), MINUTE).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn poison_events_are_dead_lettered_and_the_projector_keeps_going() {
    let mut settings = test_settings();
    settings.iot_topic = private_topic(&settings, "test-poison").await;
    settings.iot_dead_letter_topic = private_topic(&settings, "test-poison-dlq").await;
    let connection = format!("poison-{}", Uuid::new_v4());
    let before = events(&connection, 1, 1);
    let after = events(&connection, 1, 2);
    // Not Avro at all, and Avro-shaped but naming a schema id the registry never issued.
    let not_avro = b"{\"not\":\"avro\"}".to_vec();
    let unknown_schema = [0u8, 0x7f, 0xff, 0xff, 0xf0, 2, 4, 6].to_vec();

    publish_to(&settings, &settings.iot_topic, &before).await;
    let producer: FutureProducer = topics::kafka::producer_config(&settings.kafka)
        .create()
        .unwrap();
    for payload in [&not_avro, &unknown_schema] {
        producer
            .send(
                FutureRecord::to(&settings.iot_topic)
                    .key(&format!("{connection}-0"))
                    .payload(payload),
                Duration::from_secs(10),
            )
            .await
            .map_err(|(e, _)| e)
            .unwrap();
    }
    publish_to(&settings, &settings.iot_topic, &after[1..]).await;

    let app = spawn(settings.clone()).await;
    await_fold(&app.base_url, &fold(&after[1..]), MINUTE).await;

    let group = format!("test-dlq-{}", Uuid::new_v4());
    let consumer: StreamConsumer = topics::kafka::consumer_config(&settings.kafka, &group)
        .create()
        .unwrap();
    consumer
        .subscribe(&[&settings.iot_dead_letter_topic])
        .unwrap();
    for (payload, offset, reason) in [
        (&not_avro, "1", "magic byte"),
        (&unknown_schema, "2", "unknown to the registry"),
    ] {
        let message = tokio::time::timeout(MINUTE, consumer.recv())
            .await
            .unwrap()
            .unwrap();
        assert_eq!(message.payload(), Some(payload.as_slice()));
        let headers = message.headers().unwrap();
        let header = |name: &str| {
            headers
                .iter()
                .find(|h| h.key == name)
                .and_then(|h| h.value)
                .map(|v| String::from_utf8_lossy(v).into_owned())
        };
        let why = header(DEAD_LETTER_REASON).unwrap_or_default();
        assert!(why.contains(reason), "{why}");
        assert_eq!(
            header(DEAD_LETTER_TOPIC).as_deref(),
            Some(settings.iot_topic.as_str())
        );
        assert_eq!(header(DEAD_LETTER_OFFSET).as_deref(), Some(offset));
    }
    app.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_replay_waits_out_a_redis_outage_and_skips_nothing() {
    let redis = common::IsolatedService::start("redis");
    let mut settings = test_settings();
    settings.redis_url = format!("redis://127.0.0.1:{}", redis.port());
    let published = prefilled_topic(&mut settings, "redis-outage", 500, 30_000).await;

    let app = ChildApp::start(&settings);
    let applied = || async {
        app.health()
            .await
            .and_then(|h| h["applied"].as_u64())
            .unwrap_or(0)
    };
    eventually("the replay is under way", MINUTE, || async {
        applied().await > 0
    })
    .await;
    redis.stop();
    // The projector pauses on the store: what it has applied stops moving.
    let deadline = std::time::Instant::now() + MINUTE;
    let mut previous = applied().await;
    loop {
        tokio::time::sleep(Duration::from_millis(500)).await;
        let now = applied().await;
        if now == previous {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "the projector never paused"
        );
        previous = now;
    }
    assert!(
        (previous as usize) < published.len(),
        "the replay finished before the outage; nothing was tested"
    );
    redis.resume();
    await_fold(&app.base_url, &fold(&published), MINUTE).await;
}

/// Folds a topic, then empties the store and rewinds the group with `topics reset`: the
/// replay must rebuild exactly the same read model.
async fn reset_and_replay_gives_the_fold(store: StoreKind) {
    let mut settings = test_settings();
    settings.iot_store = store;
    let published = prefilled_topic(&mut settings, "replay", 100, 2000).await;
    let expected = fold(&published);

    let app = spawn(settings.clone()).await;
    await_fold(&app.base_url, &expected, MINUTE).await;
    app.stop().await;

    let read_model = generations::open_store(&settings, 1).await.unwrap();
    read_model.clear().await.unwrap();
    let rewound = topics::groups::reset(
        &settings.kafka,
        &settings.iot_group,
        Some(&settings.iot_topic),
        topics::groups::ResetTarget::Earliest,
    )
    .unwrap();
    assert!(!rewound.is_empty());

    let app = spawn(settings.clone()).await;
    await_fold(&app.base_url, &expected, MINUTE).await;
    app.stop().await;
    read_model.clear().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reset_and_replay_into_an_empty_redis_gives_the_fold() {
    reset_and_replay_gives_the_fold(StoreKind::Redis).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reset_and_replay_into_an_empty_mysql_gives_the_fold() {
    reset_and_replay_gives_the_fold(StoreKind::Mysql).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn moving_the_read_model_from_redis_to_mysql_by_config_and_a_rebuild_loses_nothing() {
    let mut settings = test_settings();
    let published = prefilled_topic(&mut settings, "move", 100, 2000).await;
    let on_redis = spawn(settings.clone()).await;
    await_fold(&on_redis.base_url, &fold(&published), MINUTE).await;
    on_redis.stop().await;

    settings.iot_store = StoreKind::Mysql;
    let report = rebuild(&settings, false, false).await.unwrap();
    assert_eq!(report.to, 2, "{report:?}");
    let on_mysql = spawn(settings.clone()).await;
    await_fold(&on_mysql.base_url, &fold(&published), MINUTE).await;
    let later = events(&format!("move-later-{}", Uuid::new_v4()), 10, 100);
    publish_to(&settings, &settings.iot_topic, &later).await;
    await_fold(&on_mysql.base_url, &fold(&later), MINUTE).await;
    on_mysql.stop().await;

    generations::open_store(&settings, 2)
        .await
        .unwrap()
        .clear()
        .await
        .unwrap();
    settings.iot_store = StoreKind::Redis;
    generations::open_store(&settings, 1)
        .await
        .unwrap()
        .clear()
        .await
        .unwrap();
}
