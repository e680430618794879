//! Crash and outage tests on a private Kafka broker (started with the
//! platform's `scripts/infra` under its own INFRA_HOME and ports), so that
//! stopping Kafka never disturbs anyone else's tests.

mod common;

use std::collections::{HashMap, HashSet};
use std::path::PathBuf;
use std::process::Command;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

use common::*;
use serde_json::{json, Value as Json};

const PORT: &str = "19092";

fn infra(args: &[&str]) {
    let script = std::env::var("INFRA_SCRIPT")
        .map(PathBuf::from)
        .unwrap_or_else(|_| PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../scripts/infra"));
    assert!(
        script.exists(),
        "{} not found (set INFRA_SCRIPT)",
        script.display()
    );
    let status = Command::new(&script)
        .args(args)
        .env("INFRA_HOME", "/tmp/connector-infra")
        .env("KAFKA_PORT", PORT)
        .env("KAFKA_CONTROLLER_PORT", "19093")
        .status()
        .expect("run infra script");
    assert!(status.success(), "infra {args:?} failed");
}

/// Stops the private broker even when an assertion fails.
struct Broker;

impl Drop for Broker {
    fn drop(&mut self) {
        if std::thread::panicking() {
            let script = std::env::var("INFRA_SCRIPT")
                .map(PathBuf::from)
                .unwrap_or_else(|_| {
                    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../scripts/infra")
                });
            let _ = Command::new(script)
                .args(["down", "kafka"])
                .env("INFRA_HOME", "/tmp/connector-infra")
                .env("KAFKA_PORT", PORT)
                .env("KAFKA_CONTROLLER_PORT", "19093")
                .status();
        }
    }
}

/// The slot is held by a walsender that runs START_REPLICATION. `active`
/// alone is not enough: the slot is active while CREATE_REPLICATION_SLOT
/// waits for its consistent point too, and writes committed before that
/// point reach the topic as snapshot rows (`op: "r"`), not as changes.
async fn slot_active(env: &TestEnv) -> bool {
    streaming_walsender(env).await.is_some()
}

/// Whether the slot's walsender has sent the connector everything written so far.
async fn sent_past_current_wal(env: &TestEnv) -> bool {
    let row = env
        .client
        .query_opt(
            "SELECT r.sent_lsn >= pg_current_wal_lsn() FROM pg_replication_slots s
               JOIN pg_stat_replication r ON r.pid = s.active_pid
              WHERE s.slot_name = $1",
            &[&env.slot],
        )
        .await
        .unwrap();
    row.is_some_and(|row| row.get::<_, Option<bool>>(0) == Some(true))
}

/// The pid of the walsender streaming the slot, if one is.
async fn streaming_walsender(env: &TestEnv) -> Option<i32> {
    env.client
        .query_opt(
            "SELECT r.pid FROM pg_replication_slots s
               JOIN pg_stat_replication r ON r.pid = s.active_pid
              WHERE s.slot_name = $1 AND s.active AND r.state IN ('catchup', 'streaming')",
            &[&env.slot],
        )
        .await
        .unwrap()
        .map(|row| row.get(0))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill_9_under_load_and_kafka_outages_lose_nothing() {
    infra(&["up", "kafka"]);
    let _broker = Broker;
    let kafka = format!("127.0.0.1:{PORT}");
    let env = TestEnv::with_kafka(kafka.clone()).await;
    env.client
        .batch_execute("CREATE TABLE load (id bigint PRIMARY KEY, v int NOT NULL)")
        .await
        .unwrap();
    let tables = ["load"];
    let extra = [("CONNECTOR_FORMAT", "json")];
    let mut conn = env.spawn(&tables, &extra);
    wait_for(60, "connector streaming", || slot_active(&env)).await;

    // Bounded load: each transaction inserts 5 rows and updates 5 older
    // ones, so several records are in flight when the connector is killed.
    let done = Arc::new(AtomicUsize::new(0));
    let total = 800usize;
    let writer = {
        let url = env.url.clone();
        let done = done.clone();
        tokio::spawn(async move {
            let c = connect(&url).await;
            for i in 0..total as i64 {
                c.batch_execute(&format!(
                    "BEGIN;
                     INSERT INTO load SELECT g, 0 FROM generate_series({lo}, {lo} + 4) g;
                     UPDATE load SET v = v + 1 WHERE id BETWEEN {half} AND {half} + 4;
                     COMMIT;",
                    lo = i * 5,
                    half = i * 5 / 2
                ))
                .await
                .unwrap();
                done.fetch_add(1, Ordering::SeqCst);
            }
        })
    };
    let mut killed_walsender = None;
    for k in 1..=3 {
        wait_for(120, "writer progress", || {
            let d = done.load(Ordering::SeqCst);
            async move { d >= k * total / 4 }
        })
        .await;
        killed_walsender = streaming_walsender(&env).await;
        conn.kill9();
        conn = env.spawn(&tables, &extra);
    }
    writer.await.unwrap();

    // Kafka outage while changes keep committing: the connector waits. (The
    // last restart must be past its startup, which needs Kafka once; the
    // killed connector's walsender can look streaming for a moment, so wait
    // for a new one.)
    wait_for(60, "the restarted connector streaming", || async {
        matches!(streaming_walsender(&env).await, Some(pid) if Some(pid) != killed_walsender)
    })
    .await;
    infra(&["down", "kafka"]);
    for i in 0..200i64 {
        env.client
            .batch_execute(&format!("UPDATE load SET v = v + 1 WHERE id = {}", i * 3))
            .await
            .unwrap();
    }
    // The connector has read the updates from the WAL and holds them while Kafka is away.
    wait_for(60, "the connector reading the updates", || {
        sent_past_current_wal(&env)
    })
    .await;
    assert!(
        conn.child.try_wait().unwrap().is_none(),
        "connector died during the Kafka outage"
    );
    infra(&["up", "kafka"]);

    // Another outage, and this time the connector is killed while its
    // producer still holds records Kafka never got: they must come back
    // from the slot.
    infra(&["down", "kafka"]);
    for i in 0..100i64 {
        env.client
            .batch_execute(&format!(
                "UPDATE load SET v = v + 1 WHERE id = {}",
                i * 5 + 1
            ))
            .await
            .unwrap();
    }
    wait_for(60, "the connector reading the updates", || {
        sent_past_current_wal(&env)
    })
    .await;
    conn.kill9();
    infra(&["up", "kafka"]);
    conn = env.spawn(&tables, &extra);

    let rows = env
        .client
        .query("SELECT id, v FROM load", &[])
        .await
        .unwrap();
    let expected: HashMap<String, Json> = rows
        .iter()
        .map(|r| {
            let (id, v): (i64, i32) = (r.get(0), r.get(1));
            (json!({"id": id}).to_string(), json!({"id": id, "v": v}))
        })
        .collect();
    let mut reader = TopicReader::new(&kafka, &env.topic("load")).await;
    reader
        .until(
            180,
            "every committed change after kills and outage",
            |recs| materialize(recs) == expected,
        )
        .await;
    assert!(conn.child.try_wait().unwrap().is_none(), "connector exited");

    // Every change is there once when deduplicated by (key, lsn, op); a
    // duplicate is a byte-identical replay of a change already published.
    let mut seen: HashMap<(String, i64, String), Json> = HashMap::new();
    let mut duplicates = 0;
    let mut dup_txns = HashSet::new();
    for r in reader.records.iter().filter(|r| r.value.is_some()) {
        let v = r.value.clone().unwrap();
        let id = (
            r.key.as_ref().unwrap().to_string(),
            r.lsn().unwrap(),
            r.op().unwrap().to_string(),
        );
        if let Some(first) = seen.get(&id) {
            duplicates += 1;
            dup_txns.insert(v["source"]["txId"].as_i64());
            assert_eq!(first["after"], v["after"], "same lsn, different change");
        } else {
            seen.insert(id, v);
        }
    }
    let changes = total * 10 + 300;
    // The table was empty when the connector's snapshot was taken; rows
    // here mean load was written before the slot's consistent point.
    let snapshot_rows = reader
        .records
        .iter()
        .filter(|r| r.op() == Some("r"))
        .count();
    assert_eq!(
        seen.len(),
        changes,
        "distinct changes (duplicates seen: {duplicates}, snapshot rows: {snapshot_rows})"
    );
    let txids: HashSet<i64> = reader
        .records
        .iter()
        .filter_map(|r| r.value.as_ref()?["source"]["txId"].as_i64())
        .collect();
    assert_eq!(txids.len(), total + 300);
    eprintln!(
        "kill -9 x4 + 2 outages: {changes} changes, {duplicates} duplicate records from {} \
         transactions (replays of unacknowledged ones, identical, same lsn)",
        dup_txns.len()
    );

    conn.stop();
    env.cleanup().await;
    infra(&["down", "kafka"]);
}
