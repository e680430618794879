//! Debezium's change-event envelope (`before`, `after`, `source`, `op`,
//! `ts_ms`) and key, encoded as Confluent-framed Avro or as plain JSON.

use crate::schema::TableSchema;
use crate::value::{avro_long, avro_str, json_long, json_str, write_avro, write_json, Datum};

/// Reported as `source.version`.
pub const VERSION: &str = concat!(env!("CARGO_PKG_VERSION"), "-connector");

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Op {
    Read,
    Create,
    Update,
    Delete,
    /// TRUNCATE of the table (with `truncate_events` on).
    Truncate,
}

impl Op {
    pub fn code(self) -> &'static str {
        match self {
            Op::Read => "r",
            Op::Create => "c",
            Op::Update => "u",
            Op::Delete => "d",
            Op::Truncate => "t",
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SnapshotMarker {
    /// A streamed change.
    False,
    /// The first row of the initial snapshot.
    First,
    True,
    /// The last row of the initial snapshot.
    Last,
    /// A row of an incremental snapshot chunk.
    Incremental,
}

impl SnapshotMarker {
    fn as_str(self) -> &'static str {
        match self {
            SnapshotMarker::False => "false",
            SnapshotMarker::First => "first",
            SnapshotMarker::True => "true",
            SnapshotMarker::Last => "last",
            SnapshotMarker::Incremental => "incremental",
        }
    }
}

#[derive(Debug, Clone)]
pub struct Source<'a> {
    pub name: &'a str,
    pub db: &'a str,
    /// Commit time of the transaction in µs (snapshot start for `r` events).
    pub ts_us: i64,
    pub snapshot: SnapshotMarker,
    pub tx_id: Option<i64>,
    pub lsn: Option<u64>,
    /// Debezium's `["<last commit lsn>","<lsn>"]`.
    pub sequence: Option<String>,
    /// The envelope's `transaction` block (with transaction metadata on).
    pub transaction: Option<TxBlock<'a>>,
}

/// Debezium's `transaction` block of an event (with transaction metadata on).
#[derive(Debug, Clone, Copy)]
pub struct TxBlock<'a> {
    /// `<txId>:<commit lsn>`, also the key of the transaction topic's records.
    pub id: &'a str,
    /// Position of the event among the transaction's events, from 1.
    pub total_order: u64,
    /// Position among the transaction's events of the same table, from 1.
    pub data_collection_order: u64,
}

#[derive(Debug, Clone)]
pub struct Event<'a> {
    pub table: &'a TableSchema,
    pub op: Op,
    pub before: Option<&'a [Datum]>,
    pub after: Option<&'a [Datum]>,
    pub source: Source<'a>,
    /// When the connector processed the change, in µs.
    pub ts_us: i64,
}

/// Confluent wire format (magic byte 0, schema id big-endian, then the Avro datum): the
/// header comes from the shared layer.
pub use topics::codec::framed;

fn write_row(out: &mut Vec<u8>, table: &TableSchema, row: Option<&[Datum]>) {
    match row {
        None => out.push(0),
        Some(row) => {
            out.push(2);
            for (col, d) in table.columns.iter().zip(row) {
                write_avro(out, d, !col.key);
            }
        }
    }
}

