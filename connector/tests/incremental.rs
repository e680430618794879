//! Incremental snapshots on a signal, on the real PostgreSQL and Kafka: the
//! running connector snapshots a table in chunks between watermarks while
//! writers keep changing it, and the events of every key still never go
//! back in time; a restart resumes after the last published chunk.

mod common;

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use common::*;
use serde_json::{json, Value as Json};
use testkit::fold::Fold;

const SIGNAL: &str =
    "CREATE TABLE signal (id varchar(64) PRIMARY KEY, type varchar(32) NOT NULL, data text);";

fn connector_env(chunk: &str) -> Vec<(&'static str, String)> {
    vec![
        ("CONNECTOR_FORMAT", "json".into()),
        ("CONNECTOR_SNAPSHOT_MODE", "never".into()),
        ("CONNECTOR_SIGNAL_TABLE", "public.signal".into()),
        ("CONNECTOR_INCREMENTAL_SNAPSHOT_CHUNK_SIZE", chunk.into()),
        ("RUST_LOG", "warn,connector::incremental=info".into()),
    ]
}

fn spawn(env: &TestEnv, chunk: &str) -> Connector {
    let extra = connector_env(chunk);
    let extra: Vec<(&str, &str)> = extra.iter().map(|(k, v)| (*k, v.as_str())).collect();
    env.spawn_logged(&["t"], &extra)
}

async fn signal_snapshot(env: &TestEnv) {
    env.client
        .batch_execute(
            r#"INSERT INTO signal VALUES ('ad-hoc-1', 'execute-snapshot',
                 '{"data-collections": ["public.t"], "type": "incremental"}')"#,
        )
        .await
        .unwrap();
}

async fn streaming(env: &TestEnv) {
    wait_for(60, "connector streaming", || async {
        env.streaming_walsender().await.is_some()
    })
    .await;
}

/// key → the row as the table has it now.
async fn table_state(env: &TestEnv) -> HashMap<String, Json> {
    let rows = env.client.query("SELECT id, v FROM t", &[]).await.unwrap();
    rows.iter()
        .map(|r| {
            let (id, v): (i32, i32) = (r.get(0), r.get(1));
            (json!({"id": id}).to_string(), json!({"id": id, "v": v}))
        })
        .collect()
}

/// Per key, the events in topic order as `op:v` (`d` for deletes), and the
/// keys whose history goes back in time: a version lower than one already
/// seen, or anything after a delete (ids are never reused).
fn fold(records: &[Record]) -> (Fold, Vec<String>) {
    let mut f = Fold::default();
    for r in records {
        let (Some(key), Some(v)) = (&r.key, &r.value) else {
            continue; // tombstones
        };
        let op = v["op"].as_str().unwrap();
        let id = match op {
            "d" => "d".to_string(),
            _ => format!("{op}:{}", v["after"]["v"]),
        };
        f.push(&key.to_string(), &id);
    }
    let mut stale = Vec::new();
    for (key, events) in f.keys() {
        let mut seen = -1i64;
        let mut deleted = false;
        for (i, e) in events.iter().enumerate() {
            let prev = i.checked_sub(1).map_or("", |p| events[p].as_str());
            if deleted {
                stale.push(format!("{key}: {e} after {prev}"));
                break;
            }
            if e == "d" {
                deleted = true;
                continue;
            }
            let v: i64 = e.split_once(':').unwrap().1.parse().unwrap();
            if v < seen {
                stale.push(format!("{key}: {e} after {prev}"));
                break;
            }
            seen = v;
        }
    }
    (f, stale)
}

/// A small deterministic generator (no extra dependency).
struct XorShift(u64);

impl XorShift {
    fn below(&mut self, n: u64) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0 % n
    }
}

