//! The initial snapshot: every row of the published tables, read in one
//! REPEATABLE READ transaction that imports the replication slot's exported
//! snapshot, so that streaming continues exactly where the snapshot ends:
//! nothing missing, nothing twice.

use tokio_postgres::SimpleQueryMessage;

use crate::envelope::{Op, SnapshotMarker, Source};
use crate::error::Result;
use crate::offsets::{Ack, Pending, Tracker};
use crate::pg::{self, quote_ident};
use crate::stream::{Emitter, TableState};
use crate::value::{parse, Datum};

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
    let client = pg::connect(cfg).await?;
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
    let mut batch = Vec::new();
    // The previous row is held back so the very last one can say snapshot=last.
    let mut held: Option<(usize, Vec<Datum>)> = None;
    let mut states: Vec<TableState> = Vec::new();

    for (schema, table) in tables {
        let ts = emitter
            .table_state(pg::table_schema(&client, schema, table).await?)
            .await?;
        states.push(ts);
        let idx = states.len() - 1;
        let cols = states[idx]
            .schema
            .columns
            .iter()
            .map(|c| quote_ident(&c.name))
            .collect::<Vec<_>>()
            .join(", ");
        client
            .batch_execute(&format!(
                "DECLARE connector_snapshot NO SCROLL CURSOR FOR SELECT {cols} FROM {}.{}",
                quote_ident(schema),
                quote_ident(table)
            ))
            .await?;
        let fetch = format!(
            "FETCH {} FROM connector_snapshot",
            cfg.snapshot_fetch_size.max(1)
        );
        loop {
            let msgs = client.simple_query(&fetch).await?;
            let mut n = 0;
            for m in msgs {
                let SimpleQueryMessage::Row(row) = m else {
                    continue;
                };
                n += 1;
                let columns = &states[idx].schema.columns;
                let mut datums = Vec::with_capacity(columns.len());
                for (i, c) in columns.iter().enumerate() {
                    datums.push(match row.get(i) {
                        None => Datum::Null,
                        Some(text) => parse(&c.name, &c.ty, text, cfg.decimal_handling)?,
                    });
                }
                if let Some((t, prev)) = held.replace((idx, datums)) {
                    let marker = if total == 0 {
                        SnapshotMarker::First
                    } else {
                        SnapshotMarker::True
                    };
                    emit(emitter, &states[t], &prev, ts_us, lsn, marker, &mut batch).await?;
                    total += 1;
                }
            }
            if batch.len() >= 5000 {
                tracker
                    .push(Pending {
                        deliveries: std::mem::take(&mut batch),
                        ack: Ack::None,
                    })
                    .await?;
            }
            if n == 0 {
                break;
            }
        }
        client.batch_execute("CLOSE connector_snapshot").await?;
    }
    if let Some((t, last)) = held.take() {
        emit(
            emitter,
            &states[t],
            &last,
            ts_us,
            lsn,
            SnapshotMarker::Last,
            &mut batch,
        )
        .await?;
        total += 1;
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

async fn emit(
    emitter: &Emitter,
    ts: &TableState,
    row: &[Datum],
    ts_us: i64,
    lsn: u64,
    marker: SnapshotMarker,
    out: &mut Vec<rdkafka::producer::DeliveryFuture>,
) -> Result<()> {
    let source = Source {
        name: &emitter.cfg.name,
        db: &emitter.db,
        ts_us,
        snapshot: marker,
        tx_id: None,
        lsn: Some(lsn),
        sequence: Some(format!("[null,\"{lsn}\"]")),
        transaction: None,
    };
    emitter
        .emit(ts, Op::Read, None, Some(row), source, out)
        .await
}