impl Event<'_> {
    pub fn avro_value(&self, schema_id: u32) -> Vec<u8> {
        let mut out = framed(schema_id, 256);
        write_row(&mut out, self.table, self.before);
        write_row(&mut out, self.table, self.after);
        avro_source(
            &mut out,
            &self.source,
            &self.table.schema,
            &self.table.table,
        );
        match &self.source.transaction {
            None => out.push(0),
            Some(t) => {
                out.push(2);
                avro_str(&mut out, t.id);
                avro_long(&mut out, t.total_order as i64);
                avro_long(&mut out, t.data_collection_order as i64);
            }
        }
        avro_str(&mut out, self.op.code());
        opt_long(&mut out, Some(self.ts_us.div_euclid(1000)));
        opt_long(&mut out, Some(self.ts_us));
        opt_long(&mut out, Some(self.ts_us.saturating_mul(1000)));
        out
    }

    /// The envelope as JSON, fields in Debezium's order.
    pub fn json_value(&self) -> Vec<u8> {
        use std::io::Write as _;
        let s = &self.source;
        let mut out = Vec::with_capacity(512);
        out.extend_from_slice(b"{\"before\":");
        row_json(&mut out, self.table, self.before);
        out.extend_from_slice(b",\"after\":");
        row_json(&mut out, self.table, self.after);
        out.extend_from_slice(b",\"source\":");
        json_source(&mut out, s, &self.table.schema, &self.table.table);
        out.extend_from_slice(b",\"transaction\":");
        match &self.source.transaction {
            None => out.extend_from_slice(b"null"),
            Some(t) => {
                out.extend_from_slice(b"{\"id\":");
                json_str(&mut out, t.id);
                let _ = write!(
                    out,
                    ",\"total_order\":{},\"data_collection_order\":{}}}",
                    t.total_order, t.data_collection_order
                );
            }
        }
        out.extend_from_slice(b",\"op\":\"");
        out.extend_from_slice(self.op.code().as_bytes());
        out.extend_from_slice(b"\",\"ts_ms\":");
        json_long(&mut out, self.ts_us.div_euclid(1000));
        out.extend_from_slice(b",\"ts_us\":");
        json_long(&mut out, self.ts_us);
        out.extend_from_slice(b",\"ts_ns\":");
        json_long(&mut out, self.ts_us.saturating_mul(1000));
        out.push(b'}');
        out
    }
}

/// A logical decoding message (`pg_logical_emit_message`) as Debezium's
/// op `m` record on `<name>.message`: key `{prefix}`, value `{op, ts_ms,
/// source, message: {prefix, content}}` (`source.schema`/`table` empty).
pub struct MessageRecord<'a> {
    pub prefix: &'a str,
    pub content: &'a [u8],
    pub source: Source<'a>,
    /// When the connector processed it, in µs.
    pub ts_us: i64,
}

impl MessageRecord<'_> {
    pub fn avro_key(&self, schema_id: u32) -> Vec<u8> {
        let mut out = framed(schema_id, 32);
        avro_str(&mut out, self.prefix);
        out
    }

    pub fn avro_value(&self, schema_id: u32) -> Vec<u8> {
        let mut out = framed(schema_id, 256);
        avro_str(&mut out, "m");
        opt_long(&mut out, Some(self.ts_us.div_euclid(1000)));
        avro_source(&mut out, &self.source, "", "");
        avro_str(&mut out, self.prefix);
        write_avro(&mut out, &Datum::Bytes(self.content.to_vec()), false);
        out
    }

    pub fn json_key(&self) -> Vec<u8> {
        let mut out = b"{\"prefix\":".to_vec();
        json_str(&mut out, self.prefix);
        out.push(b'}');
        out
    }

    pub fn json_value(&self) -> Vec<u8> {
        use std::io::Write as _;
        let mut out = Vec::with_capacity(256);
        let _ = write!(
            out,
            "{{\"op\":\"m\",\"ts_ms\":{},\"source\":",
            self.ts_us.div_euclid(1000)
        );
        json_source(&mut out, &self.source, "", "");
        out.extend_from_slice(b",\"message\":{\"prefix\":");
        json_str(&mut out, self.prefix);
        out.extend_from_slice(b",\"content\":");
        write_json(&mut out, &Datum::Bytes(self.content.to_vec()));
        out.extend_from_slice(b"}}");
        out
    }
}

/// A BEGIN (`counts` = None) or END record of the transaction topic.
pub struct TxRecord<'a> {
    pub id: &'a str,
    /// Per table (`schema.table`), how many events the transaction had.
    pub counts: Option<&'a [(String, u64)]>,
    pub ts_ms: i64,
}

