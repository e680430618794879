//! Read models that can be rebuilt, moved and scaled, on the real broker, registry and Redis:
//! each test folds a topic of its own, so "the fold of the topic" is exactly what it published,
//! and judges with the digest every connection keeps (count + hash chain of every event), so
//! a lost, repeated or reordered event fails the test, not only a wrong last value.

mod common;

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use common::{
    assert_store_holds, await_fold, events, eventually, fold, prefilled_topic, private_topic,
    publish_to, spawn, test_settings, ChildApp,
};
use iot_platform::configuration::Settings;
use iot_platform::generations;
use iot_platform::rebuild::rebuild;
use projectors::runtime::{
    DEAD_LETTER_GROUP, DEAD_LETTER_OFFSET, DEAD_LETTER_REASON, DEAD_LETTER_TOPIC,
};
use projectors::store::any::StoreKind;
use projectors::Store;
use rdkafka::consumer::{Consumer, StreamConsumer};
use rdkafka::message::{Headers, Message};
use rdkafka::producer::{FutureProducer, FutureRecord, Producer};
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
    // The new generation's own contents: every connection with the digest of all its events.
    let new = generations::open_store(&settings, 2).await.unwrap();
    assert_store_holds(&new, &expected).await;
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

/// kill -9 three times while a replay runs and new events keep arriving: each restarted
/// instance starts where the store stands, so the read model ends at the fold of the log,
/// every event of every connection once and in order.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_projector_killed_while_events_flow_ends_at_the_fold() {
    let mut settings = test_settings();
    let mut published = prefilled_topic(&mut settings, "kill", 500, 20_000).await;
    let more = events(&format!("kill-more-{}", Uuid::new_v4()), 500, 20_000);
    let flowing = tokio::spawn({
        let (settings, more) = (settings.clone(), more.clone());
        async move {
            for slice in more.chunks(500) {
                publish_to(&settings, &settings.iot_topic, slice).await;
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        }
    });

    let mut victim = ChildApp::start(&settings);
    for _ in 0..3 {
        eventually("the instance applies events", MINUTE, || async {
            victim
                .health()
                .await
                .and_then(|h| h["applied"].as_u64())
                .unwrap_or(0)
                > 0
        })
        .await;
        tokio::time::sleep(Duration::from_millis(700)).await;
        assert!(
            !flowing.is_finished(),
            "the events stopped flowing before the kill"
        );
        victim.kill_9();
        victim = ChildApp::start(&settings);
    }
    flowing.await.unwrap();
    published.extend(more);
    await_fold(&victim.base_url, &fold(&published), MINUTE).await;
}

/// The outbox relay writes in Kafka transactions, which leave a commit marker after each
/// transaction's last record: the store's last offset never reaches the high watermark. The
/// rebuild must still see it has caught up, and switch.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rebuild_of_a_transactionally_written_topic_switches() {
    let mut settings = test_settings();
    settings.iot_topic = private_topic(&settings, "test-rebuild-txn").await;
    let published = events(&format!("txn-{}", Uuid::new_v4()), 30, 300);
    let encoder = topics::codec::Encoder::<topics::events::ConnectionMandateChanged>::connect(
        &topics::registry::Registry::new(&settings.kafka.schema_registry_url),
    )
    .await
    .unwrap();
    let producer: FutureProducer = topics::kafka::transactional_producer_config(
        &settings.kafka,
        &format!("test-txn-{}", Uuid::new_v4()),
    )
    .create()
    .unwrap();
    producer.init_transactions(MINUTE).unwrap();
    for chunk in published.chunks(100) {
        producer.begin_transaction().unwrap();
        for event in chunk {
            let payload = encoder.encode(event).unwrap();
            producer
                .send(
                    FutureRecord::to(&settings.iot_topic)
                        .key(event.connection_id.as_str())
                        .payload(&payload),
                    Duration::from_secs(10),
                )
                .await
                .map_err(|(e, _)| e)
                .unwrap();
        }
        producer.commit_transaction(MINUTE).unwrap();
    }

    let report = tokio::time::timeout(MINUTE, rebuild(&settings, false, false))
        .await
        .expect("the rebuild never saw it had caught up")
        .unwrap();
    assert_eq!(report.to, 2);
    let new = generations::open_store(&settings, 2).await.unwrap();
    assert_store_holds(&new, &fold(&published)).await;
    new.clear().await.unwrap();
}

/// Sends raw `payload` to `topic` under `key`, as a foreign producer would.
async fn publish_raw(settings: &Settings, topic: &str, key: &str, payload: &[u8]) {
    let producer: FutureProducer = topics::kafka::producer_config(&settings.kafka)
        .create()
        .unwrap();
    producer
        .send(
            FutureRecord::to(topic).key(key).payload(payload),
            Duration::from_secs(10),
        )
        .await
        .map_err(|(e, _)| e)
        .unwrap();
}

