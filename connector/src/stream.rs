//! Streaming: pgoutput events from the replication slot turned into
//! Debezium envelopes, published per transaction, and acknowledged to the
//! slot only once Kafka has every record of the transaction.

use std::collections::HashMap;
use std::sync::Arc;

use pg_walstream::{CancellationToken, ColumnValue, EventType, LogicalReplicationStream, RowData};
use tokio::sync::watch;
use tokio_postgres::Client;

use crate::config::{Config, Format};
use crate::envelope::{self, Event, MessageRecord, Op, SnapshotMarker, Source, TxBlock, TxRecord};
use crate::error::{Error, Result};
use crate::incremental::{Incremental, Released};
use crate::offsets::{Ack, Pending, Tracker};
use crate::pg;
use crate::publisher::{Deliveries, Publisher};
use crate::schema::{Column, PgType, TableSchema};
use crate::value::{parse, unavailable, Datum};

/// Prefix of the logical-decoding messages the heartbeat writes.
pub const HEARTBEAT_PREFIX: &str = "connector_heartbeat";

/// A table as currently published: its schema, topic and registry ids.
#[derive(Clone)]
pub struct TableState {
    pub schema: Arc<TableSchema>,
    pub topic: String,
    /// The outbox table: its inserts are routed, nothing else is published.
    pub outbox: bool,
    /// The signal table: read for signals and watermarks, never published.
    pub signal: bool,
    key_id: u32,
    value_id: u32,
}

impl TableState {
    /// Whether the table's row changes are published as change events: not the outbox
    /// (only its inserts are, routed: `emit_outbox`, as Debezium's outbox router does) and
    /// not the signal table.
    pub fn published(&self) -> bool {
        !self.outbox && !self.signal
    }
}

/// Encodes one table's change events (key and value, in the configured format); no I/O.
#[derive(Debug, Clone)]
pub struct Encoder {
    format: Format,
    schema: Arc<TableSchema>,
    key_id: u32,
    value_id: u32,
}

impl Encoder {
    /// The key (none for a table without one) and value of a change event.
    pub fn encode(
        &self,
        op: Op,
        before: Option<&[Datum]>,
        after: Option<&[Datum]>,
        source: Source<'_>,
    ) -> Result<(Option<Vec<u8>>, Vec<u8>)> {
        let key_row = after.or(before).expect("an event has a row");
        // Key columns are required fields: never encode a row without them.
        for row in [before, after].into_iter().flatten() {
            if let Some(column) = envelope::missing_key(&self.schema, row) {
                return Err(Error::MissingKey {
                    table: self.schema.qualified(),
                    column: column.to_string(),
                    op: match op {
                        Op::Delete => "delete",
                        Op::Update => "update",
                        _ => "change",
                    },
                });
            }
        }
        let ev = Event {
            table: &self.schema,
            op,
            before,
            after,
            source,
            ts_us: chrono::Utc::now().timestamp_micros(),
        };
        Ok(match self.format {
            Format::Avro => (
                envelope::avro_key(&self.schema, key_row, self.key_id),
                ev.avro_value(self.value_id),
            ),
            Format::Json => (envelope::json_key(&self.schema, key_row), ev.json_value()),
        })
    }
}

/// Builds, encodes and sends events; shared by the snapshot and the stream.
pub struct Emitter {
    pub cfg: Config,
    pub db: String,
    pub publisher: Arc<Publisher>,
    /// Streamed row changes handed to Kafka.
    changes: telemetry::metrics::Counter,
    /// Snapshot rows (initial and incremental) handed to Kafka.
    snapshot_rows: telemetry::metrics::Counter,
}

impl Emitter {
    pub fn new(cfg: Config, db: String, publisher: Arc<Publisher>) -> Emitter {
        let name = cfg.name.clone();
        Emitter {
            changes: telemetry::metrics::counter!(
                telemetry::names::CONNECTOR_CHANGES, "connector" => name.clone()
            ),
            snapshot_rows: telemetry::metrics::counter!(
                telemetry::names::CONNECTOR_SNAPSHOT_ROWS, "connector" => name
            ),
            cfg,
            db,
            publisher,
        }
    }

