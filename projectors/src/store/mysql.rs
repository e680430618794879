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
//! - `projector_generations`: shared by every namespace in the database: per read model the
//!   generation reads are served from.
//!
//! Keys and topics use `utf8mb4_bin`: Redis keys are exact, and MySQL's default collations
//! would merge `A` with `a` (and `e` with `é`) into one document.
//!
//! # Atomicity
//!
//! A batch is one InnoDB transaction (READ COMMITTED) that first locks the partition's offset
//! row (`SELECT ... FOR UPDATE`), applies only the changes above that offset and then records the
//! batch's last offset. The lock serialises two writers of one partition (an old owner finishing
//! after a rebalance and the new one); the transaction makes documents and offset move together,
//! so a crash at any point either applied the whole batch or nothing of it, and redelivery of
//! anything at or below the offset changes nothing.
//!
//! # Errors
//!
//! Every database error is an [`Error::Store`], which the runtime retries with backoff forever:
//! a server that is down or restarting pauses the projector, which resumes once it is back. The
//! pool hands out only connections that answer a ping and gives up acquiring one after
//! [`ACQUIRE_TIMEOUT`], so an outage turns into errors (and retries) instead of a hang.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use serde_json::Value;
use sqlx::mysql::{MySqlPool, MySqlPoolOptions};
use sqlx::{Executor, MySql, MySqlConnection, QueryBuilder};

use crate::error::{Error, Result};
use crate::projection::Change;
use crate::store::{PartitionBatch, Store};

/// How long a call waits for a connection before failing with a retryable error.
pub const ACQUIRE_TIMEOUT: Duration = Duration::from_secs(3);

/// Rows per multi-row statement. Batches hold thousands of changes: one statement per change
/// would make the write round-trip bound; 512 rows keep a statement far below
/// `max_allowed_packet` for documents of a few hundred bytes.
const CHUNK_ROWS: usize = 512;

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
    lock_offset: String,
    insert_offset: String,
    update_offset: String,
    select_offset: String,
    select_document: String,
    insert_documents: String,
    delete_documents: String,
    drop_tables: String,
}

impl Statements {
    fn new(prefix: &str) -> Self {
        let documents = format!("`{prefix}_documents`");
        let offsets = format!("`{prefix}_offsets`");
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
            insert_documents: format!("INSERT INTO {documents} (doc_key, document) "),
            delete_documents: format!("DELETE FROM {documents} WHERE doc_key IN "),
            drop_tables: format!("DROP TABLE IF EXISTS {documents}, {offsets}"),
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

/// Statement sizes are rounded up to a power of two by repeating the last row (harmless: the
/// same upsert or delete twice), so a connection sees at most a handful of distinct statements
/// and keeps them all prepared instead of preparing one per batch size.
fn padded_len(rows: usize) -> usize {
    rows.next_power_of_two().min(CHUNK_ROWS)
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
        Ok(())
    }

    async fn write_once(&self, batch: &PartitionBatch) -> sqlx::Result<i64> {
        let sql = &self.sql;
        let mut tx = self.pool.begin().await?;
        let applied = match self.locked_offset(&mut tx, batch).await? {
            Some(applied) => applied,
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

        // Applying in order is the same as applying each key's last change: puts and deletes
        // then touch disjoint keys and can go in separate statements. Sorted keys make two
        // writers lock rows in the same order.
        let mut latest: BTreeMap<&str, Option<String>> = BTreeMap::new();
        for (offset, change) in &batch.changes {
            if *offset <= applied {
                continue;
            }
            match change {
                Change::Put { key, document } => latest.insert(key, Some(document.to_string())),
                Change::Delete { key } => latest.insert(key, None),
            };
        }
        let (puts, deletes): (Vec<_>, Vec<_>) = latest.iter().partition(|(_, d)| d.is_some());

        for chunk in puts.chunks(CHUNK_ROWS) {
            let rows = chunk
                .iter()
                .chain(std::iter::repeat(&chunk[chunk.len() - 1]))
                .take(padded_len(chunk.len()));
            let mut query = QueryBuilder::<MySql>::new(&sql.insert_documents);
            query.push_values(rows, |mut row, (key, document)| {
                row.push_bind(*key).push_bind(document.as_deref());
            });
            query.push(UPSERT_TAIL);
            query.build().execute(&mut *tx).await?;
        }
        for chunk in deletes.chunks(CHUNK_ROWS) {
            let keys = chunk
                .iter()
                .chain(std::iter::repeat(&chunk[chunk.len() - 1]))
                .take(padded_len(chunk.len()));
            let mut query = QueryBuilder::<MySql>::new(&sql.delete_documents);
            query.push("(");
            let mut list = query.separated(", ");
            for (key, _) in keys {
                list.push_bind(*key);
            }
            query.push(")");
            query.build().execute(&mut *tx).await?;
        }

        let recorded = if batch.last_offset > applied {
            sqlx::query(&sql.update_offset)
                .bind(batch.last_offset)
                .bind(&batch.topic)
                .bind(batch.partition)
                .execute(&mut *tx)
                .await?;
            batch.last_offset
        } else {
            applied
        };
        tx.commit().await?;
        Ok(recorded)
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
        match self.write_once(batch).await {
            // Cleared (tables dropped) and written again, like a Redis namespace is.
            Err(e) if is_missing_table(&e) => {
                self.create_tables().await?;
                Ok(self.write_once(batch).await?)
            }
            result => Ok(result?),
        }
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
