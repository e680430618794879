//! Read models in MySQL (MariaDB locally), with the same semantics as the Redis store.
//!
//! # Layout
//!
//! A namespace (e.g. `iot:mandates:g2`) becomes a table prefix (`iot_mandates_g2`): lowercased,
//! every character outside `[a-z0-9_]` replaced by `_`, and names longer than 48 characters cut
//! and suffixed with a hash of the full namespace, so `<prefix>_documents` stays within MySQL's
//! 64-character identifier limit. Namespaces that differ only in punctuation or case
//! (`iot:mandates`, `iot_mandates`, `IOT-mandates`) therefore share tables: name read models
//! apart in letters and digits, as `<service>:<model>:g<n>` does.
//!
//! - `<prefix>_documents`: one row per document (`doc_key`, `document` JSON, `updated_at` = when
//!   its content last changed, for operators).
//! - `<prefix>_offsets`: per `(topic, partition_id)` the offset applied last.
//! - `<prefix>_sequences`: per document key the highest per-key sequence applied (kept after
//!   a delete, so a re-sent older event cannot bring the document back).
//! - `projector_generations`: shared by every namespace in the database: per read model the
//!   generation reads are served from.
//!
//! Keys and topics use `utf8mb4_bin`: Redis keys are exact, and MySQL's default collations
//! would merge `A` with `a` (and `e` with `é`) into one document.
//!
//! # Atomicity
//!
//! A batch is one InnoDB transaction (READ COMMITTED) that first locks the partition's offset
//! row (`SELECT ... FOR UPDATE`) and checks it is the offset the writer expects, applies only
//! the changes above that offset (and above their key's sequence) and then records the
//! batch's last offset. The lock serialises two writers of one partition (an old owner finishing
//! after a rebalance and the new one); the transaction makes documents and offset move together,
//! so a crash at any point either applied the whole batch or nothing of it, and redelivery of
//! anything at or below the offset changes nothing.
//!
//! # Errors
//!
//! SQLSTATE classes 22 (data) and 23 (constraint) are [`Error::Rejected`]: the change can never
//! apply and the runtime dead-letters its event; keys over [`MAX_KEY_CHARS`] characters and
//! documents over [`MAX_DOCUMENT_BYTES`] are refused before any SQL runs. Every other database
//! error is an [`Error::Store`], which the runtime retries with backoff forever: a server that
//! is down or restarting pauses the projector, which resumes once it is back. The
//! pool hands out only connections that answer a ping and gives up acquiring one after
//! [`ACQUIRE_TIMEOUT`], so an outage turns into errors (and retries) instead of a hang.

use std::borrow::Cow;
use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;
use std::time::Duration;

use serde_json::Value;
use sqlx::mysql::{MySqlPool, MySqlPoolOptions};
use sqlx::{Executor, MySql, MySqlConnection, QueryBuilder};

use crate::error::{Error, Result};
use crate::projection::Change;
use crate::store::{PartitionBatch, Store, Stored, Write};

/// How long a call waits for a connection before failing with a retryable error.
pub const ACQUIRE_TIMEOUT: Duration = Duration::from_secs(3);

/// Rows per multi-row statement. Batches hold thousands of changes: one statement per change
/// would make the write round-trip bound; 512 rows keep a statement far below
/// `max_allowed_packet` for documents of a few hundred bytes.
const CHUNK_ROWS: usize = 512;

/// The longest document key: `doc_key` is a `VARCHAR(255)`.
pub const MAX_KEY_CHARS: usize = 255;

/// The largest document, far below `max_allowed_packet` (16 MiB in MariaDB, 64 MiB in MySQL).
pub const MAX_DOCUMENT_BYTES: usize = 4 << 20;

/// The most document bytes one multi-row statement carries before padding (which repeats its
/// smallest row, so at most doubles it): below MariaDB's default 16 MiB `max_allowed_packet`
/// however large the documents are.
const CHUNK_BYTES: usize = 4 << 20;

/// The longest table prefix: `<prefix>_documents` must fit MySQL's 64-character identifiers.
const MAX_PREFIX_LEN: usize = 48;

/// Ends the multi-row document insert. `VALUES()` rather than MySQL 8's row alias: MariaDB
/// only knows `VALUES()`, and MySQL 8.4 still accepts it (with a deprecation note).
const UPSERT_TAIL: &str = " ON DUPLICATE KEY UPDATE document = VALUES(document)";

