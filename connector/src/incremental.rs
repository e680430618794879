//! Incremental snapshots, as Debezium's (DBLog's watermarking): a row
//! `('<id>', 'execute-snapshot', '{"data-collections": ["public.t"],
//! "type": "incremental"}')` inserted into the `signal_table` makes the
//! running connector read the listed tables in primary-key chunks while it
//! keeps streaming, without locks.
//!
//! Each chunk is read between two watermarks, rows the connector inserts
//! into the signal table itself (`<uuid>-open` / `<uuid>-close`, types
//! `snapshot-window-open` / `-close`): open watermark committed, chunk
//! selected, close watermark committed. The stream sees both in WAL order.
//! Between them (the window) a streamed change of a key in the chunk means
//! the chunk's copy of that row may be older than the change, so the row is
//! dropped from the chunk (the streamed event wins); at the close watermark
//! the rest of the chunk is emitted as `op: r` (`source.snapshot =
//! "incremental"`). Changes after the window are newer than what was
//! emitted. Changes before the window are older than the chunk's rows too,
//! with one exception: PostgreSQL writes a transaction's commit record to
//! the WAL before the transaction becomes visible to new snapshots, so a
//! writer whose commit precedes the open watermark in the WAL can still be
//! invisible to the chunk's SELECT (its backend not yet through
//! `ProcArrayEndTransaction`, e.g. descheduled on a busy machine). The chunk
//! therefore reads its own snapshot (`pg_current_snapshot()`, the same one the
//! SELECT uses) and a change streamed before the window by a transaction that
//! snapshot does not see drops the key as well. Either way the events of a
//! key never go back in time.
//!
//! Progress (tables left, the last key emitted, the key the table ended at
//! when its snapshot began) is part of the stored offset, acknowledged with
//! the transaction of the close watermark, so a restart resumes at the
//! chunk after the last one published.

use std::collections::HashSet;

use serde::{Deserialize, Serialize};
use tokio_postgres::{Client, SimpleQueryMessage};

use crate::config::Config;
use crate::envelope;
use crate::error::{Error, Result};
use crate::pg::{self, quote_ident, quote_qualified};
use crate::schema::TableSchema;
use crate::stream::{Emitter, TableState};
use crate::value::{parse, Datum};

/// The signal types the connector reads from the signal table.
pub const EXECUTE_SNAPSHOT: &str = "execute-snapshot";
pub const WINDOW_OPEN: &str = "snapshot-window-open";
pub const WINDOW_CLOSE: &str = "snapshot-window-close";

/// What is left of a running incremental snapshot (kept in the offset).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Progress {
    /// The signal that started it.
    pub signal_id: String,
    /// `schema.table` names still to read; the first is being read.
    pub tables: Vec<String>,
    /// Primary-key values (PostgreSQL's text) of the last row of the last
    /// chunk emitted; `None`: the table's first chunk is next.
    pub last_key: Option<Vec<String>>,
    /// The largest primary key when the table's snapshot began: rows
    /// inserted past it are streamed anyway, and the snapshot must end.
    pub max_key: Option<Vec<String>>,
}

/// A chunk read between two watermarks, waiting for them in the stream.
struct Window {
    id: String,
    table: String,
    opened: bool,
    /// Chunk rows in key order, with their JSON key.
    rows: Vec<(Vec<u8>, Vec<Datum>)>,
    /// Keys changed in the stream while the window was open, or before it
    /// by a transaction the chunk's snapshot does not see.
    changed: HashSet<Vec<u8>>,
    /// The keys of `changed` changed before the window (for the log).
    unseen: HashSet<Vec<u8>>,
    /// Row changes streamed before the window by transactions the chunk's
    /// snapshot does not see (for the log: how often the race happens).
    unseen_changes: usize,
    /// The snapshot the chunk was read with; `None`: the chunk was empty.
    snapshot: Option<Snapshot>,
    /// Primary-key text of the chunk's last row; `None`: the chunk was empty.
    last_key: Option<Vec<String>>,
    /// The table state the rows are emitted with.
    state: TableState,
}

/// The incremental snapshot machinery of one connector run.
pub struct Incremental {
    signal_table: String,
    chunk_size: u32,
    progress: Option<Progress>,
    window: Option<Window>,
    /// Progress changed since the last acknowledgement was queued.
    dirty: bool,
}

/// Rows the close watermark releases, with the table state to emit them by.
pub struct Released {
    pub state: TableState,
    pub rows: Vec<Vec<Datum>>,
}

