//! Incremental snapshots on a signal, on the real PostgreSQL and Kafka: the
//! running connector snapshots a table in chunks between watermarks while
//! writers keep changing it, and the events of every key still never go
//! back in time; a restart resumes after the last published chunk.

mod common;

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

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

/// WAL bytes between the server's insert position and the slot's
/// `confirmed_flush_lsn` (what the connector has published); `None` before
/// the slot confirmed anything.
async fn slot_lag(client: &tokio_postgres::Client, slot: &str) -> Option<i64> {
    client
        .query_opt(
            "SELECT pg_wal_lsn_diff(pg_current_wal_lsn(), confirmed_flush_lsn)::int8
               FROM pg_replication_slots WHERE slot_name = $1",
            &[&slot],
        )
        .await
        .unwrap()
        .and_then(|r| r.get(0))
}

/// The writers pause while the connector is more than this many WAL bytes
/// behind: every chunk waits for the stream to reach its close watermark, so
/// an unbounded backlog (writers outrunning the connector on a slow, busy
/// machine) would make each chunk slower than the last.
const MAX_LAG: i64 = 4 << 20;

/// Rows per chunk in the concurrent-writes test.
const CHUNK: u64 = 200;

/// What the writers did so far, shared with the test's waits.
#[derive(Default)]
struct Writes {
    stop: AtomicBool,
    statements: AtomicU64,
    paused_ms: AtomicU64,
    /// The last key of the last chunk the connector read (from its log):
    /// the next chunk starts after it.
    frontier: AtomicU64,
}

/// The last key of the last chunk read, from the connector's debug log.
fn frontier(log: &str) -> Option<u64> {
    let line = log.lines().rev().find(|l| l.contains("chunk read"))?;
    let (_, rest) = line.split_once("last_key=Some([\"")?;
    rest.split('"').next()?.parse().ok()
}

/// Updates ranges of ten keys (v = v + 1), inserts new keys past `rows`
/// and deletes some, until `stop`; returns how many statements it ran. Three
/// in four updates and deletes go to the chunk the connector reads next, so
/// that writes to its keys commit around its watermarks.
async fn writer(
    url: String,
    slot: String,
    seed: u64,
    rows: u64,
    next_id: i32,
    writes: Arc<Writes>,
) -> u64 {
    let client = connect(&url).await;
    let mut rng = XorShift(seed);
    let mut n = 0u64;
    let mut id = next_id;
    while !writes.stop.load(Ordering::Relaxed) && n < 200_000 {
        if n.is_multiple_of(100) {
            let paused = Instant::now();
            let deadline = paused + Duration::from_secs(120);
            let mut lag = slot_lag(&client, &slot).await;
            while lag.is_some_and(|l| l > MAX_LAG) && !writes.stop.load(Ordering::Relaxed) {
                assert!(
                    Instant::now() < deadline,
                    "the connector stayed more than {MAX_LAG} WAL bytes behind for 120 s \
                     (lag {lag:?}) after {} statements",
                    writes.statements.load(Ordering::Relaxed)
                );
                tokio::time::sleep(Duration::from_millis(50)).await;
                lag = slot_lag(&client, &slot).await;
            }
            writes
                .paused_ms
                .fetch_add(paused.elapsed().as_millis() as u64, Ordering::Relaxed);
        }
        let next = writes.frontier.load(Ordering::Relaxed);
        let x = if !n.is_multiple_of(4) && next > 0 && next < rows {
            (next + rng.below(CHUNK + 9)).saturating_sub(8) as i32
        } else {
            rng.below(rows) as i32 + 1
        };
        let sql = match n % 20 {
            7 => {
                id += 1;
                format!("INSERT INTO t VALUES ({id}, 0)")
            }
            13 => format!("DELETE FROM t WHERE id = {x}"),
            _ => format!("UPDATE t SET v = v + 1 WHERE id BETWEEN {x} AND {}", x + 9),
        };
        match client.batch_execute(&sql).await {
            Ok(()) => {
                writes.statements.fetch_add(1, Ordering::Relaxed);
            }
            // Two writers' overlapping range updates can deadlock: PostgreSQL rolls one of
            // them back, so it changed nothing and there is nothing for the connector to see.
            Err(e) if e.code() == Some(&tokio_postgres::error::SqlState::T_R_DEADLOCK_DETECTED) => {
            }
            Err(e) => panic!("{sql}: {e}"),
        }
        n += 1;
    }
    n
}

