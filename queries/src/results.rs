//! Result changes (Drasi's added / updated (before, after) / deleted), keyed by the result
//! key, with a per-query sequence number and the source offsets they reflect; their Avro form
//! (the query's contract in `topics`), and reading a result topic back.

use std::collections::{BTreeMap, HashMap};
use std::time::Duration;

use apache_avro::types::Value;
use apache_avro::writer::datum::GenericDatumWriter;
use apache_avro::Schema;
use rdkafka::consumer::{BaseConsumer, Consumer, ConsumerContext};
use rdkafka::error::KafkaError;
use rdkafka::types::RDKafkaErrorCode;
use rdkafka::{ClientContext, Message, Offset, TopicPartitionList};
use topics::registry::Registry;
use topics::settings::KafkaSettings;

use crate::avro::Schemas;
use crate::error::{Error, Result};
use crate::query::Query;
use crate::row::{row_json, Cell, ColumnType, Row};

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Op {
    Added,
    Updated,
    Deleted,
}

impl Op {
    /// `added`, `updated` or `deleted` (a metric label, the JSON form).
    pub fn label(self) -> &'static str {
        match self {
            Op::Added => "added",
            Op::Updated => "updated",
            Op::Deleted => "deleted",
        }
    }

    fn symbol(self) -> &'static str {
        match self {
            Op::Added => "ADDED",
            Op::Updated => "UPDATED",
            Op::Deleted => "DELETED",
        }
    }

    fn index(self) -> u32 {
        match self {
            Op::Added => 0,
            Op::Updated => 1,
            Op::Deleted => 2,
        }
    }
}

#[derive(Debug, Clone, PartialEq)]
pub struct ResultChange {
    pub seq: u64,
    pub op: Op,
    pub key: String,
    pub before: Option<Row>,
    pub after: Option<Row>,
    /// `<topic>:<partition>` → the offset up to which (exclusive) that source is reflected.
    pub source_offsets: BTreeMap<String, i64>,
    pub emitted_at_ms: i64,
}

impl ResultChange {
    /// The change between what was published for a key and what the answer is now; `None`
    /// when they are the same.
    pub fn between(key: &str, before: Option<&Row>, after: Option<&Row>) -> Option<(Op, Self)> {
        let op = match (before, after) {
            (None, None) => return None,
            (Some(b), Some(a)) if a == b => return None,
            (None, Some(_)) => Op::Added,
            (Some(_), Some(_)) => Op::Updated,
            (Some(_), None) => Op::Deleted,
        };
        Some((
            op,
            Self {
                seq: 0,
                op,
                key: key.to_owned(),
                before: before.cloned(),
                after: after.cloned(),
                source_offsets: BTreeMap::new(),
                emitted_at_ms: 0,
            },
        ))
    }

    /// The change as JSON (the dashboard's and services' view).
    pub fn to_json(&self, query: &Query) -> serde_json::Value {
        serde_json::json!({
            "query": query.name,
            "seq": self.seq,
            "op": self.op,
            "key": self.key,
            "before": self.before.as_ref().map(|r| row_json(query.columns, r)),
            "after": self.after.as_ref().map(|r| row_json(query.columns, r)),
            "sourceOffsets": self.source_offsets,
            "emittedAt": self.emitted_at_ms,
        })
    }
}

/// Encodes a query's result changes in its contract, under the schema id the registry has.
pub struct Encoder {
    query: &'static Query,
    schema_id: u32,
    writer: GenericDatumWriter<'static>,
}

