//! The connector's durable offset and the acknowledgement tracker.
//!
//! The offset is the end LSN of the last transaction whose every record Kafka
//! acknowledged. It is kept in two places: as the replication slot's
//! `confirmed_flush_lsn` (the server keeps WAL from there on) and in a
//! compacted Kafka topic keyed by the connector name, which also records
//! whether the initial snapshot completed. Both only ever move to positions
//! that are durably published, so a restart never skips a committed change.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use pg_walstream::SharedLsnFeedback;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::{ClientConfig, Message, Offset, TopicPartitionList};
use serde::{Deserialize, Serialize};
use tokio::sync::{mpsc, oneshot, watch};

use crate::config::Config;
use crate::error::{one_line, Error, Result};
use crate::incremental::Progress;
use crate::publisher::{Deliveries, Publisher};

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct StoredOffset {
    /// Everything committed before this LSN is in Kafka.
    pub lsn: u64,
    pub snapshot_completed: bool,
    pub ts_ms: i64,
    /// A running incremental snapshot, as far as it is published.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub incremental: Option<Progress>,
}

/// Reads the last offset record for `cfg.name`; `None` if there is none or it
/// was reset (a tombstone).
///
/// `topic_exists`: the caller has just created (or found) the offsets topic,
/// so "unknown topic" can only be a broker that is still starting. "No
/// offset" makes `run` drop the slot and take a new snapshot, which skips
/// every change not yet published, so it is only ever answered when Kafka
/// positively says so; a failed or timed-out query is retried and then an
/// error, never `None`.
pub async fn load(cfg: &Config, topic_exists: bool) -> Result<Option<StoredOffset>> {
    let cfg = cfg.clone();
    tokio::task::spawn_blocking(move || load_blocking(&cfg, topic_exists))
        .await
        .map_err(|e| Error::Kafka(e.to_string()))?
}

fn load_blocking(cfg: &Config, topic_exists: bool) -> Result<Option<StoredOffset>> {
    let consumer: BaseConsumer = ClientConfig::new()
        .set("bootstrap.servers", &cfg.kafka_bootstrap_servers)
        .set("group.id", format!("{}-offsets-reader", cfg.name))
        .set("enable.auto.commit", "false")
        .set("log_level", "3")
        .create()?;
    let timeout = Duration::from_millis(cfg.kafka_connect_timeout_ms.max(5000));
    let deadline = Instant::now() + Duration::from_secs(60);
    let topic = cfg.offsets_topic.as_str();
    // The connector creates the topic with one partition, but one made by
    // someone else may have more: the record is wherever its key hashed to
    // (and may have moved if partitions were added), so read them all.
    let ranges = loop {
        let err = match partition_ranges(&consumer, topic, timeout) {
            Ok(ranges) => break ranges,
            Err(e) => {
                // No offsets topic: a first start (only believed when the
                // caller did not just create it).
                if !topic_exists && is_unknown_topic(&e) {
                    return Ok(None);
                }
                one_line(&e)
            }
        };
        // `status` reports the error at once instead of waiting.
        if !topic_exists || Instant::now() > deadline {
            return Err(Error::Kafka(format!(
                "reading the offset from {topic}: {err}"
            )));
        }
        tracing::warn!(error = %err, %topic, "offset not readable yet, retrying");
        std::thread::sleep(Duration::from_millis(500));
    };
    let mut tpl = TopicPartitionList::new();
    let mut remaining = std::collections::HashMap::new();
    for (partition, low, high) in ranges {
        if high > low {
            tpl.add_partition_offset(topic, partition, Offset::Beginning)?;
            remaining.insert(partition, high);
        }
    }
    if remaining.is_empty() {
        return Ok(None);
    }
    consumer.assign(&tpl)?;
    // The newest record for our key over all partitions (by its Kafka timestamp).
    let mut last: Option<(i64, Option<StoredOffset>)> = None;
    while !remaining.is_empty() {
        if Instant::now() > deadline {
            return Err(Error::Kafka(format!("timed out reading {topic}")));
        }
        let msg = match consumer.poll(Duration::from_millis(500)) {
            None => continue,
            // Transient (a broker still starting); the deadline bounds it.
            Some(Err(e)) => {
                tracing::warn!(error = %one_line(&e), %topic, "reading offsets, retrying");
                continue;
            }
            Some(Ok(m)) => m,
        };
        if msg.key() == Some(cfg.name.as_bytes()) {
            let at = msg.timestamp().to_millis().unwrap_or(0);
            let record = match msg.payload() {
                None => None,
                Some(p) => Some(
                    serde_json::from_slice::<StoredOffset>(p)
                        .map_err(|e| Error::Kafka(format!("bad offset record in {topic}: {e}")))?,
                ),
            };
            if last.as_ref().is_none_or(|(t, _)| at >= *t) {
                last = Some((at, record));
            }
        }
        if remaining
            .get(&msg.partition())
            .is_some_and(|high| msg.offset() + 1 >= *high)
        {
            remaining.remove(&msg.partition());
        }
    }
    Ok(last.and_then(|(_, r)| r))
}