impl Incremental {
    pub fn new(cfg: &Config, progress: Option<Progress>) -> Incremental {
        // The watermarks need the signal table: without one the snapshot cannot go on.
        let progress = progress.filter(|p| {
            let keep = cfg.signal_table().is_some();
            if !keep {
                tracing::warn!(signal = %p.signal_id, tables = ?p.tables,
                    "incremental snapshot abandoned: no signal_table configured any more");
            }
            keep
        });
        if let Some(p) = &progress {
            tracing::info!(signal = %p.signal_id, tables = ?p.tables, "resuming incremental snapshot");
        }
        Incremental {
            signal_table: cfg.signal_table.clone(),
            chunk_size: cfg.incremental_snapshot_chunk_size.max(1),
            progress,
            window: None,
            dirty: false,
        }
    }

    pub fn is_signal_table(&self, table: &TableSchema) -> bool {
        !self.signal_table.is_empty() && table.qualified() == self.signal_table
    }

    pub fn progress(&self) -> Option<&Progress> {
        self.progress.as_ref()
    }

    /// Whether progress changed since the last call (to be acknowledged
    /// with the current transaction).
    pub fn take_dirty(&mut self) -> bool {
        std::mem::take(&mut self.dirty)
    }

    /// Forgets a chunk in flight (the stream reconnected: its watermarks may
    /// or may not come again); the next chunk is read from the last one
    /// emitted.
    pub fn reset_window(&mut self) {
        self.window = None;
    }

    /// A snapshot is running and no chunk is in flight.
    pub fn wants_chunk(&self) -> bool {
        self.progress.is_some() && self.window.is_none()
    }

    /// An `execute-snapshot` signal (the row's `id` and `data`). Tables the
    /// publication does not cover, or without a primary key, are skipped
    /// with a warning; a signal during a running snapshot adds its tables.
    pub async fn on_signal(
        &mut self,
        client: &Client,
        cfg: &Config,
        id: &str,
        data: Option<&str>,
    ) -> Result<()> {
        let data: serde_json::Value = match data.map(serde_json::from_str).transpose() {
            Ok(Some(d)) => d,
            Ok(None) | Err(_) => {
                tracing::warn!(
                    signal = id,
                    ?data,
                    "execute-snapshot signal without valid JSON data: ignored"
                );
                return Ok(());
            }
        };
        let kind = data["type"].as_str().unwrap_or("incremental");
        if !kind.eq_ignore_ascii_case("incremental") {
            tracing::warn!(
                signal = id,
                kind,
                "only incremental snapshots are supported: signal ignored"
            );
            return Ok(());
        }
        let published: HashSet<String> = pg::published_tables(client, cfg)
            .await?
            .into_iter()
            .map(|(s, t)| format!("{s}.{t}"))
            .collect();
        let mut tables = Vec::new();
        for t in data["data-collections"].as_array().into_iter().flatten() {
            let Some(t) = t.as_str() else { continue };
            let name = if t.contains('.') {
                t.to_string()
            } else {
                format!("public.{t}")
            };
            if !published.contains(&name) || name == self.signal_table {
                tracing::warn!(signal = id, table = %name, "not a captured table: not snapshotted");
                continue;
            }
            tables.push(name);
        }
        if tables.is_empty() {
            tracing::warn!(signal = id, "execute-snapshot names no captured table");
            return Ok(());
        }
        tracing::info!(signal = id, ?tables, "incremental snapshot requested");
        match &mut self.progress {
            Some(p) => {
                for t in tables {
                    if !p.tables.contains(&t) {
                        p.tables.push(t);
                    }
                }
            }
            None => {
                self.progress = Some(Progress {
                    signal_id: id.to_string(),
                    tables,
                    last_key: None,
                    max_key: None,
                })
            }
        }
        self.dirty = true;
        Ok(())
    }

