//! With Kafka down, writes still succeed; their events wait in the outbox and arrive, in
//! order, once Kafka is back.

use std::time::Duration;

use serde_json::json;
use topics::events::MandateLevel;

use testkit::{free_port, Isolated};

use crate::helpers::{
    apply_topics, connection_id, customer_body, spawn_with, test_settings, EventProbe,
};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn writes_succeed_while_kafka_is_down_and_their_events_arrive_after_it_returns() {
    let kafka = Isolated::new("kafka");
    let mut settings = test_settings();
    settings.kafka.kafka_bootstrap_servers = kafka.address();
    // The topic must exist on this broker before it goes down, as it would in production.
    kafka.up_async().await;
    apply_topics(&settings.kafka).await;
    kafka.down_async().await;

    let app = spawn_with(settings.clone()).await;
    let (first, second) = (connection_id(), connection_id());
    let id = app.create(&customer_body(&first, json!(2))).await["id"]
        .as_i64()
        .unwrap();
    let response = app.put_customer(id, &customer_body(&first, json!(1))).await;
    assert_eq!(response.status(), 200);
    let response = app
        .put_customer(id, &customer_body(&second, json!(1)))
        .await;
    assert_eq!(response.status(), 200);

    let mut db = app.database().await;
    let waiting: i64 = sqlx::query_scalar("SELECT count(*) FROM outbox WHERE published_at IS NULL")
        .fetch_one(&mut db)
        .await
        .unwrap();
    assert_eq!(waiting, 4, "the events wait in the outbox");

    kafka.up_async().await;
    let probe = EventProbe::from_beginning(&settings.kafka).await;
    let events = probe
        .expect(&[&first, &second], 4, Duration::from_secs(90))
        .await;

    let for_key = |key: &str| -> Vec<MandateLevel> {
        events
            .iter()
            .filter(|r| r.key == key)
            .map(|r| r.event.mandate)
            .collect()
    };
    assert_eq!(
        for_key(&first),
        [
            MandateLevel::RealTime,
            MandateLevel::BillingOnly,
            MandateLevel::None
        ]
    );
    assert_eq!(for_key(&second), [MandateLevel::BillingOnly]);
    assert!(events.iter().all(|r| r.event.customer_id == id));
    drop(db);
    app.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn events_accepted_without_kafka_or_registry_are_relayed_after_a_restart() {
    let mut settings = test_settings();
    let reachable = settings.kafka.clone();
    apply_topics(&reachable).await;
    let probe = EventProbe::from_end(&reachable).await;
    // Nothing listens on these ports: neither Kafka nor the registry is there at all.
    settings.kafka.kafka_bootstrap_servers = format!("127.0.0.1:{}", free_port());
    settings.kafka.schema_registry_url = format!("http://127.0.0.1:{}", free_port());

    let mut app = spawn_with(settings.clone()).await;
    let connection = connection_id();
    let id = app.create(&customer_body(&connection, json!(1))).await["id"]
        .as_i64()
        .unwrap();
    let response = app
        .put_customer(id, &customer_body(&connection, json!(2)))
        .await;
    assert_eq!(response.status(), 200);
    // Shutdown must not wait for services that are not there.
    app.shutdown().await;

    settings.kafka = reachable;
    let restarted = spawn_with(settings).await;
    let events = probe
        .expect(&[&connection], 2, Duration::from_secs(30))
        .await;
    let mandates: Vec<_> = events.iter().map(|r| r.event.mandate).collect();
    assert_eq!(
        mandates,
        [MandateLevel::BillingOnly, MandateLevel::RealTime]
    );
    restarted.stop().await;
}