/// `(partition, low, high)` watermarks of every partition of `topic`.
fn partition_ranges(
    consumer: &BaseConsumer,
    topic: &str,
    timeout: Duration,
) -> std::result::Result<Vec<(i32, i64, i64)>, rdkafka::error::KafkaError> {
    use rdkafka::error::KafkaError;
    let md = consumer.fetch_metadata(Some(topic), timeout)?;
    let t = md
        .topics()
        .iter()
        .find(|t| t.name() == topic)
        .ok_or(KafkaError::MetadataFetch(
            rdkafka::types::RDKafkaErrorCode::UnknownTopic,
        ))?;
    if let Some(e) = t.error() {
        return Err(KafkaError::MetadataFetch(e.into()));
    }
    if t.partitions().is_empty() {
        return Err(KafkaError::MetadataFetch(
            rdkafka::types::RDKafkaErrorCode::UnknownTopicOrPartition,
        ));
    }
    let mut out = Vec::new();
    for p in t.partitions() {
        let (low, high) = consumer.fetch_watermarks(topic, p.id(), timeout)?;
        if low < 0 || high < 0 {
            return Err(KafkaError::MetadataFetch(
                rdkafka::types::RDKafkaErrorCode::LeaderNotAvailable,
            ));
        }
        out.push((p.id(), low, high));
    }
    Ok(out)
}

fn is_unknown_topic(e: &rdkafka::error::KafkaError) -> bool {
    use rdkafka::types::RDKafkaErrorCode as C;
    matches!(
        e.rdkafka_error_code(),
        Some(C::UnknownTopicOrPartition | C::UnknownTopic | C::UnknownPartition)
    ) || e.to_string().contains("Unknown topic")
        || e.to_string().contains("UnknownTopic")
}

/// Writes an offset record (or a tombstone with `None`) and waits for Kafka.
pub async fn store(pub_: &Publisher, cfg: &Config, offset: Option<StoredOffset>) -> Result<()> {
    pub_.ensure_topic(&cfg.offsets_topic, true).await?;
    let value = offset.map(|o| serde_json::to_vec(&o).expect("serialisable"));
    let mut delivery = Deliveries::default();
    pub_.send(
        &cfg.offsets_topic,
        Some(cfg.name.as_bytes()),
        value.as_deref(),
        &mut delivery,
    )
    .await?;
    delivery.wait().await
}

/// Counts a record Kafka refused or did not acknowledge
/// (`connector_publish_failures_total`).
pub fn publish_failure(connector: &str, reason: &'static str) {
    telemetry::metrics::counter!(
        telemetry::names::CONNECTOR_PUBLISH_FAILURES,
        "connector" => connector.to_owned(),
        "reason" => reason
    )
    .increment(1);
}

/// A unit of work handed to the tracker, in WAL order.
pub struct Pending {
    pub deliveries: Deliveries,
    pub ack: Ack,
}

pub enum Ack {
    /// Nothing to record (a batch of snapshot rows).
    None,
    /// All earlier work is published: the offset may move to this LSN.
    Lsn(u64),
    /// Tell the sender once everything before is published.
    Notify(oneshot::Sender<()>),
    /// The incremental snapshot's progress once everything before it is
    /// published: stored with the next offset record.
    Progress(Option<Progress>),
}

/// Awaits deliveries strictly in order and only then advances the offset:
/// the slot feedback (sent by the replication stream) and, at most once per
/// `interval`, the offsets topic.
pub struct Tracker {
    pub tx: mpsc::Sender<Pending>,
    /// Highest LSN known durably published.
    pub acked: Arc<AtomicU64>,
    /// Set when a record could not be delivered: the stream must stop.
    pub failed: watch::Receiver<Option<String>>,
}