/// SQLSTATE of "table doesn't exist": the namespace was cleared.
const NO_SUCH_TABLE: &str = "42S02";

#[derive(Clone)]
pub struct MysqlStore {
    pool: MySqlPool,
    sql: Arc<Statements>,
}

/// The statements of one namespace, built once: table names cannot be bound as parameters.
struct Statements {
    create_documents: String,
    create_offsets: String,
    create_sequences: String,
    lock_offset: String,
    insert_offset: String,
    update_offset: String,
    select_offset: String,
    select_document: String,
    select_documents: String,
    select_sequences: String,
    upsert_sequences: String,
    insert_documents: String,
    delete_documents: String,
    drop_tables: String,
}

impl Statements {
    fn new(prefix: &str) -> Self {
        let documents = format!("`{prefix}_documents`");
        let offsets = format!("`{prefix}_offsets`");
        let sequences = format!("`{prefix}_sequences`");
        Self {
            create_documents: format!(
                "CREATE TABLE IF NOT EXISTS {documents} (
                   doc_key VARCHAR(255) CHARACTER SET utf8mb4 COLLATE utf8mb4_bin NOT NULL PRIMARY KEY,
                   document JSON NOT NULL,
                   updated_at DATETIME(6) NOT NULL DEFAULT CURRENT_TIMESTAMP(6) ON UPDATE CURRENT_TIMESTAMP(6)
                 ) ENGINE=InnoDB DEFAULT CHARSET=utf8mb4"
            ),
            create_offsets: format!(
                "CREATE TABLE IF NOT EXISTS {offsets} (
                   topic VARCHAR(255) CHARACTER SET utf8mb4 COLLATE utf8mb4_bin NOT NULL,
                   partition_id INT NOT NULL,
                   applied_offset BIGINT NOT NULL,
                   PRIMARY KEY (topic, partition_id)
                 ) ENGINE=InnoDB DEFAULT CHARSET=utf8mb4"
            ),
            create_sequences: format!(
                "CREATE TABLE IF NOT EXISTS {sequences} (
                   doc_key VARCHAR(255) CHARACTER SET utf8mb4 COLLATE utf8mb4_bin NOT NULL PRIMARY KEY,
                   seq BIGINT NOT NULL
                 ) ENGINE=InnoDB DEFAULT CHARSET=utf8mb4"
            ),
            lock_offset: format!(
                "SELECT applied_offset FROM {offsets} WHERE topic = ? AND partition_id = ? FOR UPDATE"
            ),
            // A no-op update on a duplicate still takes the row's exclusive lock, where
            // INSERT IGNORE would take a shared one and let two writers deadlock upgrading it.
            insert_offset: format!(
                "INSERT INTO {offsets} (topic, partition_id, applied_offset) VALUES (?, ?, -1)
                 ON DUPLICATE KEY UPDATE applied_offset = applied_offset"
            ),
            update_offset: format!(
                "UPDATE {offsets} SET applied_offset = ? WHERE topic = ? AND partition_id = ?"
            ),
            select_offset: format!(
                "SELECT applied_offset FROM {offsets} WHERE topic = ? AND partition_id = ?"
            ),
            select_document: format!("SELECT document FROM {documents} WHERE doc_key = ?"),
            select_documents: format!("SELECT doc_key, document FROM {documents} WHERE doc_key IN "),
            select_sequences: format!("SELECT doc_key, seq FROM {sequences} WHERE doc_key IN "),
            upsert_sequences: format!("INSERT INTO {sequences} (doc_key, seq) "),
            insert_documents: format!("INSERT INTO {documents} (doc_key, document) "),
            delete_documents: format!("DELETE FROM {documents} WHERE doc_key IN "),
            drop_tables: format!("DROP TABLE IF EXISTS {offsets}, {sequences}, {documents}"),
        }
    }
}

/// The table prefix of `namespace`; see the module docs.
pub fn table_prefix(namespace: &str) -> String {
    let sanitized: String = namespace
        .chars()
        .map(|c| match c.to_ascii_lowercase() {
            c @ ('a'..='z' | '0'..='9' | '_') => c,
            _ => '_',
        })
        .collect();
    if sanitized.len() <= MAX_PREFIX_LEN {
        return sanitized;
    }
    // Cut names still need to differ when their namespaces do.
    let suffix = format!("_{:016x}", fnv1a(namespace.as_bytes()));
    let mut prefix = sanitized[..MAX_PREFIX_LEN - suffix.len()].to_owned();
    prefix.push_str(&suffix);
    prefix
}