impl TxRecord<'_> {
    fn status(&self) -> &'static str {
        if self.counts.is_some() {
            "END"
        } else {
            "BEGIN"
        }
    }

    pub fn avro_key(&self, schema_id: u32) -> Vec<u8> {
        let mut out = framed(schema_id, 32);
        avro_str(&mut out, self.id);
        out
    }

    pub fn avro_value(&self, schema_id: u32) -> Vec<u8> {
        let mut out = framed(schema_id, 64);
        avro_str(&mut out, self.status());
        avro_str(&mut out, self.id);
        match self.counts {
            None => {
                out.push(0);
                out.push(0);
            }
            Some(counts) => {
                opt_long(&mut out, Some(counts.iter().map(|(_, n)| *n as i64).sum()));
                out.push(2);
                if !counts.is_empty() {
                    avro_long(&mut out, counts.len() as i64);
                    for (table, n) in counts {
                        avro_str(&mut out, table);
                        avro_long(&mut out, *n as i64);
                    }
                }
                out.push(0);
            }
        }
        avro_long(&mut out, self.ts_ms);
        out
    }

    pub fn json_key(&self) -> Vec<u8> {
        let mut out = b"{\"id\":".to_vec();
        json_str(&mut out, self.id);
        out.push(b'}');
        out
    }

    pub fn json_value(&self) -> Vec<u8> {
        use std::io::Write as _;
        let mut out = Vec::with_capacity(128);
        let _ = write!(out, "{{\"status\":\"{}\",\"id\":", self.status());
        json_str(&mut out, self.id);
        match self.counts {
            None => out.extend_from_slice(b",\"event_count\":null,\"data_collections\":null"),
            Some(counts) => {
                let total: u64 = counts.iter().map(|(_, n)| n).sum();
                let _ = write!(out, ",\"event_count\":{total},\"data_collections\":[");
                for (i, (table, n)) in counts.iter().enumerate() {
                    if i > 0 {
                        out.push(b',');
                    }
                    out.extend_from_slice(b"{\"data_collection\":");
                    json_str(&mut out, table);
                    let _ = write!(out, ",\"event_count\":{n}}}");
                }
                out.push(b']');
            }
        }
        let _ = write!(out, ",\"ts_ms\":{}}}", self.ts_ms);
        out
    }
}

/// Debezium's `source` block, Avro.
fn avro_source(out: &mut Vec<u8>, s: &Source<'_>, schema: &str, table: &str) {
    avro_str(out, VERSION);
    avro_str(out, "postgresql");
    avro_str(out, s.name);
    avro_long(out, s.ts_us.div_euclid(1000));
    out.push(0); // snapshot: branch 0 (string) of [string, null]
    avro_str(out, s.snapshot.as_str());
    avro_str(out, s.db);
    opt_str(out, s.sequence.as_deref());
    opt_long(out, Some(s.ts_us));
    opt_long(out, Some(s.ts_us.saturating_mul(1000)));
    avro_str(out, schema);
    avro_str(out, table);
    opt_long(out, s.tx_id);
    opt_long(out, s.lsn.map(|l| l as i64));
    opt_long(out, None); // xmin
}

/// Debezium's `source` block, JSON.
fn json_source(out: &mut Vec<u8>, s: &Source<'_>, schema: &str, table: &str) {
    out.extend_from_slice(b"{\"version\":");
    json_str(out, VERSION);
    out.extend_from_slice(b",\"connector\":\"postgresql\",\"name\":");
    json_str(out, s.name);
    out.extend_from_slice(b",\"ts_ms\":");
    json_long(out, s.ts_us.div_euclid(1000));
    out.extend_from_slice(b",\"snapshot\":\"");
    out.extend_from_slice(s.snapshot.as_str().as_bytes());
    out.extend_from_slice(b"\",\"db\":");
    json_str(out, s.db);
    out.extend_from_slice(b",\"sequence\":");
    match &s.sequence {
        Some(seq) => json_str(out, seq),
        None => out.extend_from_slice(b"null"),
    }
    out.extend_from_slice(b",\"ts_us\":");
    json_long(out, s.ts_us);
    out.extend_from_slice(b",\"ts_ns\":");
    json_long(out, s.ts_us.saturating_mul(1000));
    out.extend_from_slice(b",\"schema\":");
    json_str(out, schema);
    out.extend_from_slice(b",\"table\":");
    json_str(out, table);
    out.extend_from_slice(b",\"txId\":");
    opt_json_long(out, s.tx_id);
    out.extend_from_slice(b",\"lsn\":");
    opt_json_long(out, s.lsn.map(|l| l as i64));
    out.extend_from_slice(b",\"xmin\":null}");
}