/// Writes the offset record (`lsn`, the snapshot flag and the incremental snapshot's
/// progress) to the offsets topic; whether it was handed to the producer. Its delivery is not
/// awaited: ordering on the partition keeps the newest record last, and the slot is the
/// backstop.
async fn write_offset(
    publisher: &Publisher,
    cfg: &Config,
    lsn: u64,
    snapshot_completed: bool,
    incremental: &Option<Progress>,
) -> bool {
    let rec = StoredOffset {
        lsn,
        snapshot_completed,
        ts_ms: chrono::Utc::now().timestamp_millis(),
        incremental: incremental.clone(),
    };
    let value = serde_json::to_vec(&rec).expect("serialisable");
    // Not awaited: ordering on the partition keeps the newest record last.
    let mut unawaited = Deliveries::default();
    match publisher
        .send(
            &cfg.offsets_topic,
            Some(cfg.name.as_bytes()),
            Some(&value),
            &mut unawaited,
        )
        .await
    {
        Ok(_) => true,
        Err(e) => {
            publish_failure(&cfg.name, "offset");
            tracing::warn!(error = %e, "could not write offset");
            false
        }
    }
}

impl Tracker {
    pub fn spawn(
        publisher: Arc<Publisher>,
        cfg: Config,
        feedback: Option<Arc<SharedLsnFeedback>>,
        snapshot_completed: bool,
        incremental: Option<Progress>,
    ) -> (Tracker, tokio::task::JoinHandle<()>) {
        let (tx, mut rx) = mpsc::channel::<Pending>(4096);
        let (fail_tx, failed) = watch::channel(None);
        let acked = Arc::new(AtomicU64::new(0));
        let acked2 = acked.clone();
        let handle = tokio::spawn(async move {
            // Short, so that a crash replays little; the write is tiny and async.
            let interval = Duration::from_millis(200);
            let mut last_store = Instant::now();
            let mut stored = 0u64;
            let mut incremental = incremental;
            // The newest acknowledged LSN, and whether it or the incremental snapshot's
            // progress is newer than the last offset written.
            let mut latest = 0u64;
            let mut dirty = false;
            while let Some(p) = rx.recv().await {
                if let Err(e) = p.deliveries.wait().await {
                    publish_failure(&cfg.name, "delivery");
                    let _ = fail_tx.send(Some(e.to_string()));
                    return;
                }
                let write = match p.ack {
                    Ack::None => false,
                    // A drain (the clean stop) leaves the offset as far as everything
                    // published: a chunk's progress acknowledged after the last LSN write
                    // would otherwise be read again at the next start.
                    Ack::Notify(done) => {
                        let written = dirty
                            && latest > 0
                            && write_offset(
                                &publisher,
                                &cfg,
                                latest,
                                snapshot_completed,
                                &incremental,
                            )
                            .await;
                        if written {
                            stored = latest;
                            last_store = Instant::now();
                            dirty = false;
                        }
                        let _ = done.send(());
                        false
                    }
                    Ack::Progress(p) => {
                        incremental = p;
                        dirty = true;
                        false
                    }
                    Ack::Lsn(lsn) => {
                        acked2.fetch_max(lsn, Ordering::SeqCst);
                        if let Some(f) = &feedback {
                            f.update_flushed_lsn(lsn);
                            f.update_applied_lsn(lsn);
                        }
                        latest = latest.max(lsn);
                        dirty |= lsn > stored;
                        lsn > stored && (last_store.elapsed() >= interval || rx.is_empty())
                    }
                };
                if write
                    && write_offset(&publisher, &cfg, latest, snapshot_completed, &incremental)
                        .await
                {
                    stored = latest;
                    last_store = Instant::now();
                    dirty = false;
                }
            }
        });
        (Tracker { tx, acked, failed }, handle)
    }

    pub async fn push(&self, p: Pending) -> Result<()> {
        self.tx
            .send(p)
            .await
            .map_err(|_| Error::Kafka(self.failure().unwrap_or_else(|| "tracker stopped".into())))
    }

    pub fn failure(&self) -> Option<String> {
        self.failed.borrow().clone()
    }

    /// Waits until everything pushed so far is published.
    pub async fn drain(&self) -> Result<()> {
        let (tx, rx) = oneshot::channel();
        self.push(Pending {
            deliveries: Deliveries::default(),
            ack: Ack::Notify(tx),
        })
        .await?;
        rx.await
            .map_err(|_| Error::Kafka(self.failure().unwrap_or_else(|| "tracker stopped".into())))
    }
}