/// Every record of `topic` so far, read to its end.
async fn dead_letters(
    settings: &Settings,
    group: &str,
) -> Vec<projectors::dead_letters::DeadLetter> {
    let (kafka, topic, group) = (
        settings.kafka.clone(),
        settings.iot_dead_letter_topic.clone(),
        group.to_owned(),
    );
    tokio::task::spawn_blocking(move || {
        projectors::dead_letters::of_group(&kafka, &topic, &group, None).unwrap()
    })
    .await
    .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn records_not_in_the_wire_format_are_dead_lettered_and_the_projector_keeps_going() {
    let mut settings = test_settings();
    settings.iot_topic = private_topic(&settings, "test-poison").await;
    settings.iot_dead_letter_topic = private_topic(&settings, "test-poison-dlq").await;
    let connection = format!("poison-{}", Uuid::new_v4());
    let before = events(&connection, 1, 1);
    let after = events(&connection, 1, 2);
    let not_avro = b"{\"not\":\"avro\"}".to_vec();

    publish_to(&settings, &settings.iot_topic, &before).await;
    publish_raw(
        &settings,
        &settings.iot_topic,
        &format!("{connection}-0"),
        &not_avro,
    )
    .await;
    publish_to(&settings, &settings.iot_topic, &after[1..]).await;

    let app = spawn(settings.clone()).await;
    let mut expected = before.clone();
    expected.extend_from_slice(&after[1..]);
    await_fold(&app.base_url, &fold(&expected), MINUTE).await;

    let group = format!("test-dlq-{}", Uuid::new_v4());
    let consumer: StreamConsumer = topics::kafka::consumer_config(&settings.kafka, &group)
        .create()
        .unwrap();
    consumer
        .subscribe(&[&settings.iot_dead_letter_topic])
        .unwrap();
    let message = tokio::time::timeout(MINUTE, consumer.recv())
        .await
        .unwrap()
        .unwrap();
    assert_eq!(message.payload(), Some(not_avro.as_slice()));
    let headers = message.headers().unwrap();
    let header = |name: &str| {
        headers
            .iter()
            .find(|h| h.key == name)
            .and_then(|h| h.value)
            .map(|v| String::from_utf8_lossy(v).into_owned())
    };
    let why = header(DEAD_LETTER_REASON).unwrap_or_default();
    assert!(why.contains("magic byte"), "{why}");
    assert_eq!(
        header(DEAD_LETTER_TOPIC).as_deref(),
        Some(settings.iot_topic.as_str())
    );
    assert_eq!(header(DEAD_LETTER_OFFSET).as_deref(), Some("1"));
    assert_eq!(
        header(DEAD_LETTER_GROUP).as_deref(),
        Some(settings.iot_group.as_str())
    );
    app.stop().await;
}

/// A schema id the registry does not know (it lost it, or has not learned it yet) is not
/// poison: its partition waits, `/health` says so, nothing is dead-lettered, and the other
/// partitions go on.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unknown_schema_id_pauses_the_projector_and_is_never_dead_lettered() {
    let mut settings = test_settings();
    settings.iot_topic = private_topic(&settings, "test-unknown-id").await;
    settings.iot_dead_letter_topic = private_topic(&settings, "test-unknown-id-dlq").await;
    let connection = format!("unknown-{}", Uuid::new_v4());
    let before = events(&connection, 1, 1);
    let connection = before[0].connection_id.to_string();
    publish_to(&settings, &settings.iot_topic, &before).await;
    // Avro-shaped, naming a schema id the registry never issued; same key, same partition.
    publish_raw(
        &settings,
        &settings.iot_topic,
        &connection,
        &[0u8, 0x7f, 0xff, 0xff, 0xf0, 2, 4, 6],
    )
    .await;
    let after = events(&connection, 1, 1);
    publish_to(&settings, &settings.iot_topic, &after).await;
    // Forty connections spread over the topic's four partitions.
    let others = events(&format!("others-{}", Uuid::new_v4()), 40, 40);
    publish_to(&settings, &settings.iot_topic, &others).await;

    let app = ChildApp::start(&settings);
    eventually(
        "the projector says it waits for the registry",
        MINUTE,
        || async {
            app.health().await.is_some_and(|h| {
                h["status"] == "waiting"
                    && h["waitingFor"]
                        .as_str()
                        .is_some_and(|w| w.contains("unknown to the registry"))
            })
        },
    )
    .await;
    // The other partitions' connections are served (the stuck one's partition holds some of
    // them back, so not all).
    let client = reqwest::Client::new();
    eventually("other partitions' events are applied", MINUTE, || async {
        let mut served = 0;
        for other in &others {
            let url = format!("{}/mandates/{}", app.base_url, other.connection_id);
            if client
                .get(url)
                .send()
                .await
                .is_ok_and(|r| r.status().is_success())
            {
                served += 1;
            }
        }
        (1..others.len()).contains(&served)
    })
    .await;
    let health = app.health().await.unwrap();
    assert_eq!(health["deadLettered"], 0, "{health}");
    assert_eq!(health["status"], "waiting", "{health}");
    // Nothing after the unknown id is applied on its partition: the event before it is served.
    let served: Value = reqwest::get(format!("{}/mandates/{connection}", app.base_url))
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(served["eventId"], before[0].event_id.to_string());
    app.kill_9();
    assert!(dead_letters(&settings, &settings.iot_group)
        .await
        .is_empty());
}