/// The events of `key` in topic order, `op:v@lsn`, the last `n` of them.
fn history(records: &[Record], key: &str, n: usize) -> String {
    let events: Vec<String> = records
        .iter()
        .filter(|r| r.key.as_ref().is_some_and(|k| *k.to_string() == *key))
        .filter_map(|r| {
            let v = r.value.as_ref()?;
            Some(format!(
                "{}:{}@{}",
                v["op"].as_str().unwrap_or("?"),
                v["after"]["v"],
                r.lsn().unwrap_or(-1)
            ))
        })
        .collect();
    events[events.len().saturating_sub(n)..].join(" ")
}

/// The connector's log without the terminal colours of its fields.
fn plain_log(conn: &Connector) -> String {
    let log = conn.log();
    let mut out = String::with_capacity(log.len());
    let mut chars = log.chars();
    while let Some(c) = chars.next() {
        if c == '\u{1b}' {
            // ESC [ ... m
            for c in chars.by_ref() {
                if c == 'm' {
                    break;
                }
            }
        } else {
            out.push(c);
        }
    }
    out
}

/// Lines of the connector's log that contain `what`.
fn log_lines(conn: &Connector, what: &str) -> usize {
    plain_log(conn).lines().filter(|l| l.contains(what)).count()
}

fn log_tail(conn: &Connector, n: usize) -> String {
    let log = plain_log(conn);
    let lines: Vec<&str> = log.lines().collect();
    lines[lines.len().saturating_sub(n)..].join("\n")
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
    // Debug for the incremental module: one "chunk window closed" line per chunk.
    let extra = connector_env(&CHUNK.to_string());
    let mut extra: Vec<(&str, &str)> = extra
        .iter()
        .filter(|(k, _)| *k != "RUST_LOG")
        .map(|(k, v)| (*k, v.as_str()))
        .collect();
    extra.push(("RUST_LOG", "warn,connector::incremental=debug"));
    let mut conn = env.spawn_logged(&["t"], &extra);
    streaming(&env).await;

    let writes = Arc::new(Writes::default());
    let writers: Vec<_> = [
        (1u64, 1_000_000),
        (2, 2_000_000),
        (3, 3_000_000),
        (4, 4_000_000),
    ]
    .into_iter()
    .map(|(seed, first)| {
        tokio::spawn(writer(
            env.url.clone(),
            env.slot.clone(),
            0x9e37_79b9_7f4a_7c15 ^ seed,
            4000,
            first,
            writes.clone(),
        ))
    })
    .collect();
    signal_snapshot(&env).await;
    // While chunks keep closing the snapshot is progressing: the deadline is
    // per chunk, with an overall bound.
    let started = Instant::now();
    let mut chunks = 0;
    let mut last_chunk = Instant::now();
    loop {
        let log = plain_log(&conn);
        if log.contains("incremental snapshot done") {
            break;
        }
        if let Some(next) = frontier(&log) {
            writes.frontier.store(next, Ordering::Relaxed);
        }
        let closed = log
            .lines()
            .filter(|l| l.contains("chunk window closed"))
            .count();
        if closed > chunks {
            (chunks, last_chunk) = (closed, Instant::now());
        }
        let stuck = last_chunk.elapsed() > Duration::from_secs(90);
        let late = started.elapsed() > Duration::from_secs(300);
        let exited = conn.exited();
        assert!(
            !stuck && !late && exited.is_none(),
            "incremental snapshot not done after {:?} ({}): {chunks} chunks closed, \
             {} statements written (writers paused {} ms for the connector), slot lag {:?} \
             bytes, connector exit {exited:?}; log tail:\n{}",
            started.elapsed(),
            if stuck {
                "no chunk closed for 90 s"
            } else {
                "300 s in all"
            },
            writes.statements.load(Ordering::Relaxed),
            writes.paused_ms.load(Ordering::Relaxed),
            slot_lag(&env.client, &env.slot).await,
            log_tail(&conn, 20)
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let snapshot_secs = started.elapsed().as_secs_f64();
    let chunks = log_lines(&conn, "chunk window closed");
    writes.stop.store(true, Ordering::Relaxed);
    let mut statements = 0;
    for w in writers {
        statements += w.await.unwrap();
    }
    assert_eq!(conn.exited(), None, "connector exited:\n{}", conn.log());

    let expected = table_state(&env).await;
    let mut reader = TopicReader::new(&env.kafka, &env.topic("t")).await;
    // Hundreds of thousands of events to read back: the deadline is for
    // progress (no new record for 30 s), with an overall bound.
    let (reading, mut last_new, mut seen) = (Instant::now(), Instant::now(), 0);
    loop {
        reader.poll().await;
        let got = materialize(&reader.records);
        if got == expected {
            break;
        }
        if reader.records.len() > seen {
            (seen, last_new) = (reader.records.len(), Instant::now());
        }
        let stalled = last_new.elapsed() > Duration::from_secs(30);
        if stalled || reading.elapsed() > Duration::from_secs(400) {
            let mut differ: Vec<&String> = expected
                .keys()
                .chain(got.keys())
                .filter(|k| expected.get(*k) != got.get(*k))
                .collect();
            differ.sort();
            differ.dedup();
            let shown: Vec<String> = differ
                .iter()
                .take(5)
                .map(|k| {
                    format!(
                        "{k}: table {:?}, topic {:?} [{}]",
                        expected.get(*k),
                        got.get(*k),
                        history(&reader.records, k, 8)
                    )
                })
                .collect();
            // A stale last event of a key shows here first.
            let (_, stale) = fold(&reader.records);
            panic!(
                "the topic does not reproduce the table after {:?} ({}): {} records read, \
                 {} keys in the table, {} in the topic, {} differ, slot lag {:?} bytes, \
                 {} keys went back in time {:?}; first: {shown:#?}",
                reading.elapsed(),
                if stalled {
                    "no new record for 30 s"
                } else {
                    "400 s in all"
                },
                reader.records.len(),
                expected.len(),
                got.len(),
                differ.len(),
                slot_lag(&env.client, &env.slot).await,
                stale.len(),
                &stale[..stale.len().min(5)]
            );
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let reading_secs = reading.elapsed().as_secs_f64();
    let (f, stale) = fold(&reader.records);
    let unseen = log_lines(&conn, "the chunk's snapshot did not see yet");
    // Chunks whose snapshot missed a transaction streamed before their open
    // watermark (whichever keys it changed): how often the race happened.
    let raced = plain_log(&conn)
        .lines()
        .filter(|l| l.contains("chunk window closed") && !l.contains("unseen_changes=0"))
        .count();
    assert!(
        stale.is_empty(),
        "{} keys went back in time (chunks with keys dropped for a change the chunk's \
         snapshot did not see: {unseen}): {:#?}",
        stale.len(),
        stale
            .iter()
            .take(5)
            .map(|s| {
                let key = s.split_once(": ").map_or("", |(k, _)| k);
                format!("{s} [{}]", history(&reader.records, key, 8))
            })
            .collect::<Vec<_>>()
    );
    let reads = reader
        .records
        .iter()
        .filter(|r| r.op() == Some("r"))
        .count();
    let twice: Vec<String> = f
        .keys()
        .filter(|(_, e)| e.iter().filter(|e| e.starts_with("r:")).count() > 1)
        .take(5)
        .map(|(k, _)| format!("{k} [{}]", history(&reader.records, k, 8)))
        .collect();
    assert!(twice.is_empty(), "keys read twice: {twice:#?}");
    // Rows no writer touched (v still 0) reached the topic through the
    // snapshot only, as one `r`.
    let untouched: Vec<&String> = expected
        .iter()
        .filter(|(_, row)| row["v"] == 0 && row["id"].as_i64().is_some_and(|id| id <= 4000))
        .map(|(k, _)| k)
        .collect();
    let unread: Vec<String> = untouched
        .iter()
        .filter(|k| f.events_of(k) != ["r:0"])
        .take(5)
        .map(|k| format!("{k} [{}]", history(&reader.records, k, 8)))
        .collect();
    assert!(
        reads > 0 && unread.is_empty(),
        "{reads} snapshot rows; of {} rows no writer touched, some not read once: {unread:#?}",
        untouched.len()
    );
    let snapshot_source = reader
        .records
        .iter()
        .find(|r| r.op() == Some("r"))
        .and_then(|r| r.value.clone())
        .unwrap();
    assert_eq!(snapshot_source["source"]["snapshot"], "incremental");
    println!(
        "{statements} concurrent statements (writers paused {} ms for the connector), \
         snapshot in {snapshot_secs:.1} s over {chunks} chunks ({raced} whose snapshot missed \
         a transaction streamed before the window, {unseen} dropping keys for it), \
         read back in {reading_secs:.1} s: {} events, {reads} snapshot rows, {} keys",
        writes.paused_ms.load(Ordering::Relaxed),
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
    // Chunks of 10 rows: 800 chunks, one watermark round trip each, so the
    // snapshot runs for several seconds after the topic appears. With chunks
    // of 50 it finished in 3 s, before a reader on a loaded CI machine had
    // even been assigned the topic (the stop then came too late to test).
    let mut conn = spawn(&env, "10");
    streaming(&env).await;
    signal_snapshot(&env).await;
    let mut reader = TopicReader::new(&env.kafka, &env.topic("t")).await;
    reader
        .until(120, "part of the snapshot", |r| r.len() >= 500)
        .await;
    conn.stop();
    assert!(
        !conn.log().contains("incremental snapshot done"),
        "finished before the stop"
    );
    let mut conn = spawn(&env, "10");
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