/// FNV-1a: stable across Rust releases and platforms, unlike `DefaultHasher`, because a table
/// name must not change when the service is rebuilt.
fn fnv1a(bytes: &[u8]) -> u64 {
    bytes.iter().fold(0xcbf2_9ce4_8422_2325, |hash, &b| {
        (hash ^ u64::from(b)).wrapping_mul(0x0000_0100_0000_01b3)
    })
}

/// Statement sizes are rounded up to a power of two by repeating a row (harmless: the
/// same upsert or delete twice), so a connection sees at most a handful of distinct statements
/// and keeps them all prepared instead of preparing one per batch size.
fn padded_len(rows: usize) -> usize {
    rows.next_power_of_two().min(CHUNK_ROWS)
}

/// What a write found: the partition's offset recorded afterwards, or the offset it found
/// recorded when that was not the one the writer expected.
enum Outcome {
    Recorded(i64),
    Moved(Option<i64>),
}

/// Splits `rows` into statements of at most [`CHUNK_ROWS`] rows and [`CHUNK_BYTES`] bytes.
fn chunks<T>(rows: &[T], bytes: impl Fn(&T) -> usize) -> Vec<&[T]> {
    let mut chunks = Vec::new();
    let (mut start, mut size) = (0, 0);
    for (i, row) in rows.iter().enumerate() {
        let row_bytes = bytes(row);
        if i > start && (i - start == CHUNK_ROWS || size + row_bytes > CHUNK_BYTES) {
            chunks.push(&rows[start..i]);
            (start, size) = (i, 0);
        }
        size += row_bytes;
    }
    if start < rows.len() {
        chunks.push(&rows[start..]);
    }
    chunks
}

/// `(?, ?, ...)` with the keys bound, padded to a power of two by repeating the last key.
fn push_key_list<'k>(
    query: &mut QueryBuilder<'k, MySql>,
    keys: impl ExactSizeIterator<Item = &'k str> + Clone,
) {
    let len = keys.len();
    let last = keys.clone().last();
    query.push("(");
    let mut list = query.separated(", ");
    for key in keys.chain(std::iter::repeat_n(
        last.unwrap_or_default(),
        padded_len(len) - len,
    )) {
        list.push_bind(key);
    }
    query.push(")");
}

/// A key as stored: only ever written from a `&str`, so valid UTF-8.
fn utf8(key: Vec<u8>) -> String {
    String::from_utf8(key).unwrap_or_else(|e| String::from_utf8_lossy(e.as_bytes()).into_owned())
}