    /// Reads the next chunk between two watermarks (or moves past a table
    /// that is empty or done).
    pub async fn read_chunk(&mut self, client: &Client, emitter: &Emitter) -> Result<()> {
        let Some(p) = self.progress.as_mut() else {
            return Ok(());
        };
        let Some(table) = p.tables.first().cloned() else {
            self.finish_table();
            return Ok(());
        };
        let (schema_name, table_name) = table.split_once('.').unwrap_or(("public", &table));
        let schema = match pg::table_schema(client, schema_name, table_name).await {
            Ok(s) => s,
            Err(Error::UnknownTable(_)) => {
                tracing::warn!(%table, "table gone: incremental snapshot skips it");
                self.finish_table();
                return Ok(());
            }
            Err(e) => return Err(e),
        };
        if !schema.has_key() {
            tracing::warn!(%table, "no primary key: an incremental snapshot needs one, table skipped");
            self.finish_table();
            return Ok(());
        }
        let keys: Vec<String> = schema
            .key_columns()
            .map(|(_, c)| quote_ident(&c.name))
            .collect();
        let key_list = keys.join(", ");
        let from = quote_qualified(&table);
        if p.max_key.is_none() {
            let desc = keys
                .iter()
                .map(|k| format!("{k} DESC"))
                .collect::<Vec<_>>()
                .join(", ");
            let sql = format!("SELECT {key_list} FROM {from} ORDER BY {desc} LIMIT 1");
            match first_row(client, &sql, keys.len()).await? {
                Some(max) => p.max_key = Some(max),
                None => {
                    tracing::info!(%table, "incremental snapshot: table empty");
                    self.finish_table();
                    return Ok(());
                }
            }
        }
        let state = emitter.table_state(schema).await?;
        let columns = state
            .schema
            .columns
            .iter()
            .map(|c| quote_ident(&c.name))
            .collect::<Vec<_>>()
            .join(", ");
        let mut filter = vec![format!(
            "({key_list}) <= ({})",
            literals(p.max_key.as_deref().unwrap_or_default())
        )];
        if let Some(last) = &p.last_key {
            filter.push(format!("({key_list}) > ({})", literals(last)));
        }
        let id = uuid::Uuid::new_v4().to_string();
        let signal = quote_qualified(&self.signal_table);
        let watermark = |kind: &str, suffix: &str| {
            format!(
                "INSERT INTO {signal} (id, type, data) VALUES ('{id}-{suffix}', '{kind}', NULL)"
            )
        };
        client.simple_query(&watermark(WINDOW_OPEN, "open")).await?;
        // One statement, one snapshot: `pg_current_snapshot()` is the one the
        // rows are read with (the last column, the same on every row).
        let rows = client
            .simple_query(&format!(
                "SELECT {columns}, pg_current_snapshot()::text FROM {from} WHERE {} \
                 ORDER BY {key_list} LIMIT {}",
                filter.join(" AND "),
                self.chunk_size
            ))
            .await?;
        client
            .simple_query(&watermark(WINDOW_CLOSE, "close"))
            .await?;

        let decimals = emitter.cfg.decimal_handling;
        let key_idx: Vec<usize> = state.schema.key_columns().map(|(i, _)| i).collect();
        let mut chunk = Vec::new();
        let mut last_key = None;
        let mut snapshot = None;
        for m in rows {
            let SimpleQueryMessage::Row(row) = m else {
                continue;
            };
            if snapshot.is_none() {
                let text = row.get(state.schema.columns.len()).unwrap_or_default();
                snapshot = Some(Snapshot::parse(text).ok_or_else(|| {
                    Error::Replication(format!("unreadable pg_current_snapshot() {text:?}"))
                })?);
            }
            let mut datums = Vec::with_capacity(state.schema.columns.len());
            for (i, c) in state.schema.columns.iter().enumerate() {
                datums.push(match row.get(i) {
                    None => Datum::Null,
                    Some(text) => parse(&c.name, &c.ty, text, decimals)?,
                });
            }
            last_key = Some(
                key_idx
                    .iter()
                    .map(|i| row.get(*i).unwrap_or_default().to_string())
                    .collect(),
            );
            let key = envelope::json_key(&state.schema, &datums).expect("the table has a key");
            chunk.push((key, datums));
        }
        tracing::debug!(%table, rows = chunk.len(), window = %id, ?last_key, "chunk read");
        self.window = Some(Window {
            id,
            table,
            opened: false,
            rows: chunk,
            changed: HashSet::new(),
            unseen: HashSet::new(),
            unseen_changes: 0,
            snapshot,
            last_key,
            state,
        });
        Ok(())
    }

    /// A row of the signal table written by a watermark: opens the window,
    /// or closes it and returns the chunk rows to emit. Watermarks of other
    /// windows (replayed after a restart) are ignored.
    pub fn on_watermark(&mut self, id: &str, kind: &str) -> Option<Released> {
        let w = self.window.as_mut()?;
        match kind {
            WINDOW_OPEN if id == format!("{}-open", w.id) => {
                w.opened = true;
                None
            }
            WINDOW_CLOSE if id == format!("{}-close", w.id) && w.opened => {
                let w = self.window.take()?;
                let full = w.rows.len() as u64 >= self.chunk_size as u64;
                let dropped = w.rows.iter().filter(|(k, _)| w.changed.contains(k)).count();
                let unseen = w.rows.iter().filter(|(k, _)| w.unseen.contains(k)).count();
                let rows: Vec<Vec<Datum>> = w
                    .rows
                    .into_iter()
                    .filter(|(k, _)| !w.changed.contains(k))
                    .map(|(_, r)| r)
                    .collect();
                if unseen > 0 {
                    tracing::info!(table = %w.table, window = %w.id, keys = unseen,
                        "chunk keys dropped: changed before the window by a transaction \
                         the chunk's snapshot did not see yet");
                }
                tracing::debug!(table = %w.table, emitted = rows.len(), dropped,
                    unseen_changes = w.unseen_changes, "chunk window closed");
                match (&mut self.progress, w.last_key) {
                    (Some(p), Some(last)) if full => {
                        p.last_key = Some(last);
                        self.dirty = true;
                    }
                    // A short or empty chunk: the table is done.
                    _ => self.finish_table(),
                }
                Some(Released {
                    state: w.state,
                    rows,
                })
            }
            _ => None,
        }
    }