    /// Creates the topic and registers the schemas (cached by content, so an
    /// unchanged table costs nothing and an added column registers a new
    /// version).
    pub async fn table_state(&self, mut schema: TableSchema) -> Result<TableState> {
        let hstore_json = self.cfg.hstore_handling == crate::config::HstoreHandling::Json;
        for c in &mut schema.columns {
            c.ty = std::mem::replace(&mut c.ty, PgType::Other)
                .with_modes(hstore_json, self.cfg.money_fraction_digits);
        }
        let topic = self.cfg.topic_for(&schema.schema, &schema.table);
        if !self.cfg.outbox_table.is_empty() && schema.qualified() == self.cfg.outbox_table {
            for column in ["id", "aggregatetype", "aggregateid", "payload"] {
                if !schema.columns.iter().any(|c| c.name == column) {
                    return Err(Error::Config(format!(
                        "outbox table {} has no column {column:?} (it needs id, aggregatetype, aggregateid, payload)",
                        self.cfg.outbox_table
                    )));
                }
            }
            return Ok(TableState {
                schema: Arc::new(schema),
                topic,
                outbox: true,
                signal: false,
                key_id: 0,
                value_id: 0,
            });
        }
        if self
            .cfg
            .signal_table()
            .is_some_and(|s| *s == schema.qualified())
        {
            for column in ["id", "type", "data"] {
                if !schema.columns.iter().any(|c| c.name == column) {
                    return Err(Error::Config(format!(
                        "signal table {} has no column {column:?} (it needs id, type, data)",
                        self.cfg.signal_table
                    )));
                }
            }
            return Ok(TableState {
                schema: Arc::new(schema),
                topic,
                outbox: false,
                signal: true,
                key_id: 0,
                value_id: 0,
            });
        }
        self.publisher.ensure_topic(&topic, false).await?;
        let (mut key_id, mut value_id) = (0, 0);
        if self.cfg.format == Format::Avro {
            if let Some((first, second, field)) = schema.avro_name_collision() {
                return Err(Error::FieldNameCollision {
                    table: schema.qualified(),
                    first,
                    second,
                    field,
                });
            }
            let reg = self.publisher.registry();
            let dec = self.cfg.decimal_handling;
            let table = schema.qualified();
            if let Some(k) = schema.key_schema(&self.cfg.name, dec) {
                key_id = reg.register(&format!("{topic}-key"), &table, &k).await?;
            }
            value_id = reg
                .register(
                    &format!("{topic}-value"),
                    &table,
                    &schema.value_schema(&self.cfg.name, dec),
                )
                .await?;
        }
        Ok(TableState {
            schema: Arc::new(schema),
            topic,
            outbox: false,
            signal: false,
            key_id,
            value_id,
        })
    }

    /// Sends one change event, plus a tombstone after a delete.
    pub async fn emit(
        &self,
        ts: &TableState,
        op: Op,
        before: Option<&[Datum]>,
        after: Option<&[Datum]>,
        source: Source<'_>,
        out: &mut Deliveries,
    ) -> Result<()> {
        if !ts.published() {
            return Ok(());
        }
        let (key, value) = self.encoder(ts).encode(op, before, after, source)?;
        self.send_encoded(ts, op, key.as_deref(), &value, out).await
    }

    /// What encodes `ts`'s change events, owned, so it can run off this task
    /// (the snapshot encodes its batches on the blocking pool).
    pub fn encoder(&self, ts: &TableState) -> Encoder {
        Encoder {
            format: self.cfg.format,
            schema: ts.schema.clone(),
            key_id: ts.key_id,
            value_id: ts.value_id,
        }
    }

    /// Sends an event [`Encoder::encode`] made, plus a tombstone after a delete.
    pub async fn send_encoded(
        &self,
        ts: &TableState,
        op: Op,
        key: Option<&[u8]>,
        value: &[u8],
        out: &mut Deliveries,
    ) -> Result<()> {
        self.publisher
            .send(&ts.topic, key, Some(value), out)
            .await?;
        if op == Op::Delete && self.cfg.tombstones_on_delete && key.is_some() {
            self.publisher.send(&ts.topic, key, None, out).await?;
        }
        if op == Op::Read {
            self.snapshot_rows.increment(1);
        } else {
            self.changes.increment(1);
        }
        Ok(())
    }