/// A rebuild whose generation dead-lettered records does not switch unless told to, and says
/// how many and where.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rebuild_with_dead_letters_does_not_switch_unless_accepted() {
    let mut settings = test_settings();
    settings.iot_dead_letter_topic = private_topic(&settings, "test-rebuild-dlq").await;
    let published = prefilled_topic(&mut settings, "rebuild-dlq", 20, 100).await;
    publish_raw(&settings, &settings.iot_topic, "poison", b"not avro").await;

    // Refused, and refused again on a rerun (the cause is still there), counting the same
    // one record: the refused generation was dropped, the rerun started afresh.
    for _ in 0..2 {
        let refused = rebuild(&settings, false, false).await.unwrap_err();
        let message = refused.to_string();
        assert!(
            message.contains("dead-lettered 1 record") && message.contains("magic byte"),
            "{message}"
        );
    }
    let catalog = generations::open_store(&settings, 1).await.unwrap();
    assert_eq!(generations::current(&catalog, &settings).await.unwrap(), 1);

    let report = rebuild(&settings, false, true).await.unwrap();
    assert_eq!(report.to, 2);
    let new = generations::open_store(&settings, 2).await.unwrap();
    assert_store_holds(&new, &fold(&published)).await;
    new.clear().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_replay_waits_out_a_redis_outage_and_skips_nothing() {
    let redis = testkit::Isolated::start("redis");
    let mut settings = test_settings();
    settings.redis_url = format!("redis://127.0.0.1:{}", redis.port());
    let mut published = prefilled_topic(&mut settings, "redis-outage", 500, 30_000).await;

    let app = ChildApp::start(&settings);
    // Events keep arriving until after the outage: a replay of the prefilled topic alone can
    // finish before Redis is taken down (it takes ~0.1 s on a quiet machine).
    let live_done = Arc::new(AtomicBool::new(false));
    let live = tokio::spawn({
        let (settings, done) = (settings.clone(), live_done.clone());
        async move {
            let mut sent = Vec::new();
            // Bounded: at most 300 chunks of 100 events, each on new keys.
            for chunk in 0..300 {
                if done.load(Ordering::Relaxed) {
                    break;
                }
                let prefix = format!("redis-outage-live-{chunk}-{}", Uuid::new_v4());
                let events = events(&prefix, 10, 100);
                publish_to(&settings, &settings.iot_topic, &events).await;
                sent.extend(events);
            }
            sent
        }
    });
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
    redis.down();
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
        !live.is_finished(),
        "events stopped arriving before the outage; nothing was tested"
    );
    redis.up();
    // The projector applies again while events still arrive; then they stop.
    eventually("the projector resumes after the outage", MINUTE, || async {
        applied().await > previous
    })
    .await;
    live_done.store(true, Ordering::Relaxed);
    published.extend(live.await.unwrap());
    await_fold(&app.base_url, &fold(&published), MINUTE).await;
}

/// Folds a topic, then empties the store and restarts: the store owns the offsets, so the
/// projector replays from the start by itself and rebuilds exactly the same read model.
/// `topics reset` refuses the group: moving Kafka's offsets would change nothing.
async fn emptying_the_store_replays_the_fold(store: StoreKind) {
    let mut settings = test_settings();
    settings.iot_store = store;
    let published = prefilled_topic(&mut settings, "replay", 100, 2000).await;
    let expected = fold(&published);

    let app = spawn(settings.clone()).await;
    await_fold(&app.base_url, &expected, MINUTE).await;
    app.stop().await;

    let refused = topics::groups::reset(
        &settings.kafka,
        &settings.iot_group,
        Some(&settings.iot_topic),
        topics::groups::ResetTarget::Earliest,
    )
    .unwrap_err();
    assert!(
        matches!(refused, topics::Error::StoreOwnedOffsets { .. }),
        "{refused}"
    );
    let read_model = generations::open_store(&settings, 1).await.unwrap();
    read_model.clear().await.unwrap();

    let app = spawn(settings.clone()).await;
    await_fold(&app.base_url, &expected, MINUTE).await;
    app.stop().await;
    assert_store_holds(&read_model, &expected).await;
    read_model.clear().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn emptying_a_redis_store_replays_the_fold() {
    emptying_the_store_replays_the_fold(StoreKind::Redis).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn emptying_a_mysql_store_replays_the_fold() {
    emptying_the_store_replays_the_fold(StoreKind::Mysql).await;
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
