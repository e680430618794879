//! Crash and outage tests on a private Kafka broker (`testkit::Isolated`:
//! `scripts/infra` under a home and free ports of its own), so that stopping
//! Kafka never disturbs anyone else's tests.

mod common;

use std::collections::{HashMap, HashSet};
use std::process::Command;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::*;
use serde_json::{json, Value as Json};

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
    let broker = testkit::Isolated::new("kafka");
    broker.up_async().await;
    let kafka = broker.address();
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
    broker.down_async().await;
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
    // SIGTERM while Kafka is away: a clean exit within the shutdown timeout
    // (what Kafka never acknowledged comes back from the slot at the next start).
    let stopped_walsender = streaming_walsender(&env).await;
    let asked = Instant::now();
    Command::new("kill")
        .args(["-TERM", &conn.child.id().to_string()])
        .status()
        .unwrap();
    let status = loop {
        if let Some(status) = conn.child.try_wait().unwrap() {
            break status;
        }
        assert!(
            asked.elapsed() < Duration::from_secs(60),
            "SIGTERM during a Kafka outage did not stop the connector"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    assert!(status.success(), "SIGTERM during the outage: {status}");
    eprintln!(
        "SIGTERM during a Kafka outage: exited in {:?}",
        asked.elapsed()
    );
    broker.up_async().await;
    conn = env.spawn(&tables, &extra);
    wait_for(60, "the restarted connector streaming", || async {
        matches!(streaming_walsender(&env).await, Some(pid) if Some(pid) != stopped_walsender)
    })
    .await;

    // Another outage, and this time the connector is killed while its
    // producer still holds records Kafka never got: they must come back
    // from the slot.
    broker.down_async().await;
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
    broker.up_async().await;
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
        "kill -9 x4 + SIGTERM + 2 outages: {changes} changes, {duplicates} duplicate records from {} \
         transactions (replays of unacknowledged ones, identical, same lsn)",
        dup_txns.len()
    );

    conn.stop();
    env.cleanup().await;
}

/// A writer that keeps committing one-row transactions through server
/// restarts: a failed statement reconnects and tries the same row again
/// (`ON CONFLICT DO NOTHING`, since a commit whose answer was lost may have
/// happened). Returns once `rows` rows are in.
async fn resilient_writer(url: String, rows: i64, done: Arc<AtomicUsize>) {
    let mut client: Option<tokio_postgres::Client> = None;
    let mut i = 0;
    let deadline = Instant::now() + Duration::from_secs(300);
    while i < rows {
        assert!(Instant::now() < deadline, "writer stuck at row {i}");
        let c = match &client {
            Some(c) if !c.is_closed() => c,
            _ => match tokio_postgres::connect(&url, tokio_postgres::NoTls).await {
                Ok((c, conn)) => {
                    tokio::spawn(async move {
                        let _ = conn.await;
                    });
                    // The dev server commits asynchronously; an acknowledged
                    // commit must survive the kill -9 for the count to hold.
                    if c.batch_execute("SET synchronous_commit = on").await.is_ok() {
                        client = Some(c);
                    }
                    continue;
                }
                Err(_) => {
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    continue;
                }
            },
        };
        let sql = format!("INSERT INTO pr VALUES ({i}, {i}) ON CONFLICT DO NOTHING");
        match c.batch_execute(&sql).await {
            Ok(()) => {
                i += 1;
                done.store(i as usize, Ordering::SeqCst);
            }
            Err(_) => {
                client = None;
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        }
    }
}

/// `up` right after a stop can find the old server's backends still exiting: after a
/// `kill -9` ("lock file postmaster.pid already exists"), and for a moment even after a
/// clean stop ("pre-existing shared memory block is still in use"). Try again until they
/// are gone.
async fn start_until_up(pg: &testkit::Isolated) {
    let script = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../scripts/infra");
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let out = Command::new(&script)
            .args(["up", "postgres"])
            .env("INFRA_HOME", pg.home())
            .env("POSTGRES_PORT", pg.port().to_string())
            .output()
            .unwrap();
        if out.status.success() {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "postgres did not come back after kill -9: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_restarted_mid_stream_resumes_and_loses_nothing() {
    let pg = testkit::Isolated::new("postgres");
    pg.up_async().await;
    let admin_url = format!("postgres://platform:platform@{}/platform", pg.address());
    let env = TestEnv::on(testkit::env::kafka_bootstrap(), admin_url).await;
    env.client
        .batch_execute("CREATE TABLE pr (id bigint PRIMARY KEY, v bigint NOT NULL)")
        .await
        .unwrap();
    let tables = ["pr"];
    let mut conn = env.spawn_logged(&tables, &[("CONNECTOR_FORMAT", "json")]);
    wait_for(60, "connector streaming", || slot_active(&env)).await;

    let rows = 3000i64;
    let done = Arc::new(AtomicUsize::new(0));
    let writer = tokio::spawn(resilient_writer(env.url.clone(), rows, done.clone()));
    // Two restarts while rows commit: a clean one and a crash (kill -9,
    // crash recovery at the next start).
    for (k, crash) in [(1, false), (2, true)] {
        wait_for(120, "writer progress", || {
            let d = done.load(Ordering::SeqCst) as i64;
            async move { d >= k * rows / 3 }
        })
        .await;
        if crash {
            pg.kill();
            start_until_up(&pg).await;
        } else {
            pg.down_async().await;
            // A backend can outlive its postmaster's clean exit by a moment and keep the
            // shared memory block attached; PostgreSQL then refuses to start until it is
            // gone, so the start is retried as after a crash.
            start_until_up(&pg).await;
        }
        assert!(conn.child.try_wait().unwrap().is_none(), "{}", conn.log());
    }
    writer.await.unwrap();

    let client = connect(&env.url).await;
    let in_table: Vec<i64> = client
        .query("SELECT id FROM pr ORDER BY id", &[])
        .await
        .unwrap()
        .iter()
        .map(|r| r.get(0))
        .collect();
    assert_eq!(in_table.len() as i64, rows);
    let expected: HashMap<String, Json> = in_table
        .iter()
        .map(|id| (json!({"id": id}).to_string(), json!({"id": id, "v": id})))
        .collect();
    let mut reader = TopicReader::new(&env.kafka, &env.topic("pr")).await;
    reader
        .until(180, "every committed row after the restarts", |recs| {
            materialize(recs) == expected
        })
        .await;
    assert!(conn.child.try_wait().unwrap().is_none(), "{}", conn.log());
    // Every row was created once: after dropping replays (same key, lsn, op),
    // the fold has exactly one `c` per key.
    let mut seen = HashSet::new();
    let mut fold = testkit::fold::Fold::default();
    for r in &reader.records {
        let key = r.key.as_ref().unwrap().to_string();
        if seen.insert((key.clone(), r.lsn(), r.op().map(str::to_string))) {
            fold.push(&key, r.op().unwrap_or("tombstone"));
        }
    }
    assert_eq!((fold.len(), fold.events()), (rows as usize, rows as usize));
    assert!(fold.keys().all(|(_, ops)| ops == ["c"]));
    eprintln!(
        "postgres restart + kill -9: {rows} rows, {} records ({} replays)",
        reader.records.len(),
        reader.records.len() - rows as usize
    );
    conn.stop();
    drop(client);
    env.cleanup().await;
}