    /// Routes an inserted outbox row: topic `<outbox_topic_prefix><aggregatetype>`,
    /// key = aggregate id, value = payload (as is with `json`, an Avro string
    /// with `avro`), header `id` = the event id, and the row's `traceparent` /
    /// `tracestate` columns (when it has them and they are set) as the W3C
    /// trace-context headers, so the trace of the request that wrote the row
    /// goes on in the consumers.
    pub async fn emit_outbox(
        &self,
        ts: &TableState,
        row: &[Datum],
        out: &mut Deliveries,
    ) -> Result<()> {
        let get = |name: &str| -> Option<Vec<u8>> {
            let i = ts.schema.columns.iter().position(|c| c.name == name)?;
            match &row[i] {
                Datum::Null => None,
                Datum::Str(s) => Some(s.clone().into_bytes()),
                Datum::Bytes(b) => Some(b.clone()),
                Datum::Int(v) => Some(v.to_string().into_bytes()),
                Datum::Long(v) => Some(v.to_string().into_bytes()),
                other => Some(crate::value::to_json(other).to_string().into_bytes()),
            }
        };
        let missing = |column: &str| Error::Value {
            column: format!("{}.{column}", ts.schema.qualified()),
            value: String::new(),
            reason: "an outbox row needs it (null)".into(),
        };
        let id = get("id").ok_or_else(|| missing("id"))?;
        let kind = get("aggregatetype").ok_or_else(|| missing("aggregatetype"))?;
        let aggregate = get("aggregateid").ok_or_else(|| missing("aggregateid"))?;
        let payload = get("payload");
        let topic = format!(
            "{}{}",
            self.cfg.outbox_topic_prefix,
            String::from_utf8_lossy(&kind)
        );
        self.publisher.ensure_topic(&topic, false).await?;
        let (key, value) = match self.cfg.format {
            Format::Json => {
                let mut key = Vec::new();
                crate::value::json_str(&mut key, &String::from_utf8_lossy(&aggregate));
                (key, payload)
            }
            Format::Avro => {
                let reg = self.publisher.registry();
                let string = serde_json::json!("string");
                let optional = serde_json::json!(["null", "string"]);
                let key_id = reg
                    .register(&format!("{topic}-key"), &topic, &string)
                    .await?;
                let value_id = reg
                    .register(&format!("{topic}-value"), &topic, &optional)
                    .await?;
                let mut key = envelope::framed(key_id, 16);
                crate::value::avro_str(&mut key, &String::from_utf8_lossy(&aggregate));
                let mut value = envelope::framed(value_id, 64);
                match &payload {
                    None => value.push(0),
                    Some(p) => {
                        value.push(2);
                        crate::value::avro_str(&mut value, &String::from_utf8_lossy(p));
                    }
                }
                (key, Some(value))
            }
        };
        let mut headers: Vec<(&str, Vec<u8>)> = vec![("id", id)];
        for name in ["traceparent", "tracestate"] {
            if let Some(v) = get(name).filter(|v| !v.is_empty()) {
                headers.push((name, v));
            }
        }
        let headers: Vec<(&str, &[u8])> = headers.iter().map(|(k, v)| (*k, &v[..])).collect();
        self.publisher
            .send_with_headers(&topic, Some(&key), value.as_deref(), &headers, out)
            .await?;
        self.changes.increment(1);
        Ok(())
    }

    /// Sends a truncate event (op `t`): null key, no `before`/`after`.
    pub async fn emit_truncate(
        &self,
        ts: &TableState,
        source: Source<'_>,
        out: &mut Deliveries,
    ) -> Result<()> {
        let ev = Event {
            table: &ts.schema,
            op: Op::Truncate,
            before: None,
            after: None,
            source,
            ts_us: chrono::Utc::now().timestamp_micros(),
        };
        let value = match self.cfg.format {
            Format::Avro => ev.avro_value(ts.value_id),
            Format::Json => ev.json_value(),
        };
        self.publisher
            .send(&ts.topic, None, Some(&value), out)
            .await?;
        Ok(())
    }

    /// The registry ids of a side topic's key and value schemas (`<topic>-key`, `-value`).
    async fn schema_ids(
        &self,
        topic: &str,
        key: &serde_json::Value,
        value: &serde_json::Value,
    ) -> Result<(u32, u32)> {
        let registry = self.publisher.registry();
        let key_id = registry
            .register(&format!("{topic}-key"), topic, key)
            .await?;
        let value_id = registry
            .register(&format!("{topic}-value"), topic, value)
            .await?;
        Ok((key_id, value_id))
    }

