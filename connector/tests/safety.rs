//! What must never lose a change or crash the connector: a slot dropped while
//! it is disconnected, session settings chosen by `ALTER DATABASE`, values
//! without a mapping, REPLICA IDENTITY USING INDEX, a schema the registry
//! refuses, a registry restarted mid-stream, a record the broker refuses.

mod common;

use std::process::Command;
use std::time::Duration;

use common::*;
use serde_json::{json, Value as Json};
use testkit::eventually;

/// The last non-empty line of the connector's log, where main prints a fatal error.
fn fatal_line(log: &str) -> String {
    log.lines()
        .rev()
        .find(|l| !l.trim().is_empty())
        .unwrap_or_default()
        .to_string()
}

async fn streaming(env: &TestEnv) {
    eventually("the connector streams", Duration::from_secs(60), || async {
        env.streaming_walsender().await.is_some()
    })
    .await;
}

async fn admin() -> tokio_postgres::Client {
    connect(&postgres_admin_url()).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_slot_dropped_while_disconnected_stops_the_connector_with_slot_lost() {
    let env = TestEnv::new().await;
    env.client
        .batch_execute("CREATE TABLE s (id bigint PRIMARY KEY, v int)")
        .await
        .unwrap();
    let mut conn = env.spawn_logged(&["s"], &[("CONNECTOR_FORMAT", "json")]);
    streaming(&env).await;
    for i in 0..10 {
        env.client
            .batch_execute(&format!("INSERT INTO s VALUES ({i}, {i})"))
            .await
            .unwrap();
    }
    let mut reader = TopicReader::new(&env.kafka, &env.topic("s")).await;
    reader.until(60, "the first rows", |r| r.len() >= 10).await;

    // A disconnect window the test controls: no new connection to the
    // database gets in (the connector retries), its walsender is gone, and
    // meanwhile the slot is dropped, as a failover to a server without it or
    // an operator would.
    let admin = admin().await;
    admin
        .batch_execute(&format!(
            "ALTER DATABASE {} ALLOW_CONNECTIONS false",
            env.db
        ))
        .await
        .unwrap();
    env.client
        .execute(
            "SELECT pg_terminate_backend(active_pid, 10000) FROM pg_replication_slots WHERE slot_name = $1",
            &[&env.slot],
        )
        .await
        .unwrap();
    eventually("the slot is dropped", Duration::from_secs(30), || async {
        env.client
            .execute("SELECT pg_drop_replication_slot($1)", &[&env.slot])
            .await
            .is_ok()
    })
    .await;
    for i in 10..20 {
        env.client
            .batch_execute(&format!("INSERT INTO s VALUES ({i}, {i})"))
            .await
            .unwrap();
    }
    admin
        .batch_execute(&format!("ALTER DATABASE {} ALLOW_CONNECTIONS true", env.db))
        .await
        .unwrap();
    // Had the connector made a new slot, these would be streamed from it.
    for i in 20..30 {
        env.client
            .batch_execute(&format!("INSERT INTO s VALUES ({i}, {i})"))
            .await
            .unwrap();
    }

    eventually(
        "the connector exits (or streams from a new slot)",
        Duration::from_secs(60),
        || {
            let exited = conn.exited().is_some();
            async move { exited }
        },
    )
    .await;
    reader.poll().await;
    let status = conn.exited().unwrap();
    let line = fatal_line(&conn.log());
    assert!(!status.success(), "exit status {status}: {line}");
    assert!(
        line.contains(&format!("replication slot \"{}\" is missing", env.slot))
            && line.contains("connector reset"),
        "{line}"
    );
    assert_eq!(
        reader.records.len(),
        10,
        "nothing may be streamed after the slot was lost"
    );
    assert!(!env.slot_exists().await, "the connector created a new slot");
    env.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn database_session_settings_and_unmapped_values_do_not_change_events() {
    let env = TestEnv::new().await;
    // Every setting that changes PostgreSQL's text output of a value, set
    // where a walsender and the snapshot connection would pick it up.
    let admin = admin().await;
    for setting in [
        "datestyle = 'SQL, DMY'",
        "bytea_output = 'escape'",
        "intervalstyle = 'sql_standard'",
        "timezone = 'Asia/Kolkata'",
        "extra_float_digits = 0",
    ] {
        admin
            .batch_execute(&format!("ALTER DATABASE {} SET {setting}", env.db))
            .await
            .unwrap();
    }
    let client = connect(&env.url).await;
    client
        .batch_execute(
            "CREATE DOMAIN posint AS int CHECK (VALUE > 0);
             CREATE TABLE st (id int PRIMARY KEY, d date, ts timestamp, tz timestamptz, b bytea,
                              iv interval, f float8, grid int[][], p point, a int[],
                              tt timetz, dm posint, n inet);
             INSERT INTO st VALUES (1, '2024-02-29', '2024-01-02 03:04:05.123456',
                '2024-01-02 03:04:05.123456+02', '\\x00ff27', '1 day 02:03:04', 1.0 / 3,
                '{{1,2},{3,4}}', '(1,2)', '{{5,6},{7,8}}', '04:05:06.789+02', 7, '10.0.0.1/8');",
        )
        .await
        .unwrap();
    let mut conn = env.spawn_logged(&["st"], &[("CONNECTOR_FORMAT", "json")]);
    streaming(&env).await;
    client
        .batch_execute(
            "INSERT INTO st SELECT 2, d, ts, tz, b, iv, f, grid, p, a, tt, dm, n FROM st WHERE id = 1",
        )
        .await
        .unwrap();
    let mut reader = TopicReader::new(&env.kafka, &env.topic("st")).await;
    reader
        .until(60, "the snapshot row and the streamed row", |r| {
            r.len() >= 2
        })
        .await;
    let expected = json!({
        "d": 19782,
        "ts": 1_704_164_645_123_456i64,
        "tz": "2024-01-02T01:04:05.123456Z",
        "b": "AP8n",
        "iv": 93_784_000_000i64, // MicroDuration: 1 day 02:03:04
        "f": 0.3333333333333333,
        "grid": "{{1,2},{3,4}}",
        // Debezium's Point: x, y and the little-endian WKB.
        "p": {"x": 1.0, "y": 2.0, "wkb": "AQEAAAAAAAAAAADwPwAAAAAAAABA", "srid": null},
        "a": [5, 6, 7, 8],
        "tt": "02:05:06.789Z",
        "dm": 7,
        // No mapping: PostgreSQL's text.
        "n": "10.0.0.1/8",
    });
    for (r, (op, id)) in reader.records.iter().zip([("r", 1), ("c", 2)]) {
        let v = r.value.as_ref().unwrap();
        assert_eq!(v["op"], op);
        let mut after = v["after"].clone();
        assert_eq!(after["id"], id);
        after.as_object_mut().unwrap().remove("id");
        assert_eq!(after, expected, "{op} row");
    }
    assert!(conn.exited().is_none(), "{}", conn.log());
    conn.stop();
    drop(client);
    env.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn replica_identity_using_index_keys_by_the_primary_key_and_never_writes_a_zero() {
    let env = TestEnv::new().await;
    env.client
        .batch_execute(
            "CREATE TABLE ui (id int PRIMARY KEY, code text NOT NULL, v int);
             CREATE UNIQUE INDEX ui_code_id ON ui (code, id);
             ALTER TABLE ui REPLICA IDENTITY USING INDEX ui_code_id;
             CREATE TABLE un (id int PRIMARY KEY, code text NOT NULL, v int);
             CREATE UNIQUE INDEX un_code ON un (code);
             ALTER TABLE un REPLICA IDENTITY USING INDEX un_code;",
        )
        .await
        .unwrap();
    let mut conn = env.spawn_logged(&["ui", "un"], &[("CONNECTOR_FORMAT", "json")]);
    streaming(&env).await;
    env.client
        .batch_execute(
            "INSERT INTO ui VALUES (1, 'a', 1);
             UPDATE ui SET code = 'b' WHERE id = 1;
             DELETE FROM ui WHERE id = 1;
             INSERT INTO un VALUES (1, 'a', 1);
             UPDATE un SET code = 'b', v = 2 WHERE id = 1;",
        )
        .await
        .unwrap();
    let mut ui = TopicReader::new(&env.kafka, &env.topic("ui")).await;
    ui.until(60, "c, u, d and a tombstone", |r| r.len() >= 4)
        .await;
    let key = Some(json!({"id": 1}));
    let ops: Vec<_> = ui.records.iter().map(|r| (r.op(), r.key.clone())).collect();
    assert_eq!(
        ops,
        vec![
            (Some("c"), key.clone()),
            (Some("u"), key.clone()),
            (Some("d"), key.clone()),
            (None, key.clone())
        ]
    );
    let delete = ui.records[2].value.as_ref().unwrap();
    assert_eq!(delete["before"]["id"], 1);
    assert_eq!(delete["before"]["code"], "b");

    // The old tuple of `un` carries only `code`: the update is no key move
    // (no delete of an id-0 row), and it has no usable `before`.
    let mut un = TopicReader::new(&env.kafka, &env.topic("un")).await;
    un.until(60, "c and u", |r| r.len() >= 2).await;
    let ops: Vec<_> = un.records.iter().map(|r| (r.op(), r.key.clone())).collect();
    assert_eq!(
        ops,
        vec![(Some("c"), key.clone()), (Some("u"), key.clone())]
    );
    let update = un.records[1].value.as_ref().unwrap();
    assert_eq!(update["before"], Json::Null);
    assert_eq!(update["after"], json!({"id": 1, "code": "b", "v": 2}));

    // A delete whose old tuple has no primary key cannot be keyed: a
    // one-line error, never a record with a made-up key.
    env.client
        .batch_execute("DELETE FROM un WHERE id = 1")
        .await
        .unwrap();
    eventually("the connector stops", Duration::from_secs(60), || {
        let exited = conn.exited().is_some();
        async move { exited }
    })
    .await;
    let line = fatal_line(&conn.log());
    assert!(
        line.starts_with(
            "connector: table public.un: a delete carries no value for primary-key column \"id\""
        ),
        "{line}"
    );
    un.poll().await;
    assert_eq!(
        un.records.len(),
        2,
        "a record was written for the unkeyable delete"
    );
    env.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_schema_the_registry_refuses_stops_with_table_column_and_change() {
    let env = TestEnv::new().await;
    env.client
        .batch_execute(
            "CREATE TABLE t409 (id int PRIMARY KEY, v int); INSERT INTO t409 VALUES (1, 1);",
        )
        .await
        .unwrap();
    let mut conn = env.spawn_logged(&["t409"], &[]);
    streaming(&env).await;
    env.client
        .batch_execute(
            "ALTER TABLE t409 ALTER COLUMN v TYPE text; INSERT INTO t409 VALUES (2, 'two');",
        )
        .await
        .unwrap();
    eventually("the connector stops", Duration::from_secs(60), || {
        let exited = conn.exited().is_some();
        async move { exited }
    })
    .await;
    let line = fatal_line(&conn.log());
    assert!(
        line.starts_with(&format!(
            "connector: table public.t409: column \"v\" changes from int (optional) to string (optional), \
             which the schema registry refuses for {}-value",
            env.topic("t409")
        )),
        "{line}"
    );
    env.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_registry_restarted_mid_stream_holds_the_stream_then_it_continues() {
    let registry = testkit::Isolated::new("registry");
    registry.up_async().await;
    let url = format!("http://{}/apis/ccompat/v7", registry.address());
    let env = TestEnv::new().await;
    env.client
        .batch_execute("CREATE TABLE rr (id bigint PRIMARY KEY, v int)")
        .await
        .unwrap();
    let extra = [("SCHEMA_REGISTRY_URL", url.as_str())];
    let mut conn = env.spawn_logged(&["rr"], &extra);
    streaming(&env).await;
    let mut reader = TopicReader::with_registry(&env.kafka, &env.topic("rr"), &url).await;
    for i in 0..50 {
        env.client
            .batch_execute(&format!("INSERT INTO rr VALUES ({i}, {i})"))
            .await
            .unwrap();
    }
    reader
        .until(60, "the rows before the outage", |r| r.len() >= 50)
        .await;

    registry.down_async().await;
    // A new column needs a new schema version while the registry is away.
    env.client
        .batch_execute("ALTER TABLE rr ADD COLUMN note text")
        .await
        .unwrap();
    for i in 50..100 {
        env.client
            .batch_execute(&format!("INSERT INTO rr VALUES ({i}, {i}, 'n{i}')"))
            .await
            .unwrap();
    }
    eventually(
        "the connector says it waits for the registry",
        Duration::from_secs(60),
        || {
            let waiting = conn.log().contains("schema registry unavailable");
            async move { waiting }
        },
    )
    .await;
    let (ok, status) = run_to_end(&env.env_with(&["rr"], &extra), &["status"]);
    assert!(ok, "{status}");
    assert!(
        status.contains(&format!("registry {url}: unavailable")),
        "{status}"
    );
    reader.poll().await;
    assert_eq!(
        reader.records.len(),
        50,
        "the stream must wait for the registry"
    );
    assert!(conn.exited().is_none(), "{}", conn.log());

    registry.up_async().await;
    let expected: std::collections::HashMap<String, Json> = (0..100i64)
        .map(|i| {
            let note = if i < 50 {
                Json::Null
            } else {
                json!(format!("n{i}"))
            };
            let row = if i < 50 {
                json!({"id": i, "v": i})
            } else {
                json!({"id": i, "v": i, "note": note})
            };
            (json!({"id": i}).to_string(), row)
        })
        .collect();
    reader
        .until(120, "every row once the registry is back", |r| {
            materialize(r) == expected
        })
        .await;
    // Each change exactly once: a fold over every event, per key.
    let mut fold = testkit::fold::Fold::default();
    for r in &reader.records {
        let key = r.key.as_ref().unwrap().to_string();
        fold.push(&key, &format!("{:?}@{:?}", r.op(), r.lsn()));
    }
    assert_eq!((fold.len(), fold.events()), (100, 100));
    assert!(conn.exited().is_none(), "{}", conn.log());
    conn.stop();
    env.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_inside_a_transaction_ends_on_its_boundary_without_duplicates() {
    let env = TestEnv::new().await;
    env.client
        .batch_execute("CREATE TABLE big (id bigint PRIMARY KEY, v int)")
        .await
        .unwrap();
    // Long enough to finish a transaction this size on a busy machine.
    let extra = [
        ("CONNECTOR_FORMAT", "json"),
        ("CONNECTOR_SHUTDOWN_TIMEOUT_MS", "120000"),
        ("RUST_LOG", "info,pg_walstream=warn"),
    ];
    let mut conn = env.spawn_logged(&["big"], &extra);
    streaming(&env).await;
    let rows = 200_000usize;
    env.client
        .batch_execute(&format!(
            "INSERT INTO big SELECT g, 0 FROM generate_series(1, {rows}) g"
        ))
        .await
        .unwrap();
    // SIGTERM as soon as the transaction is partly published.
    let probe: rdkafka::consumer::BaseConsumer = rdkafka::ClientConfig::new()
        .set("bootstrap.servers", &env.kafka)
        .create()
        .unwrap();
    let topic = env.topic("big");
    let published = || {
        use rdkafka::consumer::Consumer;
        probe
            .fetch_watermarks(&topic, 0, Duration::from_secs(5))
            .map_or(0, |(_, high)| high as usize)
    };
    eventually(
        "the first rows are in Kafka",
        Duration::from_secs(60),
        || {
            let n = published();
            async move { n > 0 }
        },
    )
    .await;
    Command::new("kill")
        .args(["-TERM", &conn.child.id().to_string()])
        .status()
        .unwrap();
    eventually("the connector stops", Duration::from_secs(150), || {
        let exited = conn.exited().is_some();
        async move { exited }
    })
    .await;
    let status = conn.exited().expect("stopped");
    assert!(status.success(), "{status}: {}", conn.log());
    assert!(
        conn.log()
            .contains("stop requested: finishing the current transaction"),
        "SIGTERM did not arrive inside the transaction: {}",
        conn.log()
    );
    let mut reader = TopicReader::new(&env.kafka, &topic).await;
    let mut conn = env.spawn_logged(&["big"], &extra);
    env.client
        .batch_execute("INSERT INTO big VALUES (0, 0)")
        .await
        .unwrap();
    reader
        .until(300, "every row, and the one after the restart", |r| {
            r.len() > rows
        })
        .await;
    let keys: std::collections::HashSet<String> = reader
        .records
        .iter()
        .map(|r| r.key.as_ref().unwrap().to_string())
        .collect();
    assert_eq!(
        (keys.len(), reader.records.len()),
        (rows + 1, rows + 1),
        "a clean stop must not cause duplicates"
    );
    conn.stop();
    env.cleanup().await;
}

/// Deliveries are accounted per group (a transaction, a snapshot batch): a group of records
/// the broker takes waits to `Ok`, however early their reports came; a record it refuses
/// (larger than the topic's `max.message.bytes`) fails its group's wait with the broker's
/// reason, so the tracker stops instead of moving the offset past it.
#[tokio::test]
async fn a_record_the_broker_refuses_fails_its_delivery_group() {
    use connector::publisher::{Deliveries, Publisher};
    use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
    use rdkafka::client::DefaultClientContext;

    let mut cfg = connector::config::Config::load(None).unwrap();
    cfg.kafka_bootstrap_servers = kafka();
    cfg.schema_registry_url = registry();
    let publisher = Publisher::connect(&cfg).await.unwrap();
    let topic = format!("deliveries_{}", uuid::Uuid::new_v4().simple());
    let admin: AdminClient<DefaultClientContext> = rdkafka::ClientConfig::new()
        .set("bootstrap.servers", kafka())
        .create()
        .unwrap();
    let new =
        NewTopic::new(&topic, 1, TopicReplication::Fixed(1)).set("max.message.bytes", "262144");
    for created in admin
        .create_topics([&new], &AdminOptions::new())
        .await
        .unwrap()
    {
        created.unwrap();
    }

    let mut accepted = Deliveries::default();
    for i in 0..1000u32 {
        let value = i.to_be_bytes();
        publisher
            .send(&topic, Some(b"k"), Some(&value), &mut accepted)
            .await
            .unwrap();
    }
    assert_eq!(accepted.len(), 1000);
    accepted.wait().await.expect("every record acknowledged");

    let mut refused = Deliveries::default();
    // 512 KiB that lz4 cannot shrink: over the topic's limit, under librdkafka's own.
    let mut state = 0x9e37_79b9_7f4a_7c15u64;
    let too_large: Vec<u8> = (0..512 * 1024)
        .map(|_| {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            state as u8
        })
        .collect();
    for value in [&b"before"[..], &too_large, b"after"] {
        publisher
            .send(&topic, Some(b"k"), Some(value), &mut refused)
            .await
            .unwrap();
    }
    let error = tokio::time::timeout(Duration::from_secs(60), refused.wait())
        .await
        .expect("the refused group settles")
        .expect_err("a refused record fails its group");
    assert!(
        error.to_string().to_lowercase().contains("too large"),
        "the broker's reason: {error}"
    );
    let _ = admin.delete_topics(&[&topic], &AdminOptions::new()).await;
}
