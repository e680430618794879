//! The initial snapshot: every row of the published tables, read in one
//! REPEATABLE READ transaction that imports the replication slot's exported
//! snapshot, so that streaming continues exactly where the snapshot ends:
//! nothing missing, nothing twice.
//!
//! Each table is read with `COPY (SELECT ...) TO STDOUT` (the server streams
//! rows without a round trip per batch) by a task of its own that parses the
//! text rows into datums; up to two batches at a time are encoded on the
//! blocking pool, while this task produces the batches before: reading,
//! parsing, encoding and producing overlap on different threads.

use std::borrow::Cow;
use std::collections::VecDeque;
use std::sync::Arc;

use futures::StreamExt;
use tokio::sync::mpsc;
use tokio::task::JoinHandle;
use tokio_postgres::Client;

use crate::config::DecimalHandling;
use crate::envelope::{Op, SnapshotMarker, Source};
use crate::error::{Error, Result};
use crate::offsets::{Ack, Pending, Tracker};
use crate::pg::{self, quote_ident};
use crate::publisher::Deliveries;
use crate::schema::TableSchema;
use crate::stream::{Emitter, TableState};
use crate::value::{parse, Datum};

/// Deliveries handed to the tracker at a time.
const DELIVERY_BATCH: usize = 5000;
/// Row batches buffered between the reader and the encoders.
const BATCHES_IN_FLIGHT: usize = 8;
/// Batches being encoded (on the blocking pool) while earlier ones are sent.
const ENCODERS_IN_FLIGHT: usize = 2;

/// Reads and publishes all rows; returns how many. Rows are handed to the
/// tracker in batches; the caller drains it before recording the offset.
pub async fn run(
    emitter: &Emitter,
    snapshot_name: &str,
    lsn: u64,
    tables: &[(String, String)],
    tracker: &Tracker,
) -> Result<u64> {
    let cfg = &emitter.cfg;
    let mut client = pg::connect(cfg).await?;
    // SET TRANSACTION SNAPSHOT must be the first statement of the transaction.
    client
        .batch_execute(&format!(
            "BEGIN ISOLATION LEVEL REPEATABLE READ, READ ONLY;
             SET TRANSACTION SNAPSHOT '{}';
             SET LOCAL TimeZone = 'UTC';
             SET LOCAL DateStyle = 'ISO';
             SET LOCAL extra_float_digits = 3;",
            snapshot_name.replace('\'', "")
        ))
        .await?;
    let ts_us = chrono::Utc::now().timestamp_micros();
    let mut total = 0u64;
    let mut batch = Deliveries::default();
    // The previous batch is held back so the very last row can say snapshot=last.
    let mut held: Option<(usize, Vec<Vec<Datum>>)> = None;
    let mut encoding = VecDeque::new();
    let mut first = true;
    let mut states: Vec<TableState> = Vec::new();
    let batch_rows = (cfg.snapshot_fetch_size.max(1)) as usize;
    let read = |first: bool, last: bool| ReadEvents {
        name: cfg.name.clone(),
        db: emitter.db.clone(),
        ts_us,
        lsn,
        first,
        last,
    };

    for (schema, table) in tables {
        let ts = emitter
            .table_state(pg::table_schema(&client, schema, table).await?)
            .await?;
        states.push(ts);
        let idx = states.len() - 1;
        let (tx, mut rx) = mpsc::channel(BATCHES_IN_FLIGHT);
        let reader = tokio::spawn(read_table(
            client,
            states[idx].schema.clone(),
            cfg.decimal_handling,
            batch_rows,
            tx,
        ));
        while let Some(rows) = rx.recv().await {
            if let Some((t, prev)) = held.replace((idx, rows)) {
                encoding.push_back(read(first, false).spawn(emitter, &states[t], t, prev));
                first = false;
            }
            while encoding.len() > ENCODERS_IN_FLIGHT {
                let encoded = encoding.pop_front().expect("one encoding");
                total += send(emitter, &states, encoded, &mut batch, tracker).await?;
            }
        }
        client = reader
            .await
            .map_err(|e| Error::Postgres(format!("snapshot reader of {schema}.{table}: {e}")))??;
    }
    if let Some((t, last)) = held.take() {
        encoding.push_back(read(first, true).spawn(emitter, &states[t], t, last));
    }
    while let Some(encoded) = encoding.pop_front() {
        total += send(emitter, &states, encoded, &mut batch, tracker).await?;
    }
    tracker
        .push(Pending {
            deliveries: batch,
            ack: Ack::None,
        })
        .await?;
    client.batch_execute("COMMIT").await?;
    tracing::info!(rows = total, tables = tables.len(), "snapshot read");
    Ok(total)
}