    /// Sends a record to Debezium's heartbeat topic, `__debezium-heartbeat.<name>`:
    /// key `{serverName}`, value `{ts_ms}`.
    async fn emit_heartbeat(&self, out: &mut Deliveries) -> Result<()> {
        let topic = self.cfg.heartbeat_topic_name();
        self.publisher.ensure_topic(&topic, false).await?;
        let now_ms = chrono::Utc::now().timestamp_millis();
        let (key, value) = match self.cfg.format {
            Format::Avro => {
                let (key_id, value_id) = self
                    .schema_ids(
                        &topic,
                        &crate::schema::heartbeat_key_schema(),
                        &crate::schema::heartbeat_value_schema(),
                    )
                    .await?;
                let mut key = envelope::framed(key_id, 16);
                crate::value::avro_str(&mut key, &self.cfg.name);
                let mut value = envelope::framed(value_id, 8);
                crate::value::avro_long(&mut value, now_ms);
                (key, value)
            }
            Format::Json => {
                let mut key = b"{\"serverName\":".to_vec();
                crate::value::json_str(&mut key, &self.cfg.name);
                key.push(b'}');
                (key, format!("{{\"ts_ms\":{now_ms}}}").into_bytes())
            }
        };
        self.publisher
            .send(&topic, Some(&key), Some(&value), out)
            .await?;
        Ok(())
    }

    /// Sends a logical decoding message to the message topic.
    async fn emit_message(&self, m: &MessageRecord<'_>, out: &mut Deliveries) -> Result<()> {
        let topic = self.cfg.message_topic();
        self.publisher.ensure_topic(&topic, false).await?;
        let (key, value) = match self.cfg.format {
            Format::Avro => {
                let (key_id, value_id) = self
                    .schema_ids(
                        &topic,
                        &crate::schema::message_key_schema(),
                        &crate::schema::message_value_schema(),
                    )
                    .await?;
                (m.avro_key(key_id), m.avro_value(value_id))
            }
            Format::Json => (m.json_key(), m.json_value()),
        };
        self.publisher
            .send(&topic, Some(&key), Some(&value), out)
            .await?;
        Ok(())
    }

    /// Sends a BEGIN or END record to the transaction topic.
    async fn emit_transaction(&self, rec: &TxRecord<'_>, out: &mut Deliveries) -> Result<()> {
        let topic = self.cfg.transaction_topic();
        self.publisher.ensure_topic(&topic, false).await?;
        let (key, value) = match self.cfg.format {
            Format::Avro => {
                let (key_id, value_id) = self
                    .schema_ids(
                        &topic,
                        &crate::schema::transaction_key_schema(),
                        &crate::schema::transaction_value_schema(),
                    )
                    .await?;
                (rec.avro_key(key_id), rec.avro_value(value_id))
            }
            Format::Json => (rec.json_key(), rec.json_value()),
        };
        self.publisher
            .send(&topic, Some(&key), Some(&value), out)
            .await?;
        Ok(())
    }
}

struct Txn {
    xid: u32,
    ts_us: i64,
    deliveries: Deliveries,
    /// Transaction metadata: `<xid>:<commit lsn>`, whether BEGIN went out,
    /// the events so far, per table.
    id: String,
    begun: bool,
    total: u64,
    counts: Vec<(String, u64)>,
}

impl Txn {
    /// With transaction metadata on: BEGIN before the first event, and the
    /// next event's `transaction` block (orders counted from 1).
    async fn next_block(
        &mut self,
        emitter: &Emitter,
        table: &TableSchema,
    ) -> Result<Option<(u64, u64)>> {
        if !emitter.cfg.provide_transaction_metadata {
            return Ok(None);
        }
        if !self.begun {
            self.begun = true;
            let rec = TxRecord {
                id: &self.id,
                counts: None,
                ts_ms: self.ts_us.div_euclid(1000),
            };
            emitter.emit_transaction(&rec, &mut self.deliveries).await?;
        }
        self.total += 1;
        let name = table.qualified();
        let n = match self.counts.iter_mut().find(|(t, _)| *t == name) {
            Some((_, n)) => {
                *n += 1;
                *n
            }
            None => {
                self.counts.push((name, 1));
                1
            }
        };
        Ok(Some((self.total, n)))
    }
}

fn block(id: &str, orders: Option<(u64, u64)>) -> Option<TxBlock<'_>> {
    orders.map(|(total_order, data_collection_order)| TxBlock {
        id,
        total_order,
        data_collection_order,
    })
}

/// Turns a pgoutput tuple into datums in column order. pgoutput leaves out
/// unchanged TOASTed columns, which become Debezium's placeholder.
fn to_row(ts: &TableState, data: &RowData, cfg: &Config) -> Result<Vec<Datum>> {
    let mut out = Vec::with_capacity(ts.schema.columns.len());
    let mut it = data.iter().peekable();
    for c in &ts.schema.columns {
        match it.peek() {
            Some((name, v)) if name.as_ref() == c.name => {
                out.push(match v {
                    ColumnValue::Null => Datum::Null,
                    ColumnValue::Text(_) | ColumnValue::Binary(_) => {
                        let text = std::str::from_utf8(v.as_bytes()).map_err(|_| Error::Value {
                            column: c.name.clone(),
                            value: String::new(),
                            reason: "not UTF-8".into(),
                        })?;
                        parse(&c.name, &c.ty, text, cfg.decimal_handling)?
                    }
                });
                it.next();
            }
            _ => out.push(unavailable(&c.ty, cfg.decimal_handling)),
        }
    }
    Ok(out)
}

