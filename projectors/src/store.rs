//! Where read models live. A store applies a partition's batch and records the partition's
//! applied offset in one atomic step, and ignores changes at or below that offset: this is
//! what makes redelivery after a crash or a rebalance harmless.

pub mod any;
pub mod mysql;
pub mod redis;

use std::future::Future;

use serde_json::Value;

use crate::error::Result;
use crate::projection::Change;

/// The changes one batch makes for one partition, each with the offset of its event.
#[derive(Debug, Clone, PartialEq)]
pub struct PartitionBatch {
    pub topic: String,
    pub partition: i32,
    /// The offset of the batch's last record; recorded even when that record changed
    /// nothing, so the partition's position always moves forward.
    pub last_offset: i64,
    pub changes: Vec<(i64, Change)>,
}

pub trait Store: Send + Sync + 'static {
    /// Applies the changes above the partition's recorded offset and records
    /// `batch.last_offset`, atomically. Returns the offset recorded afterwards.
    fn write(&self, batch: &PartitionBatch) -> impl Future<Output = Result<i64>> + Send;

    /// The offset last applied for a partition, if any.
    fn applied_offset(
        &self,
        topic: &str,
        partition: i32,
    ) -> impl Future<Output = Result<Option<i64>>> + Send;

    fn get(&self, key: &str) -> impl Future<Output = Result<Option<Value>>> + Send;

    /// Deletes every document and recorded offset of this store's namespace: dropping a
    /// read model generation that is no longer served.
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