impl Encoder {
    /// Binds to the id of the query's contract under `<topic>-value` (registered by
    /// `topics apply`, or by a test for its own topic).
    pub async fn connect(registry: &Registry, query: &'static Query, topic: &str) -> Result<Self> {
        let text = query.topic.value_schema.unwrap_or_default();
        let subject = topics::spec::value_subject(topic);
        let registered = registry.lookup(&subject, text).await?.ok_or_else(|| {
            Error::Config(format!(
                "{subject} does not have the {} contract yet; run `topics apply`",
                query.name
            ))
        })?;
        let schema: &'static Schema = Box::leak(Box::new(Schema::parse_str(text)?));
        Ok(Self {
            query,
            schema_id: registered.id,
            writer: GenericDatumWriter::builder(schema).build()?,
        })
    }

    pub fn encode(&self, change: &ResultChange) -> Result<Vec<u8>> {
        let row = |r: &Option<Row>| -> Result<Value> {
            Ok(match r {
                None => Value::Union(0, Box::new(Value::Null)),
                Some(r) => Value::Union(1, Box::new(self.row_value(r)?)),
            })
        };
        let value = Value::Record(vec![
            ("seq".into(), Value::Long(change.seq as i64)),
            (
                "op".into(),
                Value::Enum(change.op.index(), change.op.symbol().into()),
            ),
            ("key".into(), Value::String(change.key.clone())),
            ("before".into(), row(&change.before)?),
            ("after".into(), row(&change.after)?),
            (
                "sourceOffsets".into(),
                Value::Map(
                    change
                        .source_offsets
                        .iter()
                        .map(|(k, v)| (k.clone(), Value::Long(*v)))
                        .collect::<HashMap<_, _>>(),
                ),
            ),
            (
                "emittedAt".into(),
                Value::TimestampMillis(change.emitted_at_ms),
            ),
        ]);
        let mut out = vec![0];
        out.extend_from_slice(&self.schema_id.to_be_bytes());
        self.writer.write_value_ref(&mut out, &value)?;
        Ok(out)
    }

    fn row_value(&self, row: &Row) -> Result<Value> {
        let columns = self.query.columns;
        if row.len() != columns.len() {
            return Err(Error::Result(format!(
                "{}: a row of {} cells for {} columns",
                self.query.name,
                row.len(),
                columns.len()
            )));
        }
        let fields = columns
            .iter()
            .zip(row)
            .map(|(c, cell)| {
                let v = match (c.ty, cell) {
                    (ColumnType::Long, Cell::Long(v)) => Value::Long(*v),
                    (ColumnType::Text, Cell::Text(v)) => Value::String(v.clone()),
                    (ColumnType::OptionalDouble, Cell::Null) => {
                        Value::Union(0, Box::new(Value::Null))
                    }
                    (ColumnType::OptionalDouble, Cell::Double(v)) => {
                        Value::Union(1, Box::new(Value::Double(*v)))
                    }
                    (ColumnType::TimestampMillis, Cell::Long(v)) => Value::TimestampMillis(*v),
                    (ty, cell) => {
                        return Err(Error::Result(format!(
                            "{}: column {} is {ty:?}, the cell {cell:?}",
                            self.query.name, c.name
                        )))
                    }
                };
                Ok((c.name.to_owned(), v))
            })
            .collect::<Result<Vec<_>>>()?;
        Ok(Value::Record(fields))
    }
}

fn unwrap(value: &Value) -> &Value {
    match value {
        Value::Union(_, inner) => inner,
        other => other,
    }
}

fn field<'a>(fields: &'a [(String, Value)], name: &str) -> Result<&'a Value> {
    fields
        .iter()
        .find(|(k, _)| k == name)
        .map(|(_, v)| unwrap(v))
        .ok_or_else(|| Error::Result(format!("no field {name}")))
}

fn long(value: &Value) -> Result<i64> {
    match value {
        Value::Long(v) | Value::TimestampMillis(v) => Ok(*v),
        Value::Int(v) => Ok(i64::from(*v)),
        other => Err(Error::Result(format!("not a long: {other:?}"))),
    }
}