    /// A streamed change of `row` in `table` by transaction `xid`: while a
    /// window is open, or before it when the chunk's snapshot does not see
    /// `xid`, the chunk's copy of that key is dropped (the streamed event is
    /// newer).
    pub fn on_change(&mut self, table: &TableSchema, row: &[Datum], xid: u32) {
        let Some(w) = self.window.as_mut() else {
            return;
        };
        if w.table != table.qualified() {
            return;
        }
        let unseen = !w.opened && w.snapshot.as_ref().is_some_and(|s| !s.sees(xid));
        if !w.opened && !unseen {
            return; // older than the chunk's rows
        }
        if let Some(key) = envelope::json_key(table, row) {
            if unseen {
                w.unseen_changes += 1;
                w.unseen.insert(key.clone());
            }
            w.changed.insert(key);
        }
    }

    fn finish_table(&mut self) {
        let Some(p) = self.progress.as_mut() else {
            return;
        };
        if !p.tables.is_empty() {
            let done = p.tables.remove(0);
            tracing::info!(table = %done, "incremental snapshot of table done");
        }
        p.last_key = None;
        p.max_key = None;
        if p.tables.is_empty() {
            tracing::info!(signal = %p.signal_id, "incremental snapshot done");
            self.progress = None;
        }
        self.dirty = true;
    }
}

/// A PostgreSQL snapshot (`pg_current_snapshot()`, `xmin:xmax:xip,...`):
/// which transactions its reads see.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Snapshot {
    xmin: u64,
    xmax: u64,
    xip: HashSet<u64>,
}

impl Snapshot {
    fn parse(text: &str) -> Option<Snapshot> {
        let mut parts = text.splitn(3, ':');
        let xmin = parts.next()?.parse().ok()?;
        let xmax = parts.next()?.parse().ok()?;
        let xip = match parts.next()? {
            "" => HashSet::new(),
            list => list
                .split(',')
                .map(|x| x.parse().ok())
                .collect::<Option<_>>()?,
        };
        Some(Snapshot { xmin, xmax, xip })
    }

    /// Whether the snapshot sees the (committed) transaction `xid`, the
    /// 32-bit id the stream carries: widened to the 64-bit id nearest `xmax`.
    fn sees(&self, xid: u32) -> bool {
        let d = i64::from(xid.wrapping_sub(self.xmax as u32) as i32);
        let full = (self.xmax as i64).saturating_add(d).max(0) as u64;
        full < self.xmin || (full < self.xmax && !self.xip.contains(&full))
    }
}

/// SQL literals for key values (PostgreSQL's own text output, so the
/// comparison casts them back exactly).
fn literals(values: &[String]) -> String {
    values
        .iter()
        .map(|v| format!("'{}'", v.replace('\'', "''")))
        .collect::<Vec<_>>()
        .join(", ")
}