/// Streams one table through COPY, parses its rows and sends them on in
/// batches of `batch_rows`; hands the client back for the next table. Stops
/// early (without error) when the encoder is gone: its error is the one
/// reported.
async fn read_table(
    client: Client,
    schema: Arc<TableSchema>,
    decimals: DecimalHandling,
    batch_rows: usize,
    tx: mpsc::Sender<Vec<Vec<Datum>>>,
) -> Result<Client> {
    let cols = schema
        .columns
        .iter()
        .map(|c| quote_ident(&c.name))
        .collect::<Vec<_>>()
        .join(", ");
    let copy = client
        .copy_out(&format!(
            "COPY (SELECT {cols} FROM {}.{}) TO STDOUT",
            quote_ident(&schema.schema),
            quote_ident(&schema.table)
        ))
        .await?;
    futures::pin_mut!(copy);
    let mut rows = Vec::with_capacity(batch_rows);
    // The server sends a row per message; a row split over messages waits here.
    let mut carry: Vec<u8> = Vec::new();
    while let Some(chunk) = copy.next().await {
        let chunk = chunk?;
        let mut data: &[u8] = &chunk;
        let joined;
        if !carry.is_empty() {
            carry.extend_from_slice(data);
            joined = std::mem::take(&mut carry);
            data = &joined;
        }
        while let Some(end) = data.iter().position(|b| *b == b'\n') {
            let line = std::str::from_utf8(&data[..end]).map_err(|e| Error::Value {
                column: schema.qualified(),
                value: String::new(),
                reason: format!("COPY row is not UTF-8: {e}"),
            })?;
            rows.push(parse_row(&schema, line, decimals)?);
            data = &data[end + 1..];
        }
        carry.extend_from_slice(data);
        if rows.len() >= batch_rows
            && tx
                .send(std::mem::replace(&mut rows, Vec::with_capacity(batch_rows)))
                .await
                .is_err()
        {
            return Ok(client);
        }
    }
    if !carry.is_empty() {
        return Err(Error::Postgres(format!(
            "COPY of {} ended inside a row",
            schema.qualified()
        )));
    }
    if !rows.is_empty() {
        let _ = tx.send(rows).await;
    }
    Ok(client)
}

fn parse_row(schema: &TableSchema, line: &str, decimals: DecimalHandling) -> Result<Vec<Datum>> {
    let mut datums = Vec::with_capacity(schema.columns.len());
    let mut fields = line.split('\t');
    for c in &schema.columns {
        let field = fields
            .next()
            .ok_or_else(|| short_row(schema, datums.len()))?;
        datums.push(match copy_field(field) {
            None => Datum::Null,
            Some(text) => parse(&c.name, &c.ty, &text, decimals)?,
        });
    }
    if fields.next().is_some() {
        return Err(Error::Postgres(format!(
            "COPY of {} gave more fields than its {} columns",
            schema.qualified(),
            schema.columns.len()
        )));
    }
    Ok(datums)
}

fn short_row(schema: &TableSchema, got: usize) -> Error {
    Error::Postgres(format!(
        "COPY of {} gave {got} fields for {} columns",
        schema.qualified(),
        schema.columns.len()
    ))
}

/// A field of PostgreSQL's COPY text format: `\N` is NULL, backslash escapes
/// are undone (a field without a backslash is borrowed).
fn copy_field(field: &str) -> Option<Cow<'_, str>> {
    if field == "\\N" {
        None
    } else if field.contains('\\') {
        Some(Cow::Owned(unescape(field)))
    } else {
        Some(Cow::Borrowed(field))
    }
}

/// How one batch of snapshot rows is encoded as `r` events: its source block, and whether
/// it holds the snapshot's first or last row.
struct ReadEvents {
    name: String,
    db: String,
    ts_us: i64,
    lsn: u64,
    first: bool,
    last: bool,
}

/// A batch being encoded on the blocking pool: the table's index, its row count and its
/// events' keys and values, in row order (none for a table whose rows are not events).
type Encoding = JoinHandle<Result<(usize, u64, Vec<(Option<Vec<u8>>, Vec<u8>)>)>>;