/// The length of `document` as JSON text, counted without building the text.
fn json_len(document: &Value) -> usize {
    struct Count(usize);
    impl std::io::Write for Count {
        fn write(&mut self, bytes: &[u8]) -> std::io::Result<usize> {
            self.0 += bytes.len();
            Ok(bytes.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }
    let mut count = Count(0);
    // Writing a `Value` into a sink that never fails cannot fail.
    let _ = serde_json::to_writer(&mut count, document);
    count.0
}

fn is_missing_table(e: &sqlx::Error) -> bool {
    matches!(e, sqlx::Error::Database(db) if db.code().as_deref() == Some(NO_SUCH_TABLE))
}

impl MysqlStore {
    /// A store for the read model `namespace` (e.g. `iot:mandates:g2`); creates its tables
    /// if they do not exist.
    pub async fn connect(url: &str, namespace: &str) -> Result<Self> {
        let pool = MySqlPoolOptions::new()
            .max_connections(8)
            .acquire_timeout(ACQUIRE_TIMEOUT)
            // Every read in a write is a locking read, so READ COMMITTED loses nothing, and
            // it spares the gap lock REPEATABLE READ takes when a partition has no offset row
            // yet: with it, two first writers of a partition would deadlock inserting the row.
            .after_connect(|connection, _| {
                Box::pin(async move {
                    connection
                        .execute("SET SESSION TRANSACTION ISOLATION LEVEL READ COMMITTED")
                        .await?;
                    Ok(())
                })
            })
            .connect(url)
            .await?;
        let store = Self {
            pool,
            sql: Arc::new(Statements::new(&table_prefix(namespace))),
        };
        store.create_tables().await?;
        sqlx::query(
            "CREATE TABLE IF NOT EXISTS projector_generations (
               model VARCHAR(255) CHARACTER SET utf8mb4 COLLATE utf8mb4_bin NOT NULL PRIMARY KEY,
               generation INT UNSIGNED NOT NULL
             ) ENGINE=InnoDB DEFAULT CHARSET=utf8mb4",
        )
        .execute(&store.pool)
        .await?;
        Ok(store)
    }

    /// The pool, for tests and operators that need to look at the tables.
    pub fn pool(&self) -> &MySqlPool {
        &self.pool
    }

    async fn create_tables(&self) -> sqlx::Result<()> {
        sqlx::query(&self.sql.create_documents)
            .execute(&self.pool)
            .await?;
        sqlx::query(&self.sql.create_offsets)
            .execute(&self.pool)
            .await?;
        sqlx::query(&self.sql.create_sequences)
            .execute(&self.pool)
            .await?;
        Ok(())
    }

    async fn write_once(&self, batch: &PartitionBatch) -> sqlx::Result<Outcome> {
        let sql = &self.sql;
        let mut tx = self.pool.begin().await?;
        let recorded = match self.locked_offset(&mut tx, batch).await? {
            Some(recorded) => recorded,
            // First write of this partition: create the row so there is something to lock
            // (-1 = nothing applied, as in Redis), then lock it; another writer may have
            // created it meanwhile.
            None => {
                sqlx::query(&sql.insert_offset)
                    .bind(&batch.topic)
                    .bind(batch.partition)
                    .execute(&mut *tx)
                    .await?;
                self.locked_offset(&mut tx, batch).await?.unwrap_or(-1)
            }
        };
        let found = (recorded >= 0).then_some(recorded);
        if found != batch.expected_offset {
            return Ok(Outcome::Moved(found));
        }

        let fresh = batch.changes.iter().filter(|w| w.offset > recorded);
        let sequenced: Vec<&Write> = fresh.clone().filter(|w| w.sequence.is_some()).collect();
        let stored = self.locked_sequences(&mut tx, &sequenced).await?;

        // Applying in order is the same as applying each key's last change: puts and deletes
        // then touch disjoint keys and can go in separate statements. Sorted keys make two
        // writers lock rows in the same order.
        let mut latest: BTreeMap<&str, Option<Cow<str>>> = BTreeMap::new();
        let mut sequences: BTreeMap<&str, i64> = BTreeMap::new();
        for write in fresh {
            let key = write.change.key();
            if let Some(sequence) = write.sequence {
                if stored.get(key).is_some_and(|s| *s >= sequence) {
                    continue;
                }
                let highest = sequences.entry(key).or_insert(sequence);
                *highest = (*highest).max(sequence);
            }
            match &write.change {
                Change::Put { key, document } => {
                    latest.insert(key, Some(Cow::Owned(document.to_string())))
                }
                Change::PutJson { key, json } => latest.insert(key, Some(Cow::Borrowed(json))),
                Change::Delete { key } => latest.insert(key, None),
            };
        }
        let (puts, deletes): (Vec<_>, Vec<_>) = latest.iter().partition(|(_, d)| d.is_some());

        let size = |row: &&(&&str, &Option<Cow<str>>)| row.1.as_deref().map_or(0, str::len);
        for chunk in chunks(&puts, |row| size(&row)) {
            let smallest = chunk.iter().min_by_key(size).unwrap_or(&chunk[0]);
            let rows = chunk
                .iter()
                .chain(std::iter::repeat(smallest))
                .take(padded_len(chunk.len()));
            let mut query = QueryBuilder::<MySql>::new(&sql.insert_documents);
            query.push_values(rows, |mut row, (key, document)| {
                row.push_bind(*key).push_bind(document.as_deref());
            });
            query.push(UPSERT_TAIL);
            query.build().execute(&mut *tx).await?;
        }
        for chunk in deletes.chunks(CHUNK_ROWS) {
            let mut query = QueryBuilder::<MySql>::new(&sql.delete_documents);
            push_key_list(&mut query, chunk.iter().map(|(key, _)| **key));
            query.build().execute(&mut *tx).await?;
        }
        let sequences: Vec<_> = sequences.into_iter().collect();
        for chunk in sequences.chunks(CHUNK_ROWS) {
            let rows = chunk
                .iter()
                .chain(std::iter::repeat(&chunk[chunk.len() - 1]))
                .take(padded_len(chunk.len()));
            let mut query = QueryBuilder::<MySql>::new(&sql.upsert_sequences);
            query.push_values(rows, |mut row, (key, sequence)| {
                row.push_bind(*key).push_bind(*sequence);
            });
            query.push(" ON DUPLICATE KEY UPDATE seq = GREATEST(seq, VALUES(seq))");
            query.build().execute(&mut *tx).await?;
        }

        let recorded = if batch.last_offset > recorded {
            sqlx::query(&sql.update_offset)
                .bind(batch.last_offset)
                .bind(&batch.topic)
                .bind(batch.partition)
                .execute(&mut *tx)
                .await?;
            batch.last_offset
        } else {
            recorded
        };
        tx.commit().await?;
        Ok(Outcome::Recorded(recorded))
    }

    /// The stored sequences of the keys `writes` change, locked until the transaction ends.
    async fn locked_sequences(
        &self,
        connection: &mut MySqlConnection,
        writes: &[&Write],
    ) -> sqlx::Result<HashMap<String, i64>> {
        let mut stored = HashMap::new();
        let mut keys: Vec<&str> = writes.iter().map(|w| w.change.key()).collect();
        keys.sort_unstable();
        keys.dedup();
        for chunk in keys.chunks(CHUNK_ROWS) {
            let mut query = QueryBuilder::<MySql>::new(&self.sql.select_sequences);
            push_key_list(&mut query, chunk.iter().copied());
            query.push(" FOR UPDATE");
            // `utf8mb4_bin` keys come back as binary strings.
            let rows: Vec<(Vec<u8>, i64)> =
                query.build_query_as().fetch_all(&mut *connection).await?;
            stored.extend(rows.into_iter().map(|(k, s)| (utf8(k), s)));
        }
        Ok(stored)
    }

    async fn locked_offset(
        &self,
        connection: &mut MySqlConnection,
        batch: &PartitionBatch,
    ) -> sqlx::Result<Option<i64>> {
        sqlx::query_scalar(&self.sql.lock_offset)
            .bind(&batch.topic)
            .bind(batch.partition)
            .fetch_optional(connection)
            .await
    }
}

impl Store for MysqlStore {
    async fn write(&self, batch: &PartitionBatch) -> Result<i64> {
        let outcome = match self.write_once(batch).await {
            // Cleared (tables dropped) and written again, like a Redis namespace is; the
            // offset check then tells the writer the store starts over.
            Err(e) if is_missing_table(&e) => {
                self.create_tables().await?;
                self.write_once(batch).await?
            }
            outcome => outcome?,
        };
        match outcome {
            Outcome::Recorded(offset) => Ok(offset),
            Outcome::Moved(found) => Err(Error::OffsetMoved {
                topic: batch.topic.clone(),
                partition: batch.partition,
                expected: batch.expected_offset,
                found,
            }),
        }
    }

    fn refuses(&self, change: &Change) -> Option<String> {
        match change {
            Change::Put { key, document } => self.refuses_document(key, Some(document)),
            Change::PutJson { key, json } => self.refuses_json(key, Some(json)),
            Change::Delete { key } => self.refuses_document(key, None),
        }
    }

    fn refuses_json(&self, key: &str, json: Option<&str>) -> Option<String> {
        let chars = key.chars().count();
        if chars > MAX_KEY_CHARS {
            return Some(format!(
                "key of {chars} characters is longer than the mysql store's {MAX_KEY_CHARS}"
            ));
        }
        let bytes = json?.len();
        (bytes > MAX_DOCUMENT_BYTES).then(|| {
            format!(
                "document of {bytes} bytes is larger than the mysql store's {MAX_DOCUMENT_BYTES}"
            )
        })
    }

    fn refuses_document(&self, key: &str, document: Option<&Value>) -> Option<String> {
        let chars = key.chars().count();
        if chars > MAX_KEY_CHARS {
            return Some(format!(
                "key of {chars} characters is longer than the mysql store's {MAX_KEY_CHARS}"
            ));
        }
        let bytes = json_len(document?);
        (bytes > MAX_DOCUMENT_BYTES).then(|| {
            format!(
                "document of {bytes} bytes is larger than the mysql store's {MAX_DOCUMENT_BYTES}"
            )
        })
    }

    async fn load(&self, keys: &[&str]) -> Result<Vec<Stored>> {
        let mut documents: HashMap<String, Value> = HashMap::new();
        let mut sequences: HashMap<String, i64> = HashMap::new();
        for chunk in keys.chunks(CHUNK_ROWS) {
            let mut query = QueryBuilder::<MySql>::new(&self.sql.select_documents);
            push_key_list(&mut query, chunk.iter().copied());
            let rows: sqlx::Result<Vec<(Vec<u8>, sqlx::types::Json<Value>)>> =
                query.build_query_as().fetch_all(&self.pool).await;
            match rows {
                Err(e) if is_missing_table(&e) => return Ok(vec![Stored::default(); keys.len()]),
                rows => documents.extend(rows?.into_iter().map(|(k, d)| (utf8(k), d.0))),
            }
            let mut query = QueryBuilder::<MySql>::new(&self.sql.select_sequences);
            push_key_list(&mut query, chunk.iter().copied());
            let rows: sqlx::Result<Vec<(Vec<u8>, i64)>> =
                query.build_query_as().fetch_all(&self.pool).await;
            match rows {
                Err(e) if is_missing_table(&e) => {}
                rows => sequences.extend(rows?.into_iter().map(|(k, s)| (utf8(k), s))),
            }
        }
        Ok(keys
            .iter()
            .map(|key| Stored {
                document: documents.remove(*key),
                sequence: sequences.get(*key).copied(),
            })
            .collect())
    }

    async fn applied_offset(&self, topic: &str, partition: i32) -> Result<Option<i64>> {
        let offset = sqlx::query_scalar(&self.sql.select_offset)
            .bind(topic)
            .bind(partition)
            .fetch_optional(&self.pool)
            .await;
        match offset {
            Err(e) if is_missing_table(&e) => Ok(None),
            offset => Ok(offset?),
        }
    }

    async fn get(&self, key: &str) -> Result<Option<Value>> {
        // MySQL returns JSON columns as their own type, MariaDB as text: `Json` decodes both.
        let document = sqlx::query_scalar::<_, sqlx::types::Json<Value>>(&self.sql.select_document)
            .bind(key)
            .fetch_optional(&self.pool)
            .await;
        match document {
            Err(e) if is_missing_table(&e) => Ok(None),
            Err(sqlx::Error::ColumnDecode { source, .. }) => Err(Error::Store {
                backend: "mysql",
                message: format!("document {key}: {source}"),
            }),
            document => Ok(document?.map(|d| d.0)),
        }
    }

    /// Drops the namespace's tables rather than emptying them: a retired generation leaves
    /// nothing behind. Reads of a cleared namespace find nothing; a write recreates it.
    async fn clear(&self) -> Result<()> {
        sqlx::query(&self.sql.drop_tables)
            .execute(&self.pool)
            .await?;
        Ok(())
    }

    async fn current_generation(&self, model: &str) -> Result<Option<u32>> {
        Ok(
            sqlx::query_scalar("SELECT generation FROM projector_generations WHERE model = ?")
                .bind(model)
                .fetch_optional(&self.pool)
                .await?,
        )
    }

    async fn set_current_generation(&self, model: &str, generation: u32) -> Result<()> {
        sqlx::query(
            "INSERT INTO projector_generations (model, generation) VALUES (?, ?)
             ON DUPLICATE KEY UPDATE generation = VALUES(generation)",
        )
        .bind(model)
        .bind(generation)
        .execute(&self.pool)
        .await?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn namespaces_become_lowercase_identifiers() {
        assert_eq!(table_prefix("iot:mandates:g2"), "iot_mandates_g2");
        assert_eq!(table_prefix("Bench-Fold:1"), "bench_fold_1");
    }

    #[test]
    fn long_namespaces_are_cut_and_stay_distinct() {
        let a = table_prefix(&format!("{}:a", "x".repeat(60)));
        let b = table_prefix(&format!("{}:b", "x".repeat(60)));
        assert_eq!(a.len(), MAX_PREFIX_LEN);
        assert_ne!(a, b);
        assert!(a.chars().all(|c| matches!(c, 'a'..='z' | '0'..='9' | '_')));
        assert_eq!(a, table_prefix(&format!("{}:a", "x".repeat(60))));
    }

    #[test]
    fn statement_sizes_are_powers_of_two_up_to_a_chunk() {
        assert_eq!(padded_len(1), 1);
        assert_eq!(padded_len(3), 4);
        assert_eq!(padded_len(300), CHUNK_ROWS);
        assert_eq!(padded_len(CHUNK_ROWS), CHUNK_ROWS);
    }
}