/// The replication error for an invalidated slot names its way out.
pub fn classify(e: pg_walstream::ReplicationError, slot: &str) -> Error {
    let msg = e.to_string();
    if msg.contains("can no longer get changes") || msg.contains("has been invalidated") {
        return Error::SlotInvalidated {
            slot: slot.to_string(),
            reason: "wal_status=lost".into(),
            lsn: "its confirmed_flush_lsn".into(),
        };
    }
    e.into()
}

/// Runs until `shutdown` flips or an error. A stop requested inside a
/// transaction lets the transaction finish first (so a clean stop sends
/// nothing twice), for at most `shutdown_timeout_ms`; past that (a huge
/// transaction, Kafka down and the producer queue full) it stops where it is,
/// and the unfinished transaction is sent again in full at the next start. On
/// return the tracker still owns whatever was in flight; the caller drains it.
pub async fn run(
    emitter: &Emitter,
    pg_client: &Client,
    stream: &mut LogicalReplicationStream,
    tracker: &Tracker,
    incremental: &mut Incremental,
    shutdown: watch::Receiver<bool>,
) -> Result<()> {
    let mut stop = shutdown.clone();
    let limit = std::time::Duration::from_millis(emitter.cfg.shutdown_timeout_ms);
    let hard_stop = async move {
        let _ = stop.wait_for(|s| *s).await;
        tokio::time::sleep(limit).await;
    };
    tokio::select! {
        r = stream_changes(emitter, pg_client, stream, tracker, incremental, shutdown) => r,
        _ = hard_stop => {
            tracing::warn!(
                timeout_ms = emitter.cfg.shutdown_timeout_ms,
                "stopping inside a transaction: it is sent again at the next start"
            );
            Ok(())
        }
    }
}