fn opt_json_long(out: &mut Vec<u8>, v: Option<i64>) {
    match v {
        Some(v) => json_long(out, v),
        None => out.extend_from_slice(b"null"),
    }
}

fn opt_str(out: &mut Vec<u8>, v: Option<&str>) {
    match v {
        None => out.push(0),
        Some(s) => {
            out.push(2);
            avro_str(out, s);
        }
    }
}

fn opt_long(out: &mut Vec<u8>, v: Option<i64>) {
    match v {
        None => out.push(0),
        Some(l) => {
            out.push(2);
            avro_long(out, l);
        }
    }
}

fn row_json(out: &mut Vec<u8>, table: &TableSchema, row: Option<&[Datum]>) {
    let Some(row) = row else {
        out.extend_from_slice(b"null");
        return;
    };
    out.push(b'{');
    for (i, (col, d)) in table.columns.iter().zip(row).enumerate() {
        if i > 0 {
            out.push(b',');
        }
        // Column names as they are: Debezium's JsonConverter does not rewrite them.
        json_str(out, &col.name);
        out.push(b':');
        write_json(out, d);
    }
    out.push(b'}');
}

/// The message key: the primary-key columns of `row`; `None` without a key.
pub fn avro_key(table: &TableSchema, row: &[Datum], schema_id: u32) -> Option<Vec<u8>> {
    if !table.has_key() {
        return None;
    }
    let mut out = framed(schema_id, 16);
    for (i, _) in table.key_columns() {
        write_avro(&mut out, &row[i], false);
    }
    Some(out)
}

pub fn json_key(table: &TableSchema, row: &[Datum]) -> Option<Vec<u8>> {
    if !table.has_key() {
        return None;
    }
    let mut out = Vec::with_capacity(32);
    out.push(b'{');
    for (n, (i, col)) in table.key_columns().enumerate() {
        if n > 0 {
            out.push(b',');
        }
        json_str(&mut out, &col.name);
        out.push(b':');
        write_json(&mut out, &row[i]);
    }
    out.push(b'}');
    Some(out)
}

/// The first primary-key column `row` has no value for (a REPLICA IDENTITY
/// index without the primary key leaves it out of old tuples). Key columns
/// are required fields, so such a row must never be encoded.
pub fn missing_key<'a>(table: &'a TableSchema, row: &[Datum]) -> Option<&'a str> {
    table
        .key_columns()
        .find(|(i, _)| matches!(row[*i], Datum::Null))
        .map(|(_, c)| c.name.as_str())
}

/// Whether every primary-key column of `row` has a value.
pub fn has_full_key(table: &TableSchema, row: &[Datum]) -> bool {
    missing_key(table, row).is_none()
}