/// Updates ranges of ten keys (v = v + 1), inserts new keys past `rows`
/// and deletes some, until `stop`; returns how many statements it ran.
async fn writer(url: String, seed: u64, rows: u64, next_id: i32, stop: Arc<AtomicBool>) -> u64 {
    let client = connect(&url).await;
    let mut rng = XorShift(seed);
    let mut n = 0u64;
    let mut id = next_id;
    while !stop.load(Ordering::Relaxed) && n < 200_000 {
        let x = rng.below(rows) as i32 + 1;
        let sql = match n % 20 {
            7 => {
                id += 1;
                format!("INSERT INTO t VALUES ({id}, 0)")
            }
            13 => format!("DELETE FROM t WHERE id = {x}"),
            _ => format!("UPDATE t SET v = v + 1 WHERE id BETWEEN {x} AND {}", x + 9),
        };
        client.batch_execute(&sql).await.unwrap();
        n += 1;
    }
    n
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn incremental_snapshot_under_concurrent_writes_emits_no_stale_row() {
    let env = TestEnv::new().await;
    env.client
        .batch_execute(&format!(
            "{SIGNAL}
             CREATE TABLE t (id int PRIMARY KEY, v int NOT NULL);
             INSERT INTO t SELECT g, 0 FROM generate_series(1, 4000) g;"
        ))
        .await
        .unwrap();
    let mut conn = spawn(&env, "200");
    streaming(&env).await;

    let stop = Arc::new(AtomicBool::new(false));
    let writers: Vec<_> = [(1u64, 1_000_000), (2, 2_000_000)]
        .into_iter()
        .map(|(seed, first)| {
            tokio::spawn(writer(
                env.url.clone(),
                0x9e37_79b9_7f4a_7c15 ^ seed,
                4000,
                first,
                stop.clone(),
            ))
        })
        .collect();
    signal_snapshot(&env).await;
    wait_for(120, "incremental snapshot done", || async {
        conn.log().contains("incremental snapshot done")
    })
    .await;
    stop.store(true, Ordering::Relaxed);
    let mut statements = 0;
    for w in writers {
        statements += w.await.unwrap();
    }
    assert_eq!(conn.exited(), None, "connector exited:\n{}", conn.log());

    let expected = table_state(&env).await;
    let mut reader = TopicReader::new(&env.kafka, &env.topic("t")).await;
    reader
        .until(120, "the topic to reproduce the table", |r| {
            materialize(r) == expected
        })
        .await;
    let (f, stale) = fold(&reader.records);
    assert!(
        stale.is_empty(),
        "{} keys went back in time: {:?}",
        stale.len(),
        &stale[..stale.len().min(5)]
    );
    let reads = reader
        .records
        .iter()
        .filter(|r| r.op() == Some("r"))
        .count();
    let keys_read = f
        .keys()
        .filter(|(_, e)| e.iter().any(|e| e.starts_with("r:")))
        .count();
    assert_eq!(reads, keys_read, "a key read twice");
    // Rows no writer touched reached the topic through the snapshot only.
    assert!(reads > 1000, "{reads} snapshot rows");
    let snapshot_source = reader
        .records
        .iter()
        .find(|r| r.op() == Some("r"))
        .and_then(|r| r.value.clone())
        .unwrap();
    assert_eq!(snapshot_source["source"]["snapshot"], "incremental");
    println!(
        "{statements} concurrent statements, {} events, {reads} snapshot rows, {} keys",
        f.events(),
        f.len()
    );
    conn.stop();
    env.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_restart_resumes_the_incremental_snapshot_after_the_last_chunk() {
    let env = TestEnv::new().await;
    env.client
        .batch_execute(&format!(
            "{SIGNAL}
             CREATE TABLE t (id int PRIMARY KEY, v int NOT NULL);
             INSERT INTO t SELECT g, 0 FROM generate_series(1, 8000) g;"
        ))
        .await
        .unwrap();
    let mut conn = spawn(&env, "50");
    streaming(&env).await;
    signal_snapshot(&env).await;
    let mut reader = TopicReader::new(&env.kafka, &env.topic("t")).await;
    reader
        .until(120, "a fifth of the snapshot", |r| r.len() >= 1500)
        .await;
    conn.stop();
    assert!(
        !conn.log().contains("incremental snapshot done"),
        "finished before the stop"
    );
    let mut conn = spawn(&env, "50");
    wait_for(120, "incremental snapshot done", || async {
        conn.log().contains("incremental snapshot done")
    })
    .await;
    assert!(
        conn.log().contains("resuming incremental snapshot"),
        "{}",
        conn.log()
    );
    reader
        .until(60, "every row", |r| materialize(r).len() == 8000)
        .await;
    let (f, stale) = fold(&reader.records);
    assert!(stale.is_empty(), "{stale:?}");
    let twice = f.keys().filter(|(_, e)| e.len() > 1).count();
    // A clean stop publishes the progress with the last chunk: nothing again.
    assert_eq!(twice, 0, "{twice} rows read twice");
    assert_eq!(f.events(), 8000);
    conn.stop();
    env.cleanup().await;
}