async fn stream_changes(
    emitter: &Emitter,
    pg_client: &Client,
    stream: &mut LogicalReplicationStream,
    tracker: &Tracker,
    inc: &mut Incremental,
    mut shutdown: watch::Receiver<bool>,
) -> Result<()> {
    let cfg = &emitter.cfg;
    let cancel = CancellationToken::new();
    let mut tables: HashMap<u32, TableState> = HashMap::new();
    let mut txn: Option<Txn> = None;
    let mut last_commit_lsn: u64 = 0;
    let mut stopping = *shutdown.borrow();
    loop {
        if let Some(f) = tracker.failure() {
            return Err(Error::Kafka(f));
        }
        if stopping && txn.is_none() {
            return Ok(());
        }
        // Between transactions: the next incremental snapshot chunk, read
        // between its watermarks (which then come through the stream).
        if !stopping && txn.is_none() && inc.wants_chunk() {
            inc.read_chunk(pg_client, emitter).await?;
        }
        let event = tokio::select! {
            biased;
            _ = shutdown.changed(), if !stopping => {
                stopping = true;
                if let Some(t) = &txn {
                    tracing::info!(xid = t.xid, "stop requested: finishing the current transaction");
                }
                continue;
            }
            ev = stream.next_event(&cancel) => ev.map_err(|e| classify(e, &cfg.slot_name))?,
        };
        let lsn = event.lsn.value();
        match event.event_type {
            EventType::Relation {
                relation_id,
                namespace,
                relation_name,
                columns,
                ..
            } => {
                let facts = pg::relation_facts(pg_client, relation_id).await?;
                let schema = TableSchema {
                    schema: namespace.to_string(),
                    table: relation_name.to_string(),
                    columns: columns
                        .iter()
                        .map(|c| Column {
                            name: c.name.to_string(),
                            ty: {
                                let (oid, typmod) = facts
                                    .domains
                                    .get(c.name.as_ref())
                                    .copied()
                                    .unwrap_or((c.type_id, c.type_modifier));
                                PgType::from_catalog(
                                    oid,
                                    typmod,
                                    facts.dims.get(c.name.as_ref()).copied().unwrap_or(0),
                                    facts
                                        .type_names
                                        .get(c.name.as_ref())
                                        .map_or("", String::as_str),
                                )
                            },
                            key: facts
                                .primary_key
                                .iter()
                                .any(|k| k.as_str() == c.name.as_ref()),
                        })
                        .collect(),
                };
                tracing::info!(table = %format!("{namespace}.{relation_name}"), columns = schema.columns.len(), "relation");
                tables.insert(relation_id, emitter.table_state(schema).await?);
            }
            EventType::Begin {
                transaction_id,
                final_lsn,
                commit_timestamp,
            } => {
                txn = Some(Txn {
                    xid: transaction_id,
                    ts_us: commit_timestamp.timestamp_micros(),
                    deliveries: Deliveries::default(),
                    id: format!("{transaction_id}:{}", final_lsn.value()),
                    begun: false,
                    total: 0,
                    counts: Vec::new(),
                });
            }
            EventType::Commit {
                end_lsn,
                commit_lsn,
                ..
            } => {
                let mut t = txn.take();
                if let Some(t) = &mut t {
                    let lag_us = chrono::Utc::now().timestamp_micros() - t.ts_us;
                    tracing::debug!(xid = t.xid, lag_us, "commit received");
                    if t.begun {
                        let rec = TxRecord {
                            id: &t.id,
                            counts: Some(&t.counts),
                            ts_ms: t.ts_us.div_euclid(1000),
                        };
                        emitter.emit_transaction(&rec, &mut t.deliveries).await?;
                    }
                }
                let deliveries = t.map(|t| t.deliveries).unwrap_or_default();
                if inc.take_dirty() {
                    // The snapshot's progress goes with this transaction.
                    tracker
                        .push(Pending {
                            deliveries,
                            ack: Ack::Progress(inc.progress().cloned()),
                        })
                        .await?;
                    tracker
                        .push(Pending {
                            deliveries: Deliveries::default(),
                            ack: Ack::Lsn(end_lsn.value()),
                        })
                        .await?;
                } else {
                    tracker
                        .push(Pending {
                            deliveries,
                            ack: Ack::Lsn(end_lsn.value()),
                        })
                        .await?;
                }
                last_commit_lsn = commit_lsn.value();
                stream.maybe_send_feedback().await;
            }
            EventType::Message {
                prefix,
                message_lsn,
                ..
            } if prefix.as_ref() == HEARTBEAT_PREFIX => {
                let mut deliveries = Deliveries::default();
                if cfg.heartbeat_topic {
                    emitter.emit_heartbeat(&mut deliveries).await?;
                }
                tracker
                    .push(Pending {
                        deliveries,
                        ack: if txn.is_none() {
                            Ack::Lsn(message_lsn.value())
                        } else {
                            Ack::None
                        },
                    })
                    .await?;
                stream.maybe_send_feedback().await;
            }
            EventType::Insert {
                relation_oid, data, ..
            } => {
                let (ts, t) = lookup(&tables, relation_oid, &mut txn)?;
                let after = to_row(ts, &data, cfg)?;
                if ts.signal {
                    if let Some(released) =
                        signal(emitter, pg_client, inc, &ts.schema, &after).await?
                    {
                        let s = Source {
                            name: &emitter.cfg.name,
                            db: &emitter.db,
                            ts_us: chrono::Utc::now().timestamp_micros(),
                            snapshot: SnapshotMarker::Incremental,
                            tx_id: None,
                            lsn: Some(lsn),
                            sequence: Some(format!("[null,\"{lsn}\"]")),
                            transaction: None,
                        };
                        for row in &released.rows {
                            emitter
                                .emit(
                                    &released.state,
                                    Op::Read,
                                    None,
                                    Some(row),
                                    s.clone(),
                                    &mut t.deliveries,
                                )
                                .await?;
                        }
                    }
                    continue;
                }
                inc.on_change(&ts.schema, &after, t.xid);
                if ts.outbox {
                    emitter.emit_outbox(ts, &after, &mut t.deliveries).await?;
                    continue;
                }
                let s = source(emitter, t, lsn, last_commit_lsn);
                let orders = t.next_block(emitter, &ts.schema).await?;
                let s = Source {
                    transaction: block(&t.id, orders),
                    ..s
                };
                emitter
                    .emit(ts, Op::Create, None, Some(&after), s, &mut t.deliveries)
                    .await?;
            }
            EventType::Update {
                relation_oid,
                old_data,
                new_data,
                ..
            } => {
                let (ts, t) = lookup(&tables, relation_oid, &mut txn)?;
                if ts.outbox || ts.signal {
                    continue;
                }
                let after = to_row(ts, &new_data, cfg)?;
                let old = old_data.as_ref().map(|d| to_row(ts, d, cfg)).transpose()?;
                inc.on_change(&ts.schema, &after, t.xid);
                if let Some(old) = old
                    .as_ref()
                    .filter(|o| envelope::has_full_key(&ts.schema, o))
                {
                    inc.on_change(&ts.schema, old, t.xid);
                }
                // pgoutput sends the old tuple only when a REPLICA IDENTITY
                // column changed (all columns with FULL). With USING INDEX on
                // an index without the primary key, that old tuple has no
                // primary key: it says nothing about the key, so it is neither
                // a key move nor a usable `before`.
                let before = match old {
                    Some(b) if ts.schema.has_key() && !envelope::has_full_key(&ts.schema, &b) => {
                        None
                    }
                    b => b,
                };
                let moved = before.as_ref().is_some_and(|b| {
                    ts.schema.has_key() && envelope::key_changed(&ts.schema, b, &after)
                });
                if moved {
                    let b = before.as_deref();
                    let s = source(emitter, t, lsn, last_commit_lsn);
                    let orders = t.next_block(emitter, &ts.schema).await?;
                    let s = Source {
                        transaction: block(&t.id, orders),
                        ..s
                    };
                    emitter
                        .emit(ts, Op::Delete, b, None, s, &mut t.deliveries)
                        .await?;
                    let s = source(emitter, t, lsn, last_commit_lsn);
                    let orders = t.next_block(emitter, &ts.schema).await?;
                    let s = Source {
                        transaction: block(&t.id, orders),
                        ..s
                    };
                    emitter
                        .emit(ts, Op::Create, None, Some(&after), s, &mut t.deliveries)
                        .await?;
                } else {
                    let s = source(emitter, t, lsn, last_commit_lsn);
                    let orders = t.next_block(emitter, &ts.schema).await?;
                    let s = Source {
                        transaction: block(&t.id, orders),
                        ..s
                    };
                    emitter
                        .emit(
                            ts,
                            Op::Update,
                            before.as_deref(),
                            Some(&after),
                            s,
                            &mut t.deliveries,
                        )
                        .await?;
                }
            }
            EventType::Delete {
                relation_oid,
                old_data,
                ..
            } => {
                let (ts, t) = lookup(&tables, relation_oid, &mut txn)?;
                if ts.outbox || ts.signal {
                    continue;
                }
                let before = to_row(ts, &old_data, cfg)?;
                if envelope::has_full_key(&ts.schema, &before) {
                    inc.on_change(&ts.schema, &before, t.xid);
                }
                let s = source(emitter, t, lsn, last_commit_lsn);
                let orders = t.next_block(emitter, &ts.schema).await?;
                let s = Source {
                    transaction: block(&t.id, orders),
                    ..s
                };
                emitter
                    .emit(ts, Op::Delete, Some(&before), None, s, &mut t.deliveries)
                    .await?;
            }
            EventType::Message {
                flags,
                message_lsn,
                prefix,
                content,
            } if cfg.logical_messages => {
                let transactional = flags & 1 == 1;
                let source = Source {
                    name: &emitter.cfg.name,
                    db: &emitter.db,
                    ts_us: txn
                        .as_ref()
                        .filter(|_| transactional)
                        .map_or_else(|| chrono::Utc::now().timestamp_micros(), |t| t.ts_us),
                    snapshot: SnapshotMarker::False,
                    tx_id: txn.as_ref().filter(|_| transactional).map(|t| t.xid as i64),
                    lsn: Some(message_lsn.value()),
                    sequence: Some(format!(
                        "[\"{last_commit_lsn}\",\"{}\"]",
                        message_lsn.value()
                    )),
                    transaction: None,
                };
                let m = MessageRecord {
                    prefix: &prefix,
                    content: &content,
                    source,
                    ts_us: chrono::Utc::now().timestamp_micros(),
                };
                match txn.as_mut().filter(|_| transactional) {
                    // Published and acknowledged with its transaction.
                    Some(t) => emitter.emit_message(&m, &mut t.deliveries).await?,
                    None => {
                        let mut deliveries = Deliveries::default();
                        emitter.emit_message(&m, &mut deliveries).await?;
                        tracker
                            .push(Pending {
                                deliveries,
                                ack: if txn.is_none() {
                                    Ack::Lsn(message_lsn.value())
                                } else {
                                    Ack::None
                                },
                            })
                            .await?;
                    }
                }
            }
            EventType::Truncate { tables: names, .. } if cfg.truncate_events => {
                let Some(t) = txn.as_mut() else {
                    return Err(Error::Replication("TRUNCATE outside a transaction".into()));
                };
                for name in &names {
                    let Some(ts) = tables
                        .values()
                        .find(|ts| !ts.outbox && ts.schema.qualified() == name.as_ref())
                    else {
                        continue;
                    };
                    let s = source(emitter, t, lsn, last_commit_lsn);
                    let orders = t.next_block(emitter, &ts.schema).await?;
                    let s = Source {
                        transaction: block(&t.id, orders),
                        ..s
                    };
                    emitter.emit_truncate(ts, s, &mut t.deliveries).await?;
                }
            }
            EventType::Truncate { tables: names, .. } => {
                // Debezium skips truncates by default; so do we, loudly.
                tracing::warn!(tables = ?names, "TRUNCATE is not propagated (truncate_events = false)");
            }
            _ => {}
        }
    }
}

