//! End-to-end tests on the real PostgreSQL, Kafka and schema registry: the
//! connector binary runs as a child process against a private database.

mod common;

use std::collections::{HashMap, HashSet};

use common::*;
use serde_json::{json, Value as Json};

async fn table_state(env: &TestEnv, sql: &str) -> HashMap<String, Json> {
    let rows = env.client.query(sql, &[]).await.unwrap();
    rows.iter()
        .map(|r| {
            let id: i64 = r.get(0);
            let row: Json = serde_json::from_str(r.get::<_, &str>(1)).unwrap();
            (json!({"id": id}).to_string(), row)
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn snapshot_under_concurrent_writes_then_streaming_reproduces_the_table() {
    let env = TestEnv::new().await;
    env.client
        .batch_execute(
            "CREATE TABLE items (id bigint PRIMARY KEY, v int NOT NULL, s text);
             INSERT INTO items SELECT g, g, 'row ' || g FROM generate_series(1, 20000) g;",
        )
        .await
        .unwrap();

    // Writes race with the snapshot: each transaction inserts, updates and deletes.
    let url = env.url.clone();
    let writer = tokio::spawn(async move {
        let c = connect(&url).await;
        for i in 0..300i64 {
            c.batch_execute(&format!(
                "BEGIN;
                 INSERT INTO items VALUES ({}, 0, 'new');
                 UPDATE items SET v = v + 1, s = 'upd' WHERE id = {};
                 DELETE FROM items WHERE id = {};
                 COMMIT;",
                100_000 + i,
                1 + i * 7,
                20_000 - i
            ))
            .await
            .unwrap();
        }
    });
    let mut conn = env.spawn(&["items"], &[]);
    writer.await.unwrap();

    let expected = table_state(
        &env,
        "SELECT id, json_build_object('id', id, 'v', v, 's', s)::text FROM items",
    )
    .await;
    let mut reader = TopicReader::new(&env.kafka, &env.topic("items")).await;
    reader
        .until(120, "the replayed topic to equal the table", |r| {
            materialize(r) == expected
        })
        .await;

    // The writer may well finish before the slot exists: stream more once
    // the snapshot is in, so that the hand-over is tested in both directions.
    for i in 0..50i64 {
        env.client
            .batch_execute(&format!(
                "BEGIN;
                 INSERT INTO items VALUES ({}, 1, 'streamed');
                 UPDATE items SET v = v + 1 WHERE id = {};
                 DELETE FROM items WHERE id = {};
                 COMMIT;",
                200_000 + i,
                2 + i * 7,
                10_000 - i
            ))
            .await
            .unwrap();
    }
    let expected = table_state(
        &env,
        "SELECT id, json_build_object('id', id, 'v', v, 's', s)::text FROM items",
    )
    .await;
    reader
        .until(120, "the streamed changes after the snapshot", |r| {
            materialize(r) == expected
        })
        .await;

    let recs = &reader.records;
    let streamed = recs
        .iter()
        .filter(|r| matches!(r.op(), Some("c" | "u" | "d")))
        .count();
    assert!(
        streamed >= 150,
        "only {streamed} changes were streamed; the 150 after the snapshot must be"
    );
    let snapshot: Vec<_> = recs.iter().filter(|r| r.op() == Some("r")).collect();
    let keys: HashSet<_> = snapshot
        .iter()
        .map(|r| r.key.as_ref().unwrap().to_string())
        .collect();
    assert_eq!(keys.len(), snapshot.len(), "a row snapshotted twice");
    assert_eq!(
        snapshot.last().unwrap().value.as_ref().unwrap()["source"]["snapshot"],
        "last"
    );
    assert_eq!(
        snapshot[0].value.as_ref().unwrap()["source"]["snapshot"],
        "first"
    );
    let markers = |marker: &str| {
        snapshot
            .iter()
            .filter(|r| r.value.as_ref().unwrap()["source"]["snapshot"] == marker)
            .count()
    };
    assert_eq!(
        (markers("first"), markers("last")),
        (1, 1),
        "one first and one last snapshot row, the rest 'true'"
    );
    let snap_lsn = snapshot[0].lsn().unwrap();
    let mut seen = HashSet::new();
    for r in recs
        .iter()
        .filter(|r| matches!(r.op(), Some("c" | "u" | "d")))
    {
        assert!(
            r.lsn().unwrap() >= snap_lsn,
            "streamed change from before the snapshot"
        );
        let id = (
            r.key.as_ref().unwrap().to_string(),
            r.lsn(),
            r.op().map(str::to_string),
        );
        assert!(
            seen.insert(id.clone()),
            "duplicate change {id:?} in a clean run"
        );
    }
    conn.stop();
    env.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn envelope_delete_tombstone_and_update_before_after() {
    let env = TestEnv::new().await;
    env.client
        .batch_execute(
            "CREATE TABLE acct (id bigint PRIMARY KEY, name text, balance int);
             ALTER TABLE acct REPLICA IDENTITY FULL;
             INSERT INTO acct VALUES (1, 'a', 10);",
        )
        .await
        .unwrap();
    let mut conn = env.spawn(&["acct"], &[]);
    let mut reader = TopicReader::new(&env.kafka, &env.topic("acct")).await;
    reader.until(60, "snapshot row", |r| !r.is_empty()).await;
    env.client
        .batch_execute(
            "UPDATE acct SET name = 'b', balance = 20 WHERE id = 1;
             DELETE FROM acct WHERE id = 1;
             INSERT INTO acct VALUES (2, 'c', 30);",
        )
        .await
        .unwrap();
    reader
        .until(60, "u, d, tombstone, c", |r| r.len() >= 5)
        .await;
    let r = &reader.records;
    let v = |i: usize| r[i].value.clone().unwrap();

    assert_eq!(v(0)["op"], "r");
    assert_eq!(v(0)["after"], json!({"id": 1, "name": "a", "balance": 10}));
    assert_eq!(v(0)["source"]["snapshot"], "last");

    assert_eq!(v(1)["op"], "u");
    assert_eq!(v(1)["before"], json!({"id": 1, "name": "a", "balance": 10}));
    assert_eq!(v(1)["after"], json!({"id": 1, "name": "b", "balance": 20}));
    let src = &v(1)["source"];
    assert_eq!(src["connector"], "postgresql");
    assert_eq!(src["name"], env.prefix.as_str());
    assert_eq!(src["db"], env.db.as_str());
    assert_eq!(src["schema"], "public");
    assert_eq!(src["table"], "acct");
    assert_eq!(src["snapshot"], "false");
    assert!(src["txId"].as_i64().unwrap() > 0);
    assert!(src["lsn"].as_i64().unwrap() > 0);
    assert!(src["ts_ms"].as_i64().unwrap() > 0);
    assert_eq!(
        src["ts_us"].as_i64().unwrap() / 1000,
        src["ts_ms"].as_i64().unwrap()
    );
    assert!(v(1)["ts_ns"].as_i64().unwrap() > 0);
    assert!(v(1)["ts_ms"].as_i64().unwrap() > 0);

    assert_eq!(v(2)["op"], "d");
    assert_eq!(v(2)["before"]["id"], 1);
    assert_eq!(v(2)["after"], Json::Null);
    assert_eq!(r[2].key, Some(json!({"id": 1})));
    assert!(r[3].value.is_none(), "tombstone after delete");
    assert_eq!(r[3].key, Some(json!({"id": 1})));

    assert_eq!(v(4)["op"], "c");
    assert_eq!(v(4)["before"], Json::Null);
    assert_eq!(v(4)["after"], json!({"id": 2, "name": "c", "balance": 30}));
    // One multi-statement simple query is one transaction: one txId.
    assert_eq!(v(1)["source"]["txId"], v(4)["source"]["txId"]);
    assert_eq!(v(2)["source"]["txId"], v(4)["source"]["txId"]);

    conn.stop();
    env.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn toast_numeric_jsonb_arrays_and_added_column() {
    let env = TestEnv::new().await;
    env.client
        .batch_execute(
            "CREATE TABLE doc (id int PRIMARY KEY, big text, n numeric, n2 numeric(12,2),
                               j jsonb, tags text[], ts timestamptz, d date, u uuid, b bytea, f float8);",
        )
        .await
        .unwrap();
    // The lossless text form of numeric (the default is Debezium's `precise`).
    let mut conn = env.spawn(&["doc"], &[("CONNECTOR_DECIMAL_HANDLING", "string")]);
    let topic = env.topic("doc");
    // Wait for the stream to run (the offsets record exists once the empty snapshot is done).
    wait_for(60, "connector streaming", || async {
        // A walsender that runs START_REPLICATION: `active` alone is also true while the
        // slot is still being created, and writes before its consistent point are not streamed.
        env.streaming_walsender().await.is_some()
    })
    .await;
    let huge = format!("{}.{}", "9".repeat(120), "1".repeat(30));
    env.client
        .batch_execute(&format!(
            "INSERT INTO doc VALUES (1,
               (SELECT string_agg(md5(g::text), '') FROM generate_series(1, 4000) g),
               'NaN', 12345678.90, '{{\"a\": [1, 2, {{\"b\": null}}], \"s\": \"x\"}}',
               ARRAY['x', NULL, 'y z'], '2024-01-02 03:04:05.123456+02', '2024-02-29',
               'a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11', '\\x00ff', 1.5);
             INSERT INTO doc (id, n, n2) VALUES (2, {huge}, -0.01);
             UPDATE doc SET n2 = 1 WHERE id = 1;
             ALTER TABLE doc ADD COLUMN note text;
             INSERT INTO doc (id, note) VALUES (3, 'added');"
        ))
        .await
        .unwrap();
    let mut reader = TopicReader::new(&env.kafka, &topic).await;
    reader.until(60, "four changes", |r| r.len() >= 4).await;
    let v = |i: usize| reader.records[i].value.clone().unwrap();

    let a = &v(0)["after"];
    assert_eq!(a["big"].as_str().unwrap().len(), 4000 * 32);
    assert_eq!(a["n"], "NaN");
    assert_eq!(a["n2"], "12345678.90");
    let j: Json = serde_json::from_str(a["j"].as_str().unwrap()).unwrap();
    assert_eq!(j, json!({"a": [1, 2, {"b": null}], "s": "x"}));
    assert_eq!(a["tags"], json!(["x", null, "y z"]));
    assert_eq!(a["ts"], "2024-01-02T01:04:05.123456Z");
    assert_eq!(a["d"], 19782);
    assert_eq!(a["u"], "a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11");
    assert_eq!(a["f"], 1.5);

    assert_eq!(v(1)["after"]["n"], huge.as_str());
    assert_eq!(v(1)["after"]["n2"], "-0.01");

    // The update did not touch the TOASTed column: Debezium's placeholder.
    assert_eq!(v(2)["op"], "u");
    assert_eq!(v(2)["after"]["big"], "__debezium_unavailable_value");
    assert_eq!(v(2)["after"]["n2"], "1.00");

    assert_eq!(v(3)["after"]["note"], "added");
    let versions: Json = reqwest::get(format!("{}/subjects/{topic}-value/versions", registry()))
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(versions.as_array().map(Vec::len), Some(2), "{versions}");
    let latest: Json = reqwest::get(format!(
        "{}/subjects/{topic}-value/versions/latest",
        registry()
    ))
    .await
    .unwrap()
    .json()
    .await
    .unwrap();
    let schema: Json = serde_json::from_str(latest["schema"].as_str().unwrap()).unwrap();
    let fields = &schema["fields"][0]["type"][1]["fields"];
    let note = fields
        .as_array()
        .unwrap()
        .iter()
        .find(|f| f["name"] == "note")
        .unwrap();
    assert_eq!(
        note["default"],
        Json::Null,
        "added column must be optional for backward compatibility"
    );

    conn.stop();
    env.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn heartbeat_advances_the_slot_while_only_uncaptured_tables_change() {
    let env = TestEnv::new().await;
    env.client
        .batch_execute(
            "CREATE TABLE captured (id int PRIMARY KEY); CREATE TABLE other (id int, pad text);",
        )
        .await
        .unwrap();
    let mut conn = env.spawn(&["captured"], &[]);
    wait_for(60, "connector streaming", || async {
        // A walsender that runs START_REPLICATION: `active` alone is also true while the
        // slot is still being created, and writes before its consistent point are not streamed.
        env.streaming_walsender().await.is_some()
    })
    .await;
    env.client
        .batch_execute(
            "INSERT INTO other SELECT g, repeat('x', 200) FROM generate_series(1, 5000) g",
        )
        .await
        .unwrap();
    let target: String = env
        .client
        .query_one("SELECT pg_current_wal_lsn()::text", &[])
        .await
        .unwrap()
        .get(0);
    wait_for(30, "confirmed_flush_lsn to pass the uncaptured writes", || async {
        env.client
            .query_one(
                "SELECT confirmed_flush_lsn >= $2::text::pg_lsn FROM pg_replication_slots WHERE slot_name = $1",
                &[&env.slot, &target],
            )
            .await
            .unwrap()
            // NULL until the connector confirmed anything at all.
            .get::<_, Option<bool>>(0)
            == Some(true)
    })
    .await;

    let (ok, out) = run_to_end(&env.connector_env(&["captured"]), &["status"]);
    assert!(ok, "{out}");
    assert!(out.contains("lag_bytes="), "{out}");
    assert!(out.contains("snapshot_completed=true"), "{out}");
    conn.stop();
    env.cleanup().await;
}

fn one_line_error(out: &str) -> &str {
    let lines: Vec<&str> = out.lines().filter(|l| !l.trim().is_empty()).collect();
    assert_eq!(lines.len(), 1, "expected a single line, got: {out}");
    assert!(lines[0].starts_with("connector: "), "{out}");
    lines[0]
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_input_gives_one_line_errors() {
    let env = TestEnv::new().await;
    env.client
        .batch_execute("CREATE TABLE t (id int PRIMARY KEY)")
        .await
        .unwrap();

    let (ok, out) = run_to_end(&env.connector_env(&["nope"]), &[]);
    assert!(!ok);
    assert!(
        one_line_error(&out).contains("table public.nope does not exist"),
        "{out}"
    );

    let mut env_vars = env.connector_env(&["t"]);
    env_vars.push(("KAFKA_BOOTSTRAP_SERVERS".into(), "127.0.0.1:1".into()));
    env_vars.push(("CONNECTOR_KAFKA_CONNECT_TIMEOUT_MS".into(), "2000".into()));
    let (ok, out) = run_to_end(&env_vars, &[]);
    assert!(!ok);
    assert!(
        one_line_error(&out).contains("Kafka at 127.0.0.1:1 is unreachable"),
        "{out}"
    );

    let role = unique("norepl");
    env.client
        .batch_execute(&format!(
            "CREATE ROLE {role} LOGIN PASSWORD 'pw' NOSUPERUSER NOREPLICATION"
        ))
        .await
        .unwrap();
    let mut env_vars = env.connector_env(&["t"]);
    let url = env.url.replacen("://", &format!("://{role}:pw@"), 1);
    // Keep only host/db after the original credentials.
    let url = match url.split_once('@') {
        Some((userpart, rest)) => match rest.split_once('@') {
            Some((_, hostpart)) => format!("{userpart}@{hostpart}"),
            None => format!("{userpart}@{rest}"),
        },
        None => url,
    };
    env_vars.push(("POSTGRES_URL".into(), url));
    let (ok, out) = run_to_end(&env_vars, &[]);
    assert!(!ok);
    assert!(
        one_line_error(&out).contains("lacks the REPLICATION privilege"),
        "{out}"
    );

    // The role can only go once the database that granted it CONNECT is gone.
    env.cleanup().await;
    let admin = connect(&postgres_admin_url()).await;
    admin
        .batch_execute(&format!("DROP ROLE IF EXISTS {role}"))
        .await
        .unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn replication_connection_loss_is_survived_without_loss() {
    let env = TestEnv::new().await;
    env.client
        .batch_execute("CREATE TABLE r (id bigint PRIMARY KEY, v int)")
        .await
        .unwrap();
    let mut conn = env.spawn(&["r"], &[]);
    let active = || async {
        // A walsender that runs START_REPLICATION: `active` alone is also true while the
        // slot is still being created, and writes before its consistent point are not streamed.
        env.streaming_walsender().await.is_some()
    };
    wait_for(60, "connector streaming", active).await;
    for i in 0..50 {
        env.client
            .batch_execute(&format!("INSERT INTO r VALUES ({i}, {i})"))
            .await
            .unwrap();
    }
    // Only cut the connection once streaming runs: during the snapshot the
    // walsender holds the exported snapshot, and losing it fails the snapshot.
    let mut reader = TopicReader::new(&env.kafka, &env.topic("r")).await;
    reader.until(60, "the first rows", |r| r.len() >= 50).await;
    // Cut the walsender, as a server restart or network failure would.
    env.client
        .execute(
            "SELECT pg_terminate_backend(active_pid) FROM pg_replication_slots WHERE slot_name = $1",
            &[&env.slot],
        )
        .await
        .unwrap();
    for i in 50..100 {
        env.client
            .batch_execute(&format!("INSERT INTO r VALUES ({i}, {i})"))
            .await
            .unwrap();
    }
    let expected: HashMap<String, Json> = (0..100i64)
        .map(|i| (json!({"id": i}).to_string(), json!({"id": i, "v": i})))
        .collect();
    reader
        .until(60, "all rows after the reconnect", |r| {
            materialize(r) == expected
        })
        .await;
    assert!(
        conn.child.try_wait().unwrap().is_none(),
        "connector exited instead of reconnecting"
    );
    conn.stop();
    env.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn snapshot_modes_initial_only_and_never() {
    let env = TestEnv::new().await;
    env.client
        .batch_execute(
            "CREATE TABLE m (id int PRIMARY KEY); INSERT INTO m SELECT generate_series(1, 3);",
        )
        .await
        .unwrap();

    // initial_only: publish the snapshot and exit, leaving no slot behind.
    let mut vars = env.connector_env(&["m"]);
    vars.push(("CONNECTOR_SNAPSHOT_MODE".into(), "initial_only".into()));
    let (ok, out) = run_to_end(&vars, &[]);
    assert!(ok, "{out}");
    let mut reader = TopicReader::new(&env.kafka, &env.topic("m")).await;
    reader
        .until(30, "three snapshot rows", |r| r.len() >= 3)
        .await;
    assert!(reader.records.iter().all(|r| r.op() == Some("r")));
    let slots = env
        .client
        .query(
            "SELECT 1 FROM pg_replication_slots WHERE slot_name = $1",
            &[&env.slot],
        )
        .await
        .unwrap();
    assert!(slots.is_empty(), "initial_only must not keep a slot");

    // never: a fresh connector name streams only new changes.
    let mut vars = env.connector_env(&["m"]);
    let prefix2 = format!("{}n", env.prefix);
    for (k, v) in vars.iter_mut() {
        match k.as_str() {
            "CONNECTOR_NAME" => *v = prefix2.clone(),
            "CONNECTOR_OFFSETS_TOPIC" => *v = format!("{prefix2}.offsets"),
            _ => {}
        }
    }
    vars.push(("CONNECTOR_SNAPSHOT_MODE".into(), "never".into()));
    let mut conn = Connector::spawn(&vars);
    wait_for(60, "connector streaming", || async {
        // A walsender that runs START_REPLICATION: `active` alone is also true while the
        // slot is still being created, and writes before its consistent point are not streamed.
        env.streaming_walsender().await.is_some()
    })
    .await;
    env.client
        .batch_execute("INSERT INTO m VALUES (4)")
        .await
        .unwrap();
    let mut reader = TopicReader::new(&env.kafka, &format!("{prefix2}.public.m")).await;
    reader
        .until(30, "the streamed insert", |r| !r.is_empty())
        .await;
    assert_eq!(reader.records.len(), 1);
    assert_eq!(reader.records[0].op(), Some("c"));
    assert_eq!(reader.records[0].key, Some(json!({"id": 4})));
    conn.stop();
    env.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn transaction_metadata_topic_and_blocks() {
    let env = TestEnv::new().await;
    env.client
        .batch_execute(
            "CREATE TABLE ta (id int PRIMARY KEY, v int); CREATE TABLE tb (id int PRIMARY KEY)",
        )
        .await
        .unwrap();
    let mut conn = env.spawn(
        &["ta", "tb"],
        &[("CONNECTOR_PROVIDE_TRANSACTION_METADATA", "true")],
    );
    // Streaming, not just creating the slot (writes before its consistent
    // point would be snapshot rows, outside any transaction).
    wait_for(60, "connector streaming", || async {
        env.streaming_walsender().await.is_some()
    })
    .await;
    env.client
        .batch_execute(
            "BEGIN; INSERT INTO ta VALUES (1, 1), (2, 2); INSERT INTO tb VALUES (1); COMMIT;
             UPDATE ta SET v = 3 WHERE id = 1;",
        )
        .await
        .unwrap();
    let mut tx = TopicReader::new(&env.kafka, &format!("{}.transaction", env.prefix)).await;
    tx.until(60, "BEGIN, END, BEGIN, END", |r| r.len() >= 4)
        .await;
    let v = |i: usize| tx.records[i].value.clone().unwrap();
    let (id1, id2) = (v(0)["id"].clone(), v(2)["id"].clone());
    assert_ne!(id1, id2);
    assert_eq!(tx.records[0].key, Some(json!({"id": id1})));
    assert_eq!(
        (v(0)["status"].clone(), v(0)["event_count"].clone()),
        (json!("BEGIN"), Json::Null)
    );
    assert_eq!(v(1)["status"], "END");
    assert_eq!(v(1)["id"], id1);
    assert_eq!(v(1)["event_count"], 3);
    assert_eq!(
        v(1)["data_collections"],
        json!([{"data_collection": "public.ta", "event_count": 2},
               {"data_collection": "public.tb", "event_count": 1}])
    );
    assert_eq!(v(3)["event_count"], 1);

    let mut a = TopicReader::new(&env.kafka, &env.topic("ta")).await;
    a.until(60, "three changes of ta", |r| r.len() >= 3).await;
    let mut b = TopicReader::new(&env.kafka, &env.topic("tb")).await;
    b.until(60, "one change of tb", |r| !r.is_empty()).await;
    let block = |r: &Record| r.value.as_ref().unwrap()["transaction"].clone();
    assert_eq!(
        a.records.iter().map(block).collect::<Vec<_>>(),
        vec![
            json!({"id": id1, "total_order": 1, "data_collection_order": 1}),
            json!({"id": id1, "total_order": 2, "data_collection_order": 2}),
            json!({"id": id2, "total_order": 1, "data_collection_order": 1}),
        ]
    );
    assert_eq!(
        block(&b.records[0]),
        json!({"id": id1, "total_order": 3, "data_collection_order": 1})
    );
    conn.stop();
    env.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn truncate_becomes_op_t_when_enabled() {
    let env = TestEnv::new().await;
    env.client
        .batch_execute("CREATE TABLE tr (id int PRIMARY KEY)")
        .await
        .unwrap();
    let mut conn = env.spawn(&["tr"], &[("CONNECTOR_TRUNCATE_EVENTS", "true")]);
    wait_for(60, "connector streaming", || async {
        env.streaming_walsender().await.is_some()
    })
    .await;
    env.client
        .batch_execute("INSERT INTO tr VALUES (1); TRUNCATE tr; INSERT INTO tr VALUES (2);")
        .await
        .unwrap();
    let mut reader = TopicReader::new(&env.kafka, &env.topic("tr")).await;
    reader.until(60, "c, t, c", |r| r.len() >= 3).await;
    let ops: Vec<_> = reader.records.iter().map(|r| r.op()).collect();
    assert_eq!(ops, vec![Some("c"), Some("t"), Some("c")]);
    let t = &reader.records[1];
    assert_eq!(t.key, None);
    let v = t.value.as_ref().unwrap();
    assert_eq!(
        (v["before"].clone(), v["after"].clone()),
        (Json::Null, Json::Null)
    );
    assert_eq!(v["source"]["table"], "tr");
    conn.stop();
    env.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn logical_decoding_messages_become_op_m_when_enabled() {
    let env = TestEnv::new().await;
    env.client
        .batch_execute("CREATE TABLE lm (id int PRIMARY KEY)")
        .await
        .unwrap();
    let mut conn = env.spawn(&["lm"], &[("CONNECTOR_LOGICAL_MESSAGES", "true")]);
    wait_for(60, "connector streaming", || async {
        env.streaming_walsender().await.is_some()
    })
    .await;
    env.client
        .batch_execute(
            "BEGIN; INSERT INTO lm VALUES (1);
                    SELECT pg_logical_emit_message(true, 'audit', 'hello'); COMMIT;
             SELECT pg_logical_emit_message(false, 'ping', 'x');",
        )
        .await
        .unwrap();
    let mut messages = TopicReader::new(&env.kafka, &format!("{}.message", env.prefix)).await;
    messages.until(60, "two messages", |r| r.len() >= 2).await;
    let mut lm = TopicReader::new(&env.kafka, &env.topic("lm")).await;
    lm.until(60, "the insert", |r| !r.is_empty()).await;
    let v = |i: usize| messages.records[i].value.clone().unwrap();
    assert_eq!(messages.records[0].key, Some(json!({"prefix": "audit"})));
    assert_eq!(v(0)["op"], "m");
    assert_eq!(v(0)["message"]["prefix"], "audit");
    assert_eq!(
        v(0)["source"]["txId"],
        lm.records[0].value.as_ref().unwrap()["source"]["txId"]
    );
    assert_eq!(v(1)["message"]["prefix"], "ping");
    assert_eq!(v(1)["source"]["txId"], Json::Null);
    // Heartbeats (connector_heartbeat) are not published.
    messages.poll().await;
    assert_eq!(messages.records.len(), 2);
    conn.stop();
    env.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn heartbeat_topic_when_enabled() {
    let env = TestEnv::new().await;
    env.client
        .batch_execute("CREATE TABLE hb (id int PRIMARY KEY)")
        .await
        .unwrap();
    let mut conn = env.spawn(&["hb"], &[("CONNECTOR_HEARTBEAT_TOPIC", "true")]);
    let topic = format!("__debezium-heartbeat.{}", env.prefix);
    let mut reader = TopicReader::new(&env.kafka, &topic).await;
    reader.until(60, "two heartbeats", |r| r.len() >= 2).await;
    let r = &reader.records[0];
    assert_eq!(r.key, Some(json!({"serverName": env.prefix})));
    let (a, b) = (
        r.value.as_ref().unwrap()["ts_ms"].as_i64().unwrap(),
        reader.records[1].value.as_ref().unwrap()["ts_ms"]
            .as_i64()
            .unwrap(),
    );
    assert!(a > 0 && b >= a, "{a} {b}");
    conn.stop();
    // Not under the test's prefix: removed here.
    delete_topics(&env.kafka, &topic).await;
    delete_subjects(&topic).await;
    env.cleanup().await;
}

/// The first record of `topic`: JSON key, JSON value, headers.
async fn read_one(kafka: &str, topic: String) -> (Json, Json, Vec<(String, String)>) {
    use rdkafka::consumer::{BaseConsumer, Consumer};
    use rdkafka::message::Headers;
    use rdkafka::Message;
    let _ = TopicReader::new(kafka, &topic).await; // waits for the topic
    let consumer: BaseConsumer = rdkafka::ClientConfig::new()
        .set("bootstrap.servers", kafka)
        .set("group.id", unique("outbox"))
        .set("auto.offset.reset", "earliest")
        .create()
        .unwrap();
    consumer.subscribe(&[&topic]).unwrap();
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(60);
    loop {
        assert!(std::time::Instant::now() < deadline, "nothing on {topic}");
        if let Some(Ok(m)) = consumer.poll(std::time::Duration::from_millis(200)) {
            let header = m
                .headers()
                .map(|h| {
                    h.iter()
                        .map(|h| {
                            (
                                h.key.to_string(),
                                String::from_utf8_lossy(h.value.unwrap()).to_string(),
                            )
                        })
                        .collect()
                })
                .unwrap_or_default();
            let key: Json = serde_json::from_slice(m.key().unwrap()).unwrap();
            let value: Json = serde_json::from_slice(m.payload().unwrap()).unwrap();
            return (key, value, header);
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn outbox_rows_are_routed_by_aggregate_type_keyed_and_headed() {
    use rdkafka::consumer::{BaseConsumer, Consumer};
    let env = TestEnv::new().await;
    env.client
        .batch_execute(
            "CREATE TABLE outbox (id uuid PRIMARY KEY, aggregatetype text NOT NULL,
                                  aggregateid text NOT NULL, type text, payload jsonb,
                                  traceparent text, tracestate text);
             INSERT INTO outbox VALUES ('00000000-0000-0000-0000-00000000000a', 'order', 'o-0',
                                        'Old', '{}');",
        )
        .await
        .unwrap();
    let prefix = format!("{}.outbox.", env.prefix);
    let mut conn = env.spawn(
        &["outbox"],
        &[
            ("CONNECTOR_FORMAT", "json"),
            ("CONNECTOR_OUTBOX_TABLE", "public.outbox"),
            ("CONNECTOR_OUTBOX_TOPIC_PREFIX", &prefix),
        ],
    );
    wait_for(60, "connector streaming", || async {
        env.streaming_walsender().await.is_some()
    })
    .await;
    env.client
        .batch_execute(
            "INSERT INTO outbox VALUES
               ('00000000-0000-0000-0000-000000000001', 'order', 'o-1', 'OrderCreated', '{\"total\": 5}',
                '00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01', 'congo=t61rcWkgMzE'),
               ('00000000-0000-0000-0000-000000000002', 'customer', 'c-7', 'CustomerMoved', '{\"city\": \"Gouda\"}', NULL, NULL);
             DELETE FROM outbox;",
        )
        .await
        .unwrap();
    let (key, value, header) = read_one(&env.kafka, format!("{prefix}order")).await;
    assert_eq!(
        key,
        json!("o-1"),
        "the snapshot row of the outbox is not an event"
    );
    assert_eq!(value, json!({"total": 5}));
    let pair = |k: &str, v: &str| (k.to_string(), v.to_string());
    assert_eq!(
        header,
        vec![
            pair("id", "00000000-0000-0000-0000-000000000001"),
            // The row's trace context, as the W3C headers the relay also writes.
            pair(
                "traceparent",
                "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"
            ),
            pair("tracestate", "congo=t61rcWkgMzE"),
        ]
    );
    let (key, value, headers) = read_one(&env.kafka, format!("{prefix}customer")).await;
    assert_eq!((key, value), (json!("c-7"), json!({"city": "Gouda"})));
    assert_eq!(
        headers,
        vec![pair("id", "00000000-0000-0000-0000-000000000002")],
        "no trace headers for a row without trace context"
    );
    // The outbox table itself has no topic.
    let topic = env.topic("outbox");
    let admin: BaseConsumer = rdkafka::ClientConfig::new()
        .set("bootstrap.servers", &env.kafka)
        .create()
        .unwrap();
    let md = admin
        .fetch_metadata(None, std::time::Duration::from_secs(5))
        .unwrap();
    assert!(md.topics().iter().all(|t| t.name() != topic));
    conn.stop();
    env.cleanup().await;
}

/// The sum of the samples of `name` whose labels include `labels`.
fn metric(scrape: &prometheus_parse::Scrape, name: &str, labels: &[(&str, &str)]) -> Option<f64> {
    use prometheus_parse::Value;
    let mut found = None;
    for sample in scrape.samples.iter().filter(|s| s.metric == name) {
        if labels.iter().all(|(k, v)| sample.labels.get(k) == Some(*v)) {
            if let Value::Counter(v) | Value::Gauge(v) | Value::Untyped(v) = sample.value {
                *found.get_or_insert(0.0) += v;
            }
        }
    }
    found
}

async fn scrape(addr: &str) -> Option<prometheus_parse::Scrape> {
    let text = reqwest::get(format!("http://{addr}/metrics"))
        .await
        .ok()?
        .text()
        .await
        .ok()?;
    prometheus_parse::Scrape::parse(text.lines().map(|l| Ok(l.to_owned()))).ok()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_count_snapshot_rows_changes_and_slot_lag() {
    let env = TestEnv::new().await;
    env.client
        .batch_execute(
            "CREATE TABLE m (id int PRIMARY KEY, v int);
             INSERT INTO m SELECT g, 0 FROM generate_series(1, 40) g;",
        )
        .await
        .unwrap();
    let addr = format!("127.0.0.1:{}", testkit::free_port());
    let mut conn = env.spawn(&["m"], &[("CONNECTOR_METRICS_LISTEN_ADDR", &addr)]);
    wait_for(60, "connector streaming", || async {
        env.streaming_walsender().await.is_some()
    })
    .await;
    let name = env.prefix.as_str();
    let of = |s: &prometheus_parse::Scrape, m: &str| metric(s, m, &[("connector", name)]);
    let before = scrape(&addr).await.expect("GET /metrics answers");
    assert_eq!(
        of(&before, "connector_snapshot_rows_total"),
        Some(40.0),
        "every snapshot row counted"
    );
    let changes_before = of(&before, "connector_changes_total").unwrap_or(0.0);
    env.client
        .batch_execute(
            "INSERT INTO m SELECT g, 0 FROM generate_series(41, 70) g;
             UPDATE m SET v = 1 WHERE id <= 10;",
        )
        .await
        .unwrap();
    let slot = env.slot.clone();
    testkit::eventually(
        "40 streamed changes counted",
        std::time::Duration::from_secs(30),
        || async {
            scrape(&addr).await.is_some_and(|s| {
                of(&s, "connector_changes_total") == Some(changes_before + 40.0)
                    && of(&s, "connector_snapshot_rows_total") == Some(40.0)
                    && metric(&s, "connector_slot_lag_bytes", &[("slot", &slot)])
                        .is_some_and(|lag| lag >= 0.0)
            })
        },
    )
    .await;
    let after = scrape(&addr).await.unwrap();
    assert_eq!(
        metric(
            &after,
            "connector_publish_failures_total",
            &[("connector", name)]
        )
        .unwrap_or(0.0),
        0.0
    );
    conn.stop();
    env.cleanup().await;
}