/// A result change from its generic Avro value.
pub fn decode(query: &Query, value: &Value) -> Result<ResultChange> {
    let Value::Record(fields) = value else {
        return Err(Error::Result("not a record".to_owned()));
    };
    let op = match field(fields, "op")? {
        Value::Enum(_, s) if s == "ADDED" => Op::Added,
        Value::Enum(_, s) if s == "UPDATED" => Op::Updated,
        Value::Enum(_, s) if s == "DELETED" => Op::Deleted,
        other => return Err(Error::Result(format!("op {other:?}"))),
    };
    let row = |name: &str| -> Result<Option<Row>> {
        match field(fields, name)? {
            Value::Null => Ok(None),
            Value::Record(cells) => query
                .columns
                .iter()
                .map(|c| {
                    let v = field(cells, c.name)?;
                    Ok(match (c.ty, v) {
                        (_, Value::Null) => Cell::Null,
                        (ColumnType::Text, Value::String(s)) => Cell::Text(s.clone()),
                        (ColumnType::OptionalDouble, Value::Double(d)) => Cell::Double(*d),
                        (_, v) => Cell::Long(long(v)?),
                    })
                })
                .collect::<Result<Row>>()
                .map(Some),
            other => Err(Error::Result(format!("{name}: {other:?}"))),
        }
    };
    let key = match field(fields, "key")? {
        Value::String(s) => s.clone(),
        other => return Err(Error::Result(format!("key {other:?}"))),
    };
    let source_offsets = match field(fields, "sourceOffsets")? {
        Value::Map(m) => m
            .iter()
            .map(|(k, v)| Ok((k.clone(), long(v)?)))
            .collect::<Result<_>>()?,
        other => return Err(Error::Result(format!("sourceOffsets {other:?}"))),
    };
    Ok(ResultChange {
        seq: long(field(fields, "seq")?)? as u64,
        op,
        key,
        before: row("before")?,
        after: row("after")?,
        source_offsets,
        emitted_at_ms: long(field(fields, "emittedAt")?)?,
    })
}

/// Every committed change on a result topic, in offset order, read from the beginning up to
/// its end as of now.
pub async fn read_all(
    kafka: &KafkaSettings,
    schemas: &Schemas,
    query: &'static Query,
    topic: &str,
) -> Result<Vec<ResultChange>> {
    let consumer: BaseConsumer<EndReaderContext> =
        end_reader(kafka).create_with_context(EndReaderContext)?;
    let mut tpl = TopicPartitionList::new();
    tpl.add_partition_offset(topic, 0, Offset::Beginning)?;
    consumer.assign(&tpl)?;
    let mut changes = Vec::new();
    let deadline = std::time::Instant::now() + Duration::from_secs(120);
    loop {
        if std::time::Instant::now() > deadline {
            return Err(Error::Timeout {
                what: format!("reading {topic} to its end"),
                secs: 120,
            });
        }
        let polled = tokio::task::block_in_place(|| consumer.poll(Duration::from_millis(200)));
        match polled {
            None => continue,
            Some(Err(e)) if is_end_marker(&e) => break,
            Some(Err(e)) => return Err(e.into()),
            Some(Ok(msg)) => {
                let Some(payload) = msg.payload() else {
                    continue;
                };
                let value = schemas.decode(payload).await?;
                changes.push(decode(query, &value)?);
            }
        }
    }
    Ok(changes)
}

/// Whether a librdkafka error is the end-of-partition marker (`enable.partition.eof`), which
/// an end reader asks for, rather than an error.
pub fn is_end_marker(error: &KafkaError) -> bool {
    matches!(error, KafkaError::PartitionEOF(_))
        || error.rdkafka_error_code() == Some(RDKafkaErrorCode::PartitionEOF)
}

/// The client context of [`end_reader`] consumers. librdkafka delivers "partition end
/// reached" as an error event, which rdkafka's default context logs at ERROR before the poll
/// returns it as [`KafkaError::PartitionEOF`]; here it is the end marker it is (logged at
/// TRACE), and every other client error is still logged at ERROR.
#[derive(Debug, Clone, Copy, Default)]
pub struct EndReaderContext;

