//! Where read models live. A store applies a partition's batch and records the partition's
//! applied offset in one atomic step, after checking that the offset it has recorded is the
//! one the writer expects: a store that lost data, or was moved by another writer, refuses
//! the batch ([`Error::OffsetMoved`](crate::Error::OffsetMoved)) instead of folding on a gap.
//!
//! Changes at or below the recorded offset, and changes whose per-key sequence is at or below
//! the one stored for their key, are ignored: redelivery and re-sent events change nothing.

pub mod any;
pub mod mysql;
pub mod redis;

use std::future::Future;

use serde_json::Value;

use crate::error::Result;
use crate::projection::Change;

/// One document change of a batch, with the offset and per-key sequence of the event that
/// made it last.
#[derive(Debug, Clone, PartialEq)]
pub struct Write {
    pub offset: i64,
    /// The event's per-key sequence, when the record carried one and the document is keyed
    /// by the record's key.
    pub sequence: Option<i64>,
    pub change: Change,
}

/// The changes one batch makes for one partition.
#[derive(Debug, Clone, PartialEq)]
pub struct PartitionBatch {
    pub topic: String,
    pub partition: i32,
    /// The offset the writer last saw recorded for this partition (`None`: nothing).
    pub expected_offset: Option<i64>,
    /// The offset of the batch's last record; recorded even when that record changed
    /// nothing, so the partition's position always moves forward.
    pub last_offset: i64,
    pub changes: Vec<Write>,
}

/// A document as a store holds it, with the sequence of the event that wrote it last.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Stored {
    pub document: Option<Value>,
    pub sequence: Option<i64>,
}

/// [`Stored`] with the document as the JSON text the store holds.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct StoredJson {
    pub json: Option<String>,
    pub sequence: Option<i64>,
}

pub trait Store: Send + Sync + 'static {
    /// Checks the recorded offset is `batch.expected_offset`, applies the changes above it
    /// (and above their key's stored sequence) and records `batch.last_offset`, atomically.
    /// Returns the offset recorded afterwards.
    fn write(&self, batch: &PartitionBatch) -> impl Future<Output = Result<i64>> + Send;

    /// Whether the store has limits a key or document can be beyond ([`Store::refuses`]):
    /// the projector then asks [`Store::refuses_json`] for every event it folds, which makes
    /// each folded document's text; otherwise it makes a document's text once per batch.
    fn limits_documents(&self) -> bool {
        true
    }

    /// Why the store could never hold `change` (a key or document beyond its limits), if so.
    fn refuses(&self, change: &Change) -> Option<String>;

    /// [`Store::refuses`] for the put (`Some`) or delete (`None`) of `key`, without building
    /// the change.
    fn refuses_document(&self, key: &str, document: Option<&Value>) -> Option<String> {
        let key = key.to_owned();
        self.refuses(&match document {
            Some(document) => Change::Put {
                key,
                document: document.clone(),
            },
            None => Change::Delete { key },
        })
    }

    /// [`Store::refuses_document`] for a document as JSON text: what the projector asks for
    /// every event it folds, when the store [`limits_documents`](Store::limits_documents).
    fn refuses_json(&self, key: &str, json: Option<&str>) -> Option<String> {
        self.refuses(&match json {
            Some(json) => Change::PutJson {
                key: key.to_owned(),
                json: json.to_owned(),
            },
            None => Change::Delete {
                key: key.to_owned(),
            },
        })
    }

    /// [`Store::load`] with the documents as the JSON text the store holds.
    fn load_json(&self, keys: &[&str]) -> impl Future<Output = Result<Vec<StoredJson>>> + Send {
        async move {
            Ok(self
                .load(keys)
                .await?
                .into_iter()
                .map(|stored| StoredJson {
                    json: stored.document.map(|d| d.to_string()),
                    sequence: stored.sequence,
                })
                .collect())
        }
    }

    /// The offset last applied for a partition, if any.
    fn applied_offset(
        &self,
        topic: &str,
        partition: i32,
    ) -> impl Future<Output = Result<Option<i64>>> + Send;

    fn get(&self, key: &str) -> impl Future<Output = Result<Option<Value>>> + Send;

    /// The documents and sequences of `keys`, in the same order, for folds that read state.
    fn load(&self, keys: &[&str]) -> impl Future<Output = Result<Vec<Stored>>> + Send;

    /// Deletes every document, sequence and recorded offset of this store's namespace:
    /// dropping a read model generation that is no longer served.
    fn clear(&self) -> impl Future<Output = Result<()>> + Send;

    /// The generation of read model `model` that reads are served from, if one was chosen.
    /// Kept in the same backend as the documents, so switching is one atomic write there.
    fn current_generation(&self, model: &str) -> impl Future<Output = Result<Option<u32>>> + Send;

    /// Makes `generation` the one reads of `model` are served from.
    fn set_current_generation(
        &self,
        model: &str,
        generation: u32,
    ) -> impl Future<Output = Result<()>> + Send;
}
