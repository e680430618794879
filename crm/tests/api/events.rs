//! What the CRM publishes to `connection-mandates`, and when it publishes nothing.

use std::time::Duration;

use serde_json::json;
use topics::events::MandateLevel;

use crate::helpers::{
    apply_topics, connection_id, customer_body, spawn_app, spawn_with, test_settings, EventProbe,
};

const WAIT: Duration = Duration::from_secs(60);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn post_and_mandate_change_publish_one_event_each_with_the_event_id_header() {
    let app = spawn_app().await;
    apply_topics(&app.settings.kafka).await;
    let probe = EventProbe::from_end(&app.settings.kafka).await;
    let connection = connection_id();

    let id = app.create(&customer_body(&connection, json!(2))).await["id"]
        .as_i64()
        .unwrap();
    let response = app
        .put_customer(id, &customer_body(&connection, json!("1")))
        .await;
    assert_eq!(response.status(), 200);

    let events = probe.expect(&[&connection], 2, WAIT).await;
    let summary: Vec<_> = events
        .iter()
        .map(|r| (r.event.customer_id, r.event.mandate))
        .collect();
    assert_eq!(
        summary,
        [
            (id, MandateLevel::RealTime),
            (id, MandateLevel::BillingOnly)
        ]
    );
    for received in &events {
        assert_eq!(received.key, connection);
        assert_eq!(received.event.connection_id.as_str(), connection);
        assert_eq!(
            received.header_event_id.as_deref(),
            Some(received.event.event_id.to_string().as_str()),
            "the event-id header carries the payload's event id"
        );
    }
    assert_ne!(events[0].event.event_id, events[1].event.event_id);
    let seqs: Vec<i64> = events
        .iter()
        .map(|r| r.seq.expect("event-seq header"))
        .collect();
    assert!(
        seqs[0] < seqs[1],
        "event-seq increases per connection: {seqs:?}"
    );
    app.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_city_change_publishes_nothing() {
    let app = spawn_app().await;
    apply_topics(&app.settings.kafka).await;
    let probe = EventProbe::from_end(&app.settings.kafka).await;
    let connection = connection_id();
    let mut body = customer_body(&connection, json!(2));
    let id = app.create(&body).await["id"].as_i64().unwrap();

    body["city"] = json!("Roeselare");
    body["lastName"] = json!("Declercq");
    assert_eq!(app.put_customer(id, &body).await.status(), 200);
    // A later change that does publish: per-connection order means an event from the city
    // change would have to arrive before this one.
    body["connectionMandate"] = json!(0);
    assert_eq!(app.put_customer(id, &body).await.status(), 200);

    let events = probe.expect(&[&connection], 2, WAIT).await;
    let mandates: Vec<_> = events.iter().map(|r| r.event.mandate).collect();
    assert_eq!(mandates, [MandateLevel::RealTime, MandateLevel::None]);
    app.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn moving_to_another_connection_revokes_the_old_one_then_announces_the_new_one() {
    let app = spawn_app().await;
    apply_topics(&app.settings.kafka).await;
    let probe = EventProbe::from_end(&app.settings.kafka).await;
    let (old, new) = (connection_id(), connection_id());
    let id = app.create(&customer_body(&old, json!(2))).await["id"]
        .as_i64()
        .unwrap();

    let response = app.put_customer(id, &customer_body(&new, json!(2))).await;
    assert_eq!(response.status(), 200);

    let events = probe.expect(&[&old, &new], 3, WAIT).await;
    for r in &events {
        assert_eq!(
            r.event.connection_id.as_str(),
            r.key,
            "the event names its key's connection"
        );
    }
    let summary: Vec<_> = events
        .iter()
        .map(|r| (r.key.as_str(), r.event.customer_id, r.event.mandate))
        .collect();
    // Different keys may sit on different partitions, so only per-key order is promised;
    // the outbox order (old revoked before new announced) is checked in the database.
    let for_old: Vec<_> = summary.iter().filter(|(k, ..)| *k == old).collect();
    let for_new: Vec<_> = summary.iter().filter(|(k, ..)| *k == new).collect();
    assert_eq!(
        for_old,
        [
            &(old.as_str(), id, MandateLevel::RealTime),
            &(old.as_str(), id, MandateLevel::None)
        ]
    );
    assert_eq!(for_new, [&(new.as_str(), id, MandateLevel::RealTime)]);

    let mut db = app.database().await;
    let keys: Vec<String> = sqlx::query_scalar("SELECT key FROM outbox ORDER BY id")
        .fetch_all(&mut db)
        .await
        .unwrap();
    assert_eq!(keys, [old.clone(), old, new]);
    app.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_instances_on_one_database_share_one_relay_and_keep_order() {
    let settings = test_settings();
    apply_topics(&settings.kafka).await;
    let probe = EventProbe::from_end(&settings.kafka).await;
    let first = spawn_with(settings.clone()).await;
    let second = spawn_with(settings).await;
    let connection = connection_id();

    let id = first.create(&customer_body(&connection, json!(0))).await["id"]
        .as_i64()
        .unwrap();
    for (app, mandate) in [(&second, 1), (&first, 2), (&second, 0)] {
        let response = app
            .put_customer(id, &customer_body(&connection, json!(mandate)))
            .await;
        assert_eq!(response.status(), 200);
    }

    let events = probe.expect(&[&connection], 4, WAIT).await;
    let mandates: Vec<_> = events.iter().map(|r| r.event.mandate).collect();
    assert_eq!(
        mandates,
        [
            MandateLevel::None,
            MandateLevel::BillingOnly,
            MandateLevel::RealTime,
            MandateLevel::None
        ]
    );
    // The relay lock is a session-level advisory lock: exactly one session holds it.
    let mut db = first.database().await;
    let holders: i64 = sqlx::query_scalar(
        "SELECT count(*) FROM pg_locks
         WHERE locktype = 'advisory' AND granted AND objsubid = 1
           AND database = (SELECT oid FROM pg_database WHERE datname = current_database())",
    )
    .fetch_one(&mut db)
    .await
    .unwrap();
    assert_eq!(holders, 1);
    drop(db);
    let mut second = second;
    second.shutdown().await;
    first.stop().await;
}