impl ClientContext for EndReaderContext {
    fn error(&self, error: KafkaError, reason: &str) {
        if is_end_marker(&error) {
            tracing::trace!(reason, "partition end reached");
        } else {
            tracing::error!(error = %error, reason, "librdkafka");
        }
    }
}

impl ConsumerContext for EndReaderContext {}

/// A consumer outside any group that reports the end of each partition (committed records
/// only), for reading a topic up to where it stands.
pub fn end_reader(kafka: &KafkaSettings) -> rdkafka::ClientConfig {
    let mut config = rdkafka::ClientConfig::new();
    config
        .set("bootstrap.servers", &kafka.kafka_bootstrap_servers)
        .set("group.id", "queries-reader")
        .set("enable.auto.commit", "false")
        .set("enable.partition.eof", "true")
        .set("isolation.level", "read_committed")
        .set("auto.offset.reset", "earliest")
        .set("fetch.wait.max.ms", "10");
    config
}

/// The answer the published changes add up to: per key, the row after its last change.
pub fn fold(changes: &[ResultChange]) -> (HashMap<String, Row>, u64) {
    let mut answer = HashMap::new();
    let mut seq = 0;
    for c in changes {
        seq = seq.max(c.seq);
        match &c.after {
            Some(row) => answer.insert(c.key.clone(), row.clone()),
            None => answer.remove(&c.key),
        };
    }
    (answer, seq)
}

/// Follows result topics from their beginning for as long as the receiver lives: every
/// committed change, tagged with the index of its query in `queries`. A record that does not
/// decode is logged with its position and skipped (it cannot ever decode).
pub fn follow(
    kafka: &KafkaSettings,
    schemas: Schemas,
    queries: Vec<(&'static Query, String)>,
) -> Result<tokio::sync::mpsc::Receiver<(usize, ResultChange)>> {
    use rdkafka::consumer::StreamConsumer;
    let consumer: StreamConsumer = end_reader(kafka)
        .set("enable.partition.eof", "false")
        .create()?;
    let mut tpl = TopicPartitionList::new();
    for (_, topic) in &queries {
        tpl.add_partition_offset(topic, 0, Offset::Beginning)?;
    }
    consumer.assign(&tpl)?;
    let (tx, rx) = tokio::sync::mpsc::channel(1024);
    tokio::spawn(async move {
        loop {
            let msg = match consumer.recv().await {
                Ok(msg) => msg,
                Err(e) => {
                    tracing::warn!(error = %e, "reading result changes; retrying");
                    tokio::time::sleep(Duration::from_millis(500)).await;
                    continue;
                }
            };
            let Some(index) = queries.iter().position(|(_, t)| t == msg.topic()) else {
                continue;
            };
            let Some(payload) = msg.payload() else {
                continue;
            };
            let decoded = match schemas.decode(payload).await {
                Ok(value) => decode(queries[index].0, &value),
                Err(e) => Err(e),
            };
            match decoded {
                Ok(change) => {
                    if tx.send((index, change)).await.is_err() {
                        return;
                    }
                }
                Err(e) => {
                    tracing::error!(topic = msg.topic(), offset = msg.offset(), error = %e, "result change skipped")
                }
            }
        }
    });
    Ok(rx)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn partition_eof_is_the_end_marker_and_other_errors_are_not() {
        assert!(is_end_marker(&KafkaError::PartitionEOF(0)));
        assert!(is_end_marker(&KafkaError::Global(
            RDKafkaErrorCode::PartitionEOF
        )));
        assert!(!is_end_marker(&KafkaError::Global(
            RDKafkaErrorCode::BrokerTransportFailure
        )));
        assert!(!is_end_marker(&KafkaError::MessageConsumption(
            RDKafkaErrorCode::UnknownTopicOrPartition
        )));
    }
}
