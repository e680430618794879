//! Debezium's mappings of money, hstore, bit/varbit and point, on the real
//! PostgreSQL, Kafka and schema registry: the same values once through the
//! snapshot (`op: r`) and once streamed (`op: c`), decoded by a generic Avro
//! reader (or read as JSON), must be identical and what Debezium emits.

mod common;

use common::*;
use serde_json::{json, Value as Json};

const TABLE: &str = "CREATE EXTENSION IF NOT EXISTS hstore;
     CREATE TABLE typed (id int PRIMARY KEY, m money, h hstore, b1 bit(1), vb1 varbit(1),
                         b bit(12), vb varbit, p point);";

/// Row `id`: the same values each time, so a snapshotted and a streamed
/// row can be compared field by field.
fn insert(id: i32) -> String {
    format!(
        "INSERT INTO typed VALUES ({id}, -1234.5, 'a=>1, b=>NULL, \"c d\"=>\"x\\\"y\"',
                                  B'1', B'0', B'000000000101', B'100000001', '(1.5,-2.25)');
         INSERT INTO typed VALUES ({}, 0, '', B'0', B'1', B'000000000000', B'', '(0,0)');",
        id + 1
    )
}

/// Snapshot rows 1, 2, then streamed rows 3, 4; returns their `after`s by id.
async fn run(extra: &[(&str, &str)]) -> Vec<(String, Json)> {
    let env = TestEnv::new().await;
    env.client.batch_execute(TABLE).await.unwrap();
    env.client.batch_execute(&insert(1)).await.unwrap();
    let mut conn = env.spawn_logged(&["typed"], extra);
    wait_for(60, "connector streaming", || async {
        env.streaming_walsender().await.is_some()
    })
    .await;
    env.client.batch_execute(&insert(3)).await.unwrap();
    let mut reader = TopicReader::new(&env.kafka, &env.topic("typed")).await;
    reader.until(60, "four rows", |r| r.len() >= 4).await;
    assert_eq!(conn.exited(), None, "connector exited:\n{}", conn.log());
    let rows = reader
        .records
        .iter()
        .map(|r| {
            let v = r.value.clone().expect("no tombstone");
            (v["op"].as_str().unwrap().to_string(), v["after"].clone())
        })
        .collect();
    conn.stop();
    env.cleanup().await;
    rows
}

/// `after` without its `id`, to compare a snapshot row with a streamed one.
fn without_id(after: &Json) -> Json {
    let mut a = after.clone();
    a.as_object_mut().unwrap().remove("id");
    a
}

fn check_snapshot_equals_stream(rows: &[(String, Json)]) {
    let ops: Vec<&str> = rows.iter().map(|(op, _)| op.as_str()).collect();
    assert_eq!(ops, ["r", "r", "c", "c"], "{rows:?}");
    assert_eq!(without_id(&rows[0].1), without_id(&rows[2].1));
    assert_eq!(without_id(&rows[1].1), without_id(&rows[3].1));
}

/// The WKB Debezium's `Point.createValue` builds for (x, y).
fn wkb(x: f64, y: f64) -> Vec<u8> {
    let mut w = vec![1, 1, 0, 0, 0];
    w.extend_from_slice(&x.to_le_bytes());
    w.extend_from_slice(&y.to_le_bytes());
    w
}

/// How the generic Avro reader renders `bytes`: an array of numbers.
fn bytes(b: &[u8]) -> Json {
    json!(b)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn money_hstore_bits_and_point_in_avro_snapshot_and_stream() {
    let rows = run(&[]).await;
    check_snapshot_equals_stream(&rows);
    let a = &rows[0].1;
    // money, precise: decimal scale 2; -123450 unscaled = 0xfe1dc6.
    assert_eq!(a["m"], bytes(&[0xfe, 0x1d, 0xc6]), "{a}");
    // hstore: map<string, string?>.
    assert_eq!(a["h"], json!({"a": "1", "b": null, "c d": "x\"y"}));
    // bit(1), varbit(1): booleans.
    assert_eq!(
        (a["b1"].clone(), a["vb1"].clone()),
        (json!(true), json!(false))
    );
    // bit(12) 000000000101 = 5, varbit 100000001 = 257: little-endian, minimal.
    assert_eq!(a["b"], bytes(&[0x05]));
    assert_eq!(a["vb"], bytes(&[0x01, 0x01]));
    assert_eq!(
        a["p"],
        json!({"x": 1.5, "y": -2.25, "wkb": bytes(&wkb(1.5, -2.25)), "srid": null})
    );
    let z = &rows[1].1;
    assert_eq!(z["m"], bytes(&[0]));
    assert_eq!(z["h"], json!({}));
    assert_eq!(
        (z["b1"].clone(), z["vb1"].clone()),
        (json!(false), json!(true))
    );
    assert_eq!((z["b"].clone(), z["vb"].clone()), (bytes(&[]), bytes(&[])));
    assert_eq!(z["p"]["x"], 0.0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn money_as_string_and_hstore_as_json_string_in_json_snapshot_and_stream() {
    let rows = run(&[
        ("CONNECTOR_FORMAT", "json"),
        ("CONNECTOR_DECIMAL_HANDLING", "string"),
        ("CONNECTOR_HSTORE_HANDLING", "json"),
    ])
    .await;
    check_snapshot_equals_stream(&rows);
    let a = &rows[0].1;
    assert_eq!(a["m"], "-1234.50", "{a}");
    // Debezium's hstore.handling.mode=json: a JSON document in a string.
    let h: Json = serde_json::from_str(a["h"].as_str().unwrap()).unwrap();
    assert_eq!(h, json!({"a": "1", "b": null, "c d": "x\"y"}));
    assert_eq!(
        (a["b1"].clone(), a["vb1"].clone()),
        (json!(true), json!(false))
    );
    // Bits as base64 (JsonConverter's bytes): [0x05] and [0x01, 0x01].
    assert_eq!(
        (a["b"].clone(), a["vb"].clone()),
        (json!("BQ=="), json!("AQE="))
    );
    assert_eq!(a["p"]["x"], 1.5);
    assert_eq!(a["p"]["y"], -2.25);
    assert_eq!(a["p"]["srid"], Json::Null);
    assert_eq!(rows[1].1["m"], "0.00");
    assert_eq!(rows[1].1["h"], "{}");
}