async fn first_row(client: &Client, sql: &str, n: usize) -> Result<Option<Vec<String>>> {
    for m in client.simple_query(sql).await? {
        if let SimpleQueryMessage::Row(row) = m {
            return Ok(Some(
                (0..n)
                    .map(|i| row.get(i).unwrap_or_default().to_string())
                    .collect(),
            ));
        }
    }
    Ok(None)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::schema::{Column, PgType};

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
                    name: "v".into(),
                    ty: PgType::Int32,
                    key: false,
                },
            ],
        }
    }

    fn with_window(rows: &[(i32, i32)], chunk_size: u32) -> Incremental {
        let schema = table();
        let rows = rows
            .iter()
            .map(|(id, v)| {
                let r = vec![Datum::Int(*id), Datum::Int(*v)];
                (envelope::json_key(&schema, &r).unwrap(), r)
            })
            .collect::<Vec<_>>();
        Incremental {
            signal_table: "public.signal".into(),
            chunk_size,
            progress: Some(Progress {
                signal_id: "s".into(),
                tables: vec!["public.t".into()],
                last_key: None,
                max_key: Some(vec!["9".into()]),
            }),
            window: Some(Window {
                id: "w".into(),
                table: "public.t".into(),
                opened: false,
                rows,
                changed: HashSet::new(),
                unseen: HashSet::new(),
                unseen_changes: 0,
                // Sees transactions below 100 except 95; not 100 and later.
                snapshot: Snapshot::parse("90:100:95"),
                last_key: Some(vec!["3".into()]),
                state: TableState::for_tests(schema),
            }),
            dirty: false,
        }
    }

    #[test]
    fn a_key_changed_inside_the_window_is_dropped_from_the_chunk() {
        let t = table();
        let mut inc = with_window(&[(1, 10), (2, 20), (3, 30)], 3);
        // Before the open watermark by a transaction the chunk's snapshot
        // sees: the chunk was read later, it is newer.
        inc.on_change(&t, &[Datum::Int(1), Datum::Int(11)], 94);
        assert!(
            inc.on_watermark("w-close", WINDOW_CLOSE).is_none(),
            "not open yet"
        );
        assert!(inc.on_watermark("x-open", WINDOW_OPEN).is_none());
        inc.on_watermark("w-open", WINDOW_OPEN);
        inc.on_change(&t, &[Datum::Int(2), Datum::Int(21)], 101);
        let released = inc.on_watermark("w-close", WINDOW_CLOSE).unwrap();
        let ids: Vec<&Datum> = released.rows.iter().map(|r| &r[0]).collect();
        assert_eq!(ids, [&Datum::Int(1), &Datum::Int(3)]);
        // A full chunk: the next one starts after its last key.
        assert_eq!(inc.progress().unwrap().last_key, Some(vec!["3".into()]));
        assert!(inc.take_dirty() && inc.wants_chunk());
    }

    #[test]
    fn a_change_before_the_window_the_chunk_did_not_see_drops_the_key() {
        let t = table();
        let mut inc = with_window(&[(1, 10), (2, 20), (3, 30), (4, 40)], 4);
        // Committed before the open watermark in the WAL, yet still running
        // for the chunk's snapshot (in its xip, or at/after its xmax).
        inc.on_change(&t, &[Datum::Int(1), Datum::Int(11)], 95);
        inc.on_change(&t, &[Datum::Int(2), Datum::Int(21)], 100);
        // Seen by the snapshot: older than the chunk, the row stays.
        inc.on_change(&t, &[Datum::Int(3), Datum::Int(31)], 89);
        inc.on_change(&t, &[Datum::Int(4), Datum::Int(41)], 96);
        inc.on_watermark("w-open", WINDOW_OPEN);
        let released = inc.on_watermark("w-close", WINDOW_CLOSE).unwrap();
        let ids: Vec<&Datum> = released.rows.iter().map(|r| &r[0]).collect();
        assert_eq!(ids, [&Datum::Int(3), &Datum::Int(4)]);
    }

    #[test]
    fn a_snapshot_sees_the_transactions_committed_before_it() {
        let s = Snapshot::parse("10:20:12,15").unwrap();
        assert_eq!(s.xip.len(), 2);
        assert!(s.sees(9) && s.sees(11) && s.sees(19));
        assert!(!s.sees(12) && !s.sees(15) && !s.sees(20) && !s.sees(25));
        assert_eq!(Snapshot::parse("7:7:").unwrap().xip.len(), 0);
        assert!(Snapshot::parse("7:x:").is_none());
        // 64-bit ids past a wraparound: the stream's 32-bit id is widened
        // next to xmax.
        let epoch = 3u64 << 32;
        let s = Snapshot::parse(&format!("{}:{}:", epoch - 5, epoch + 5)).unwrap();
        assert!(s.sees(u32::MAX - 1) && s.sees(2));
        assert!(!s.sees(5) && !s.sees(9));
        assert!(s.sees(u32::MAX - 10), "before xmin");
    }

    #[test]
    fn a_short_chunk_finishes_the_table_and_the_snapshot() {
        let mut inc = with_window(&[(1, 10)], 3);
        inc.on_watermark("w-open", WINDOW_OPEN);
        let released = inc.on_watermark("w-close", WINDOW_CLOSE).unwrap();
        assert_eq!(released.rows.len(), 1);
        assert!(inc.progress().is_none());
        assert!(!inc.wants_chunk());
    }

    #[test]
    fn key_literals_are_quoted() {
        assert_eq!(literals(&["1".into(), "o'k".into()]), "'1', 'o''k'");
    }
}