impl ReadEvents {
    /// Encodes `rows` (of the table `ts`, index `t`) on the blocking pool, so batches are
    /// encoded on both cores while this task sends the ones before.
    fn spawn(
        self,
        emitter: &Emitter,
        ts: &TableState,
        t: usize,
        rows: Vec<Vec<Datum>>,
    ) -> Encoding {
        let encoder = ts.published().then(|| emitter.encoder(ts));
        tokio::task::spawn_blocking(move || {
            let n = rows.len();
            let Some(encoder) = encoder else {
                // The outbox or the signal table: its rows are not change events.
                return Ok((t, n as u64, Vec::new()));
            };
            let sequence = format!("[null,\"{}\"]", self.lsn);
            let events = rows
                .iter()
                .enumerate()
                .map(|(i, row)| {
                    let marker = if self.last && i + 1 == n {
                        SnapshotMarker::Last
                    } else if self.first && i == 0 {
                        SnapshotMarker::First
                    } else {
                        SnapshotMarker::True
                    };
                    let source = Source {
                        name: &self.name,
                        db: &self.db,
                        ts_us: self.ts_us,
                        snapshot: marker,
                        tx_id: None,
                        lsn: Some(self.lsn),
                        sequence: Some(sequence.clone()),
                        transaction: None,
                    };
                    encoder.encode(Op::Read, None, Some(row), source)
                })
                .collect::<Result<Vec<_>>>()?;
            Ok((t, n as u64, events))
        })
    }
}

/// Sends an encoded batch, handing its deliveries to the tracker every [`DELIVERY_BATCH`];
/// returns how many rows the batch had.
async fn send(
    emitter: &Emitter,
    states: &[TableState],
    encoding: Encoding,
    batch: &mut Deliveries,
    tracker: &Tracker,
) -> Result<u64> {
    let (t, rows, events) = encoding
        .await
        .map_err(|e| Error::Postgres(format!("snapshot encoder: {e}")))??;
    for (key, value) in events {
        emitter
            .send_encoded(&states[t], Op::Read, key.as_deref(), &value, batch)
            .await?;
        if batch.len() >= DELIVERY_BATCH {
            let full = std::mem::take(batch);
            tracker
                .push(Pending {
                    deliveries: full,
                    ack: Ack::None,
                })
                .await?;
        }
    }
    Ok(rows)
}

fn unescape(field: &str) -> String {
    let b = field.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] != b'\\' || i + 1 == b.len() {
            out.push(b[i]);
            i += 1;
            continue;
        }
        let c = b[i + 1];
        i += 2;
        match c {
            b'b' => out.push(8),
            b'f' => out.push(12),
            b'n' => out.push(b'\n'),
            b'r' => out.push(b'\r'),
            b't' => out.push(b'\t'),
            b'v' => out.push(11),
            b'0'..=b'7' => {
                let mut v = u32::from(c - b'0');
                for _ in 0..2 {
                    match b.get(i) {
                        Some(d @ b'0'..=b'7') => {
                            v = v * 8 + u32::from(d - b'0');
                            i += 1;
                        }
                        _ => break,
                    }
                }
                out.push(v as u8);
            }
            b'x' if b.get(i).is_some_and(u8::is_ascii_hexdigit) => {
                let mut v = 0u32;
                for _ in 0..2 {
                    match b.get(i).and_then(|d| (*d as char).to_digit(16)) {
                        Some(d) => {
                            v = v * 16 + d;
                            i += 1;
                        }
                        None => break,
                    }
                }
                out.push(v as u8);
            }
            other => out.push(other),
        }
    }
    String::from_utf8(out).unwrap_or_else(|e| String::from_utf8_lossy(e.as_bytes()).into_owned())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn fields(line: &str) -> Vec<Option<String>> {
        line.split('\t')
            .map(|f| copy_field(f).map(Cow::into_owned))
            .collect()
    }

    #[test]
    fn copy_text_rows_are_split_and_unescaped() {
        assert_eq!(
            fields("1\t\\N\tplain"),
            [Some("1".into()), None, Some("plain".into())]
        );
        assert_eq!(
            fields("a\\tb\\nc\\\\d\t\\x41\\101\\r\t"),
            [
                Some("a\tb\nc\\d".into()),
                Some("AA\r".into()),
                Some("".into())
            ]
        );
        // bytea's hex output and an array with a backslash, as COPY escapes them.
        assert_eq!(
            fields("\\\\x0aff\t{\"a\\\\\\\\b\"}"),
            [Some("\\x0aff".into()), Some("{\"a\\\\b\"}".into())]
        );
    }
}