/// A row inserted into the signal table: a snapshot request, or one of
/// the connector's own watermarks (which may release a chunk to emit).
async fn signal(
    emitter: &Emitter,
    pg_client: &Client,
    inc: &mut Incremental,
    table: &TableSchema,
    row: &[Datum],
) -> Result<Option<Released>> {
    let get = |name: &str| {
        let i = table.columns.iter().position(|c| c.name == name)?;
        match &row[i] {
            Datum::Str(s) => Some(s.as_str()),
            _ => None,
        }
    };
    let (id, kind) = (
        get("id").unwrap_or_default(),
        get("type").unwrap_or_default(),
    );
    Ok(match kind {
        crate::incremental::EXECUTE_SNAPSHOT => {
            inc.on_signal(pg_client, &emitter.cfg, id, get("data"))
                .await?;
            None
        }
        crate::incremental::WINDOW_OPEN | crate::incremental::WINDOW_CLOSE => {
            inc.on_watermark(id, kind)
        }
        other => {
            tracing::warn!(signal = id, kind = other, "unknown signal type: ignored");
            None
        }
    })
}

fn lookup<'a>(
    tables: &'a HashMap<u32, TableState>,
    oid: u32,
    txn: &'a mut Option<Txn>,
) -> Result<(&'a TableState, &'a mut Txn)> {
    let ts = tables.get(&oid).ok_or_else(|| {
        Error::Replication(format!(
            "change for relation {oid} before its Relation message"
        ))
    })?;
    let t = txn
        .as_mut()
        .ok_or_else(|| Error::Replication("change outside a transaction".into()))?;
    Ok((ts, t))
}