/// Whether the key columns differ between two versions of a row, which
/// Debezium turns into a delete of the old key plus a create of the new one.
pub fn key_changed(table: &TableSchema, old: &[Datum], new: &[Datum]) -> bool {
    table.key_columns().any(|(i, _)| old[i] != new[i])
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::DecimalHandling;
    use crate::schema::{Column, PgType};
    use apache_avro::types::Value;
    use serde_json::{json, Value as Json};

    fn table() -> TableSchema {
        TableSchema {
            schema: "public".into(),
            table: "t".into(),
            columns: vec![
                Column {
                    name: "id".into(),
                    ty: PgType::Int32,
                    key: true,
                },
                Column {
                    name: "doc".into(),
                    ty: PgType::Json,
                    key: false,
                },
                Column {
                    name: "n".into(),
                    ty: PgType::Numeric {
                        precision: None,
                        scale: None,
                    },
                    key: false,
                },
                Column {
                    name: "m".into(),
                    ty: PgType::Numeric {
                        precision: None,
                        scale: None,
                    },
                    key: false,
                },
                Column {
                    name: "tags".into(),
                    ty: PgType::Array(Box::new(PgType::Int64)),
                    key: false,
                },
            ],
        }
    }

    // The deprecated one-call reader is the shortest way to decode one datum in a test.
    #[allow(deprecated)]
    fn decode(schema: &Json, bytes: &[u8]) -> Json {
        let schema = apache_avro::Schema::parse_str(&schema.to_string()).unwrap();
        assert_eq!(bytes[0], 0);
        let mut r = &bytes[5..];
        let v: Value = apache_avro::from_avro_datum(&schema, &mut r, None).unwrap();
        assert!(r.is_empty(), "trailing bytes");
        Json::try_from(v).unwrap()
    }

    #[test]
    fn avro_envelope_round_trips_through_apache_avro() {
        let t = table();
        let before = vec![
            Datum::Int(7),
            Datum::Str("{}".into()),
            Datum::Null,
            Datum::Null,
            Datum::Array(vec![]),
        ];
        let after = vec![
            Datum::Int(7),
            Datum::Str("{\"a\":1}".into()),
            Datum::VarDecimal {
                scale: 2,
                unscaled: vec![0x01],
            },
            Datum::VarDecimal {
                scale: 0,
                unscaled: vec![0x02],
            },
            Datum::Array(vec![Datum::Long(1), Datum::Null]),
        ];
        let ev = Event {
            table: &t,
            op: Op::Update,
            before: Some(&before),
            after: Some(&after),
            source: Source {
                name: "shop",
                db: "db",
                ts_us: 5_000,
                snapshot: SnapshotMarker::False,
                tx_id: Some(42),
                lsn: Some(1234),
                sequence: Some("[\"1\",\"1234\"]".into()),
                transaction: Some(TxBlock {
                    id: "42:1300",
                    total_order: 3,
                    data_collection_order: 2,
                }),
            },
            ts_us: 6_001,
        };
        let schema = t.value_schema("shop", DecimalHandling::Precise);
        let v = decode(&schema, &ev.avro_value(9));
        assert_eq!(v["op"], "u");
        assert_eq!(v["before"]["id"], 7);
        assert_eq!(v["after"]["doc"], "{\"a\":1}");
        assert_eq!(v["after"]["tags"], json!([1, null]));
        assert_eq!(v["source"]["lsn"], 1234);
        assert_eq!(v["source"]["txId"], 42);
        assert_eq!(v["source"]["snapshot"], "false");
        assert_eq!(v["source"]["connector"], "postgresql");
        assert_eq!(v["ts_ms"], 6);
        assert_eq!(v["ts_us"], 6_001);
        assert_eq!(v["source"]["ts_ms"], 5);
        assert_eq!(v["source"]["ts_ns"], 5_000_000);
        assert_eq!(
            v["transaction"],
            json!({"id": "42:1300", "total_order": 3, "data_collection_order": 2})
        );

        let key_schema = t.key_schema("shop", DecimalHandling::Precise).unwrap();
        let k = decode(&key_schema, &avro_key(&t, &after, 3).unwrap());
        assert_eq!(k, json!({"id": 7}));

        let j: Json = serde_json::from_slice(&ev.json_value()).unwrap();
        assert_eq!(j["after"]["tags"], json!([1, null]));
        assert_eq!(j["source"]["table"], "t");
        assert_eq!(j["transaction"], v["transaction"]);
    }

    #[test]
    #[allow(deprecated)] // one-call datum reader with schema resolution
    fn added_column_schema_reads_old_records() {
        // Backward compatibility, checked the way a consumer experiences it:
        // a record written with the old schema, read with the new one.
        let old = table();
        let mut new = table();
        new.columns.push(Column {
            name: "note".into(),
            ty: PgType::Text,
            key: false,
        });
        let row = vec![
            Datum::Int(1),
            Datum::Null,
            Datum::Null,
            Datum::Null,
            Datum::Array(vec![]),
        ];
        let ev = Event {
            table: &old,
            op: Op::Create,
            before: None,
            after: Some(&row),
            source: Source {
                name: "shop",
                db: "db",
                ts_us: 1,
                snapshot: SnapshotMarker::False,
                tx_id: None,
                lsn: None,
                sequence: None,
                transaction: None,
            },
            ts_us: 1,
        };
        let parse = |t: &TableSchema| {
            apache_avro::Schema::parse_str(
                &t.value_schema("shop", DecimalHandling::Precise).to_string(),
            )
            .unwrap()
        };
        let bytes = ev.avro_value(1);
        let mut r = &bytes[5..];
        let v = apache_avro::from_avro_datum(&parse(&old), &mut r, Some(&parse(&new))).unwrap();
        let v = Json::try_from(v).unwrap();
        assert_eq!(v["after"]["id"], 1);
        assert_eq!(v["after"]["note"], Json::Null);
    }

    #[test]
    fn transaction_records_round_trip_through_apache_avro() {
        let counts = vec![("public.a".to_string(), 2), ("public.b".to_string(), 1)];
        let end = TxRecord {
            id: "7:99",
            counts: Some(&counts),
            ts_ms: 5,
        };
        let v = decode(
            &crate::schema::transaction_value_schema(),
            &end.avro_value(1),
        );
        assert_eq!(
            v,
            json!({"status": "END", "id": "7:99", "event_count": 3, "ts_ms": 5,
                   "data_collections": [{"data_collection": "public.a", "event_count": 2},
                                        {"data_collection": "public.b", "event_count": 1}]})
        );
        let j: Json = serde_json::from_slice(&end.json_value()).unwrap();
        assert_eq!(j, v);
        let begin = TxRecord {
            id: "7:99",
            counts: None,
            ts_ms: 5,
        };
        let v = decode(
            &crate::schema::transaction_value_schema(),
            &begin.avro_value(1),
        );
        assert_eq!(v["status"], "BEGIN");
        assert_eq!(v["event_count"], Json::Null);
        let k = decode(&crate::schema::transaction_key_schema(), &begin.avro_key(2));
        assert_eq!(k, json!({"id": "7:99"}));
    }

    #[test]
    fn message_records_round_trip_through_apache_avro() {
        let m = MessageRecord {
            prefix: "audit",
            content: b"hi",
            source: Source {
                name: "shop",
                db: "db",
                ts_us: 5_000,
                snapshot: SnapshotMarker::False,
                tx_id: Some(9),
                lsn: Some(77),
                sequence: None,
                transaction: None,
            },
            ts_us: 6_000,
        };
        let v = decode(&crate::schema::message_value_schema(), &m.avro_value(1));
        assert_eq!(v["op"], "m");
        assert_eq!(v["message"]["prefix"], "audit");
        assert_eq!(v["source"]["lsn"], 77);
        assert_eq!(v["source"]["table"], "");
        let k = decode(&crate::schema::message_key_schema(), &m.avro_key(2));
        assert_eq!(k, json!({"prefix": "audit"}));
        let j: Json = serde_json::from_slice(&m.json_value()).unwrap();
        assert_eq!(j["message"], json!({"prefix": "audit", "content": "aGk="}));
        assert_eq!(j["source"], v["source"]);
    }

    #[test]
    fn delete_has_no_after() {
        let t = table();
        let before = vec![
            Datum::Int(1),
            Datum::Null,
            Datum::Null,
            Datum::Null,
            Datum::Null,
        ];
        let ev = Event {
            table: &t,
            op: Op::Delete,
            before: Some(&before),
            after: None,
            source: Source {
                name: "shop",
                db: "db",
                ts_us: 5_000,
                snapshot: SnapshotMarker::False,
                tx_id: None,
                lsn: None,
                sequence: None,
                transaction: None,
            },
            ts_us: 6_000,
        };
        let v = decode(
            &t.value_schema("shop", DecimalHandling::String),
            &ev.avro_value(1),
        );
        assert_eq!(v["op"], "d");
        assert_eq!(v["after"], Json::Null);
        assert_eq!(v["before"]["id"], 1);
    }
}
