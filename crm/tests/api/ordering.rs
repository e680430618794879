//! Concurrent writers of one connection: the events on Kafka per connection are in commit
//! order, because each writer holds the connection's advisory lock from its outbox insert to
//! its commit (without it, a later id could commit first and be relayed before an earlier one).

use std::collections::HashMap;
use std::time::Duration;

use serde_json::json;
use topics::events::MandateLevel;

use crate::helpers::{apply_topics, connection_id, customer_body, spawn_app, EventProbe};

const CUSTOMERS: usize = 10;
const ROUNDS: usize = 10;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_moves_onto_one_connection_reach_kafka_in_commit_order() {
    let app = spawn_app().await;
    apply_topics(&app.settings.kafka).await;
    let probe = EventProbe::from_end(&app.settings.kafka).await;
    let shared = connection_id();
    let homes: Vec<String> = (0..CUSTOMERS).map(|_| connection_id()).collect();
    let mut ids = Vec::new();
    for home in &homes {
        ids.push(
            app.create(&customer_body(home, json!(1))).await["id"]
                .as_i64()
                .unwrap(),
        );
    }

    // Every customer moves onto the shared connection and back home, all at once: the shared
    // connection is written by many transactions of different customers at the same time.
    let mut writers = Vec::new();
    for (id, home) in ids.iter().copied().zip(homes.clone()) {
        let client = app.client.clone();
        let url = format!("{}/customers/{id}", app.address);
        let shared = shared.clone();
        writers.push(tokio::spawn(async move {
            for round in 0..ROUNDS {
                for body in [
                    customer_body(&shared, json!(2)),
                    customer_body(&home, json!(1)),
                ] {
                    let response = client.put(&url).json(&body).send().await.unwrap();
                    assert_eq!(response.status(), 200, "round {round}");
                }
            }
        }));
    }
    for writer in writers {
        writer.await.unwrap();
    }

    let mut keys: Vec<&str> = homes.iter().map(String::as_str).collect();
    keys.push(&shared);
    let mut db = app.database().await;
    let rows: i64 = sqlx::query_scalar("SELECT count(*) FROM outbox WHERE key = ANY($1)")
        .bind(&keys)
        .fetch_one(&mut db)
        .await
        .unwrap();
    let events = probe
        .expect(&keys, rows as usize, Duration::from_secs(60))
        .await;

    // Per connection, event-seq (the outbox id, in commit order per key) only increases.
    let mut last_seq: HashMap<&str, i64> = HashMap::new();
    for received in &events {
        let seq = received.seq.expect("every event carries event-seq");
        if let Some(before) = last_seq.insert(&received.key, seq) {
            assert!(
                seq > before,
                "connection {}: event-seq {seq} arrived after {before}",
                received.key
            );
        }
    }
    // The last event of each connection is the CRM's final state of it: the mandate of the
    // customer on it, or none when nobody is on it (nobody is on the shared one).
    for key in &keys {
        let in_database: Option<i16> = sqlx::query_scalar(
            "SELECT max(connection_mandate) FROM customers WHERE connection_id = $1",
        )
        .bind(key)
        .fetch_one(&mut db)
        .await
        .unwrap();
        let expected = in_database
            .and_then(|level| MandateLevel::from_level(level as u8))
            .unwrap_or(MandateLevel::None);
        let last = events.iter().rev().find(|r| r.key == *key).unwrap();
        assert_eq!(
            last.event.mandate, expected,
            "last event of connection {key}"
        );
    }
    let distinct: std::collections::HashSet<_> = events.iter().map(|r| r.event.event_id).collect();
    assert_eq!(distinct.len(), events.len(), "no event twice");
    drop(db);
    app.stop().await;
}