fn source<'a>(emitter: &'a Emitter, t: &Txn, lsn: u64, last_commit: u64) -> Source<'a> {
    Source {
        name: &emitter.cfg.name,
        db: &emitter.db,
        ts_us: t.ts_us,
        snapshot: SnapshotMarker::False,
        tx_id: Some(t.xid as i64),
        lsn: Some(lsn),
        sequence: Some(format!("[\"{last_commit}\",\"{lsn}\"]")),
        transaction: None,
    }
}

/// Writes a non-transactional logical-decoding message every `interval`
/// until the connection closes. It travels through the slot like any change,
/// so the stream can confirm its LSN even when no captured table is written,
/// and WAL produced by other tables does not pile up behind the slot. Runs in
/// the caller's task (no task of its own), so cancelling the caller stops it.
pub async fn heartbeat(client: Client, interval: std::time::Duration) {
    let mut tick = tokio::time::interval(interval);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        let sql = format!("SELECT pg_logical_emit_message(false, '{HEARTBEAT_PREFIX}', '')");
        if let Err(e) = client.simple_query(&sql).await {
            tracing::warn!(error = %crate::error::pg_message(&e), "heartbeat failed");
            if e.is_closed() {
                return;
            }
        }
    }
}

#[cfg(test)]
impl TableState {
    /// A table state without topic or registry (unit tests).
    pub fn for_tests(schema: TableSchema) -> TableState {
        TableState {
            topic: String::new(),
            schema: Arc::new(schema),
            outbox: false,
            signal: false,
            key_id: 0,
            value_id: 0,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn invalidated_slot_error_names_the_way_out() {
        // What START_REPLICATION answers on a slot whose WAL was removed;
        // the shared test server cannot be made to invalidate a slot.
        let e = pg_walstream::ReplicationError::ReplicationSlot(
            "ERROR: can no longer get changes from replication slot \"s\"".into(),
        );
        let msg = classify(e, "s").to_string();
        assert!(msg.contains("was invalidated"), "{msg}");
        assert!(msg.contains("connector reset"), "{msg}");
        assert!(!msg.contains('\n'));
    }
}
