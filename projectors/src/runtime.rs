//! The consume → decode → fold → write → commit loop.
//!
//! # Where a partition starts
//!
//! The store owns the offsets. When a partition is assigned, the projector reads the offset
//! the store recorded for it and starts at the next one (the low watermark when the store has
//! nothing), whatever Kafka's committed offset says: a store that lost writes, was emptied or
//! recreated is refilled from the log instead of silently missing events. A recorded offset at
//! or beyond the partition's high watermark (a recreated topic) stops the projector with
//! [`Error::OffsetBeyondLog`]. Kafka's committed offsets are still written after every batch,
//! marked [`topics::groups::STORE_OWNED_METADATA`], so lag tools work and `topics reset`
//! knows to refuse.
//!
//! # A batch
//!
//! Records are taken in batches: whatever is already fetched, up to `max_batch`. Per
//! partition, events are folded in offset order into their documents (loaded from the store
//! first when the projection reads state); an event whose per-key sequence (`event-seq`) is at
//! or below the one its document has seen is a re-send and is skipped. The partition's
//! documents and its last offset are then written in one atomic store step that also checks the
//! store still has the offset this projector last saw ([`Error::OffsetMoved`] otherwise: the
//! projector seeks back to what the store has and folds from there). Only then is the offset
//! handed to Kafka, so a crash at any point means redelivery, never loss.
//!
//! # Failures
//!
//! Transient failures are retried with backoff for as long as they last, and shown in
//! [`ProjectorStatus::waiting`]: Kafka and the store hold the batch; an unreachable registry,
//! or one that does not know a record's schema id (yet), pauses that record's partition only,
//! seeks it back to the record and tries again later while the other partitions go on. A record that can never apply goes to the dead-letter topic
//! with the reason: bytes that are not the wire format or do not decode with the registry's
//! schema, and changes the store refuses (beyond its limits, SQL data and constraint errors).

use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};
use std::future::Future;
use std::sync::atomic::AtomicBool;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use backon::{ExponentialBuilder, Retryable};
use futures::FutureExt;
use rdkafka::consumer::{
    BaseConsumer, CommitMode, Consumer, ConsumerContext, RebalanceProtocol, StreamConsumer,
};
use rdkafka::error::KafkaError;
use rdkafka::message::{BorrowedMessage, Headers, Message};
use rdkafka::producer::{FutureProducer, FutureRecord};
use rdkafka::types::RDKafkaRespErr;
use rdkafka::{ClientContext, Offset, TopicPartitionList};
use tokio::runtime::{Handle, RuntimeFlavor};
use tokio::sync::Notify;
use topics::codec::Decoder;
use topics::kafka::SEQUENCE_HEADER;
use topics::registry::Registry;
use topics::settings::KafkaSettings;
use tracing::{debug, info, warn};

use crate::error::{Error, Result};
use crate::projection::{to_json, Change, Projection};
use crate::store::{PartitionBatch, Store, Write};

/// How long to wait after a consumer error before polling again.
const CONSUMER_ERROR_PAUSE: Duration = Duration::from_millis(200);

/// How long without a record before the projector counts as idle and notes its positions.
const IDLE_TICK: Duration = Duration::from_millis(200);

/// Kafka metadata calls (watermarks, seeks).
const KAFKA_TIMEOUT: Duration = Duration::from_secs(10);

/// Headers a dead-lettered record carries, besides its own.
pub const DEAD_LETTER_REASON: &str = "dead-letter.reason";
pub const DEAD_LETTER_TOPIC: &str = "dead-letter.topic";
pub const DEAD_LETTER_PARTITION: &str = "dead-letter.partition";
pub const DEAD_LETTER_OFFSET: &str = "dead-letter.offset";
/// The consumer group that dead-lettered the record, so a rebuild can count its own.
pub const DEAD_LETTER_GROUP: &str = "dead-letter.group";

#[derive(Debug, Clone)]
pub struct ProjectorSettings {
    pub kafka: KafkaSettings,
    /// The consumer group; instances sharing it split the topic's partitions.
    pub group_id: String,
    pub topic: String,
    /// Where events that can never apply go, with headers saying why and where from.
    pub dead_letter_topic: String,
    pub max_batch: usize,
}

/// What a running projector has done so far, for health endpoints, tests and benchmarks.
#[derive(Debug, Default)]
pub struct ProjectorStatus {
    pub applied: AtomicU64,
    pub dead_lettered: AtomicU64,
    /// Events skipped because their document had already seen their per-key sequence.
    pub duplicates: AtomicU64,
    assigned: Mutex<BTreeSet<i32>>,
    /// Why the store is being waited out, while it is.
    store_wait: Mutex<Option<String>>,
    /// Per held partition, why it waits for the registry.
    registry_waits: Mutex<BTreeMap<i32, String>>,
    /// Per owned partition, the consumer's position when the projector last went idle (every
    /// record before it applied): past transaction markers, unlike the store's last offset.
    idle_positions: Mutex<BTreeMap<i32, i64>>,
}

impl ProjectorStatus {
    /// The partitions this instance currently owns.
    pub fn assigned(&self) -> Vec<i32> {
        lock(&self.assigned).iter().copied().collect()
    }

    /// What the projector is waiting out right now (an unreachable store, or the registry
    /// for a partition whose next record it cannot decode yet), if anything.
    pub fn waiting(&self) -> Option<String> {
        lock(&self.store_wait)
            .clone()
            .or_else(|| lock(&self.registry_waits).values().next().cloned())
    }

    /// Per owned partition, the next offset to read as of the last time the projector had
    /// nothing to do: every record before it is applied (or dead-lettered), and transaction
    /// markers are behind it. A rebuild compares it with the high watermark.
    pub fn idle_positions(&self) -> BTreeMap<i32, i64> {
        lock(&self.idle_positions).clone()
    }
}

fn lock<T>(mutex: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    mutex
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
}

/// What the consumer's rebalance callback and the projector's loop share.
struct Shared<S, D> {
    store: Arc<S>,
    topic: String,
    status: Arc<ProjectorStatus>,
    /// Per owned partition, the offset the store has recorded as far as this projector knows
    /// (`None`: nothing). Every write expects it, and moves it.
    positions: Mutex<HashMap<i32, Option<i64>>>,
    /// Partitions paused until the registry can decode their next record.
    held: Mutex<HashMap<i32, Held>>,
    /// Per partition, how often it was (re)positioned: records taken before the partition
    /// was sought somewhere else are dropped rather than folded across a gap.
    epochs: Mutex<HashMap<i32, u64>>,
    /// The documents of owned partitions as the store holds them after this instance's last
    /// write (or load) of them, so a state-reading fold loads a document from the store only
    /// the first time; see [`Shared::keep`].
    documents: Mutex<HashMap<String, Cached<D>>>,
    /// Whether documents are kept in [`Shared::documents`]: until a document is folded from a
    /// record with another key. A document keyed by its records' key lives in one partition,
    /// so no other instance writes it while this one owns that partition; one folded from
    /// records of several keys may be written from partitions another instance owns.
    caching: AtomicBool,
    /// An error found inside the rebalance callback, where it cannot be returned.
    fatal: Mutex<Option<Error>>,
    /// Wakes the loop out of a wait for records when `fatal` was set.
    wake: Notify,
    /// Set when shutdown was asked for: the rebalance callback, which runs inside the
    /// consumer's poll where the shutdown future cannot be seen, stops retrying then.
    stopping: Arc<AtomicBool>,
    runtime: Handle,
}

/// The most documents [`Shared::documents`] holds; it starts over empty when a batch would
/// take it beyond (documents are then loaded from the store again).
const MAX_CACHED_DOCUMENTS: usize = 200_000;

/// A document as the store holds it, kept between batches in the fold's own form.
struct Cached<D> {
    /// The partition (and its epoch) whose write left it so: valid while that partition is
    /// owned and was not sought elsewhere since.
    partition: i32,
    epoch: u64,
    state: Option<D>,
    sequence: Option<i64>,
}

impl<S: Store, D: Send + Sync + 'static> Shared<S, D> {
    /// Takes the kept documents of `keys` out of the cache (`None` for those not kept, which
    /// the caller loads from the store).
    fn take_cached(&self, keys: &[&str]) -> Vec<Option<(Option<D>, Option<i64>)>> {
        if !self.caching.load(Ordering::Relaxed) {
            return keys.iter().map(|_| None).collect();
        }
        let mut documents = lock(&self.documents);
        let epochs = lock(&self.epochs);
        keys.iter()
            .map(|key| {
                let cached = documents.remove(*key)?;
                (epochs.get(&cached.partition).copied().unwrap_or_default() == cached.epoch)
                    .then_some((cached.state, cached.sequence))
            })
            .collect()
    }

    /// Keeps `documents`, which a write of `partition` in `epoch` just left in the store,
    /// unless the partition was revoked or sought elsewhere meanwhile.
    fn keep(&self, partition: i32, epoch: u64, documents: Vec<(String, Option<D>, Option<i64>)>) {
        if documents.is_empty() || !self.caching.load(Ordering::Relaxed) {
            return;
        }
        // Under the positions lock, which a revoke takes before it drops the partition's
        // documents: a partition revoked while its batch was written keeps nothing.
        let positions = lock(&self.positions);
        if !positions.contains_key(&partition) || self.epoch(partition) != epoch {
            return;
        }
        let mut cached = lock(&self.documents);
        if cached.len() + documents.len() > MAX_CACHED_DOCUMENTS {
            cached.clear();
        }
        for (key, state, sequence) in documents {
            cached.insert(
                key,
                Cached {
                    partition,
                    epoch,
                    state,
                    sequence,
                },
            );
        }
    }

    /// A document was folded from a record with another key: documents are loaded from the
    /// store for every batch from now on.
    fn stop_caching(&self) {
        if self.caching.swap(false, Ordering::Relaxed) {
            lock(&self.documents).clear();
            debug!("a document is folded from records of other keys; loading documents for every batch");
        }
    }

    /// Where `partition` must start given what the store recorded; the one place that
    /// decides it, for assignments and for re-seeks after [`Error::OffsetMoved`].
    fn start(
        &self,
        partition: i32,
        stored: Option<i64>,
        (low, high): (i64, i64),
    ) -> Result<Offset> {
        match stored {
            Some(stored) if stored >= high => Err(Error::OffsetBeyondLog {
                topic: self.topic.clone(),
                partition,
                stored,
                high,
            }),
            Some(stored) if stored + 1 < low => {
                warn!(topic = %self.topic, partition, stored, low, "the log no longer holds records the store never applied (retention); starting at the low watermark");
                Ok(Offset::Offset(low))
            }
            Some(stored) => Ok(Offset::Offset(stored + 1)),
            None => Ok(Offset::Beginning),
        }
    }

    /// Starts a new epoch of `partition`: it is sought to a new start.
    fn new_epoch(&self, partition: i32) {
        *lock(&self.epochs).entry(partition).or_default() += 1;
    }

    fn epoch(&self, partition: i32) -> u64 {
        lock(&self.epochs)
            .get(&partition)
            .copied()
            .unwrap_or_default()
    }

    /// Reads the store's offset of every partition in `assignment` and sets it as the
    /// partition's start. Runs inside the rebalance callback, so it blocks this worker
    /// thread (the runtime is multi-threaded: the store's connections keep being driven).
    fn position(
        &self,
        consumer: &BaseConsumer<Membership<S, D>>,
        assignment: &mut TopicPartitionList,
    ) -> Result<()> {
        let partitions: Vec<i32> = assignment
            .elements()
            .iter()
            .map(|e| e.partition())
            .collect();
        // Transient failures are waited out for as long as they last, unless shutdown was
        // asked for meanwhile.
        let wait = |e: &Error| e.is_retryable() && !self.stopping.load(Ordering::Relaxed);
        for partition in partitions {
            let (stored, watermarks) = tokio::task::block_in_place(|| {
                self.runtime.block_on(async {
                    let stored = (|| self.store.applied_offset(&self.topic, partition))
                        .retry(forever())
                        .when(wait)
                        .notify(|e, delay| warn!(error = %e, ?delay, partition, "store unavailable while taking a partition; retrying"))
                        .await?;
                    let watermarks = (|| async {
                        Ok::<_, Error>(consumer.fetch_watermarks(&self.topic, partition, KAFKA_TIMEOUT)?)
                    })
                    .retry(forever())
                    .when(wait)
                    .notify(|e, delay| warn!(error = %e, ?delay, partition, "kafka unavailable while taking a partition; retrying"))
                    .await?;
                    Ok::<_, Error>((stored, watermarks))
                })
            })?;
            let start = self.start(partition, stored, watermarks)?;
            assignment.set_partition_offset(&self.topic, partition, start)?;
            lock(&self.positions).insert(partition, stored);
            self.new_epoch(partition);
            info!(topic = %self.topic, partition, ?stored, ?start, "partition assigned; starting where the store stands");
        }
        Ok(())
    }
}

/// A partition waiting for the registry: its record at `offset` could not be decoded yet (the
/// registry is unreachable, or does not know the schema id), so the partition is paused and
/// sought back to it, while the other partitions go on.
struct Held {
    offset: i64,
    /// When to resume and try again; `None`: resumed, the next decode tells.
    resume_at: Option<Instant>,
    delay: Duration,
}

/// The consumer's context: positions assigned partitions from the store and keeps
/// [`ProjectorStatus::assigned`] in step with the group's rebalances.
struct Membership<S, D> {
    shared: Arc<Shared<S, D>>,
}

impl<S: Store, D: Send + Sync + 'static> ClientContext for Membership<S, D> {}

impl<S: Store, D: Send + Sync + 'static> ConsumerContext for Membership<S, D> {
    fn rebalance(
        &self,
        consumer: &BaseConsumer<Self>,
        err: RDKafkaRespErr,
        tpl: &mut TopicPartitionList,
    ) {
        let shared = &self.shared;
        // Cooperative rebalancing hands out and takes back partitions incrementally.
        let cooperative = matches!(
            consumer.rebalance_protocol(),
            RebalanceProtocol::Cooperative
        );
        let partitions: Vec<i32> = tpl.elements().iter().map(|e| e.partition()).collect();
        match err {
            RDKafkaRespErr::RD_KAFKA_RESP_ERR__ASSIGN_PARTITIONS => {
                if let Err(e) = shared.position(consumer, tpl) {
                    // Assigned all the same, but paused: the loop stops on the error.
                    warn!(error = %e, "cannot position assigned partitions; stopping");
                    let _ = tpl.set_all_offsets(Offset::End);
                    lock(&shared.fatal).get_or_insert(e);
                    shared.wake.notify_one();
                }
                let assigned = if cooperative {
                    consumer.incremental_assign(tpl)
                } else {
                    consumer.assign(tpl)
                };
                // librdkafka keeps a partition paused across a revoke and a new assignment:
                // one held for the registry before must flow again, from where it starts now.
                let paused = if lock(&shared.fatal).is_some() {
                    consumer.pause(tpl)
                } else {
                    consumer.resume(tpl)
                };
                if let Err(e) = paused {
                    warn!(error = %e, "pausing or resuming assigned partitions failed");
                }
                if let Err(e) = assigned {
                    warn!(error = %e, "assigning partitions failed");
                }
                let mut owned = lock(&shared.status.assigned);
                owned.extend(&partitions);
                info!(partitions = ?*owned, "partitions assigned");
            }
            RDKafkaRespErr::RD_KAFKA_RESP_ERR__REVOKE_PARTITIONS => {
                let revoked = if cooperative {
                    consumer.incremental_unassign(tpl)
                } else {
                    consumer.unassign()
                };
                if let Err(e) = revoked {
                    warn!(error = %e, "unassigning partitions failed");
                }
                let mut positions = lock(&shared.positions);
                let mut held = lock(&shared.held);
                let mut waits = lock(&shared.status.registry_waits);
                let mut idle = lock(&shared.status.idle_positions);
                let mut owned = lock(&shared.status.assigned);
                for partition in &partitions {
                    positions.remove(partition);
                    held.remove(partition);
                    waits.remove(partition);
                    idle.remove(partition);
                    owned.remove(partition);
                }
                lock(&shared.documents).retain(|_, d| !partitions.contains(&d.partition));
                info!(partitions = ?*owned, "partitions revoked");
            }
            other => warn!(error = ?other, "rebalance failed"),
        }
    }
}

pub struct Projector<P: Projection, S: Store> {
    projection: P,
    settings: ProjectorSettings,
    consumer: Arc<StreamConsumer<Membership<S, P::Document>>>,
    dead_letters: FutureProducer,
    decoder: Decoder<P::Event>,
    shared: Arc<Shared<S, P::Document>>,
}

/// A record taken from the topic, with what became of it.
struct Taken<'c, E> {
    message: BorrowedMessage<'c>,
    /// `None`: the record can never decode and is already in the dead-letter topic.
    event: Option<E>,
    /// The partition's epoch when the record was taken.
    epoch: u64,
}

impl<E> Taken<'_, E> {
    fn offset(&self) -> i64 {
        self.message.offset()
    }

    /// The record's per-key sequence, if it carries a well-formed one.
    fn sequence(&self) -> Option<i64> {
        let headers = self.message.headers()?;
        let header = headers.iter().find(|h| h.key == SEQUENCE_HEADER)?;
        std::str::from_utf8(header.value?).ok()?.parse().ok()
    }
}

/// One partition's share of a batch, ready to fold.
struct PartitionWork<'c, E> {
    partition: i32,
    /// The partition's epoch when the batch was split.
    epoch: u64,
    /// The offset the store has recorded, as far as this projector knows.
    expected: Option<i64>,
    /// In offset order, all above `expected`.
    records: Vec<Taken<'c, E>>,
    /// The document key of each record (`None`: not decoded).
    keys: Vec<Option<String>>,
}

/// A document while a batch folds into it.
struct Working<D> {
    state: Option<D>,
    /// The JSON text of `state` when the store judged it already (a store with limits).
    text: Option<String>,
    /// The highest per-key sequence the document has seen.
    sequence: Option<i64>,
    /// The offset of the last event folded into it in this batch; `None`: untouched.
    offset: Option<i64>,
}

impl<D> Working<D> {
    /// A document as loaded or kept, before the batch folds into it.
    fn new(state: Option<D>, sequence: Option<i64>) -> Self {
        Self {
            state,
            text: None,
            sequence,
            offset: None,
        }
    }
}

impl<P: Projection, S: Store> Projector<P, S> {
    /// A projector of `projection` into `store`. Needs a multi-threaded tokio runtime: the
    /// store is read from inside the consumer's rebalance callback.
    pub fn new(projection: P, store: S, settings: ProjectorSettings) -> Result<Self> {
        let runtime = Handle::try_current()
            .map_err(|_| Error::Config("a projector needs a tokio runtime".to_owned()))?;
        if runtime.runtime_flavor() != RuntimeFlavor::MultiThread {
            return Err(Error::Config(
                "a projector needs a multi-threaded tokio runtime (#[tokio::main], or flavor = \"multi_thread\" in tests)".to_owned(),
            ));
        }
        let shared = Arc::new(Shared {
            store: Arc::new(store),
            topic: settings.topic.clone(),
            status: Arc::new(ProjectorStatus::default()),
            positions: Mutex::default(),
            held: Mutex::default(),
            epochs: Mutex::default(),
            documents: Mutex::default(),
            caching: AtomicBool::new(true),
            fatal: Mutex::default(),
            wake: Notify::new(),
            stopping: Arc::default(),
            runtime,
        });
        let consumer: StreamConsumer<Membership<S, P::Document>> =
            topics::kafka::consumer_config(&settings.kafka, &settings.group_id)
                .create_with_context(Membership {
                    shared: shared.clone(),
                })?;
        let dead_letters = topics::kafka::producer_config(&settings.kafka).create()?;
        let decoder = Decoder::new(Registry::new(&settings.kafka.schema_registry_url));
        Ok(Self {
            projection,
            settings,
            consumer: Arc::new(consumer),
            dead_letters,
            decoder,
            shared,
        })
    }

    pub fn status(&self) -> Arc<ProjectorStatus> {
        self.shared.status.clone()
    }

    fn store(&self) -> &S {
        &self.shared.store
    }

    /// Runs until `shutdown` completes. A batch not yet written when it does is dropped: it
    /// was never recorded, so whoever owns its partitions next folds it again.
    pub async fn run(self, shutdown: impl Future<Output = ()> + Send + 'static) -> Result<()> {
        self.consumer.subscribe(&[&self.settings.topic])?;
        info!(projection = self.projection.name(), group = %self.settings.group_id, topic = %self.settings.topic, "projector started");
        let stopping = self.shared.stopping.clone();
        let (stop, mut stopped) = tokio::sync::watch::channel(false);
        let watcher = tokio::spawn(async move {
            shutdown.await;
            stopping.store(true, Ordering::Relaxed);
            let _ = stop.send(true);
        });
        let shutdown = async move {
            let _ = stopped.wait_for(|stop| *stop).await;
        };
        tokio::pin!(shutdown);
        let outcome = self.run_until(shutdown).await;
        watcher.abort();
        info!(projection = self.projection.name(), "projector stopped");
        outcome
    }

    async fn run_until(
        &self,
        mut shutdown: std::pin::Pin<&mut impl Future<Output = ()>>,
    ) -> Result<()> {
        // Records taken while the previous batch was being written: the next batch.
        let mut next = Vec::with_capacity(self.settings.max_batch);
        loop {
            if let Some(e) = lock(&self.shared.fatal).take() {
                return Err(e);
            }
            // Retries inside a batch wait out outages for as long as they last; shutdown
            // interrupts them. An interrupted batch was never committed, so its records are
            // redelivered to whoever owns the partitions next.
            let step = async {
                // Under a steady flow the wait below never runs: held partitions whose delay
                // is over are resumed here too.
                self.resume_due().await?;
                if next.is_empty() {
                    self.wait_for_record(&mut next).await?;
                }
                self.take_fetched(&mut next).await?;
                if next.is_empty() {
                    return Ok(());
                }
                let batch =
                    std::mem::replace(&mut next, Vec::with_capacity(self.settings.max_batch));
                self.apply_while_taking(batch, &mut next).await
            };
            tokio::select! {
                () = &mut shutdown => return Ok(()),
                result = step => result?,
            }
        }
    }

    /// Waits until a record is taken into `taken`. Returns early (maybe with nothing) when the
    /// rebalance callback found a fatal error.
    async fn wait_for_record<'c>(&'c self, taken: &mut Vec<Taken<'c, P::Event>>) -> Result<()> {
        while taken.is_empty() {
            let retry_at = lock(&self.shared.held)
                .values()
                .filter_map(|h| h.resume_at)
                .min();
            let message = tokio::select! {
                received = self.consumer.recv() => match received {
                    Ok(message) => message,
                    Err(e) => {
                        // librdkafka recovers on its own; a persistent error (a deleted
                        // topic) must not spin.
                        warn!(error = %e, "consumer error");
                        tokio::time::sleep(CONSUMER_ERROR_PAUSE).await;
                        continue;
                    }
                },
                () = self.shared.wake.notified() => return Ok(()),
                () = sleep_until(retry_at) => {
                    self.resume_due().await?;
                    continue;
                }
                () = tokio::time::sleep(IDLE_TICK) => {
                    self.note_idle_positions();
                    continue;
                }
            };
            taken.extend(self.take(message).await?);
        }
        Ok(())
    }

    /// Takes whatever is already fetched into `taken`, up to `max_batch`, without waiting.
    async fn take_fetched<'c>(&'c self, taken: &mut Vec<Taken<'c, P::Event>>) -> Result<()> {
        while taken.len() < self.settings.max_batch {
            match self.consumer.recv().now_or_never() {
                Some(Ok(message)) => taken.extend(self.take(message).await?),
                Some(Err(e)) => {
                    warn!(error = %e, "consumer error");
                    break;
                }
                None => break,
            }
        }
        Ok(())
    }

    /// Writes `batch` and, while the store works, takes and decodes the records that arrive
    /// into `next` (up to `max_batch`). Batches so size themselves: under a backlog the next
    /// one fills while the store writes this one; when live, a record is written as soon
    /// as it arrives.
    async fn apply_while_taking<'c>(
        &'c self,
        batch: Vec<Taken<'c, P::Event>>,
        next: &mut Vec<Taken<'c, P::Event>>,
    ) -> Result<()> {
        let write = self.apply(batch);
        tokio::pin!(write);
        let mut taking = true;
        loop {
            tokio::select! {
                biased;
                result = &mut write => return result,
                received = self.consumer.recv(), if taking && next.len() < self.settings.max_batch => {
                    match received {
                        Ok(message) => next.extend(self.take(message).await?),
                        Err(e) => {
                            // Not again until this batch is written: an error must not spin.
                            warn!(error = %e, "consumer error");
                            taking = false;
                        }
                    }
                }
            }
        }
    }
    /// Decodes a record; one that can never decode goes to the dead-letter topic. An
    /// unreachable registry, or one that does not know the record's schema id yet, holds the
    /// record's partition (`None`): a registry that lost its schemas must not turn good events
    /// into dead letters, nor stop the partitions it is not needed for.
    async fn take<'c>(&self, message: BorrowedMessage<'c>) -> Result<Option<Taken<'c, P::Event>>> {
        let partition = message.partition();
        if lock(&self.shared.held)
            .get(&partition)
            .is_some_and(|h| h.resume_at.is_some())
        {
            // Fetched before the partition was held; it is read again once resumed.
            return Ok(None);
        }
        let payload = message.payload().unwrap_or_default();
        match self.decoder.decode(payload).await {
            Ok(event) => {
                self.release(partition);
                Ok(Some(Taken {
                    epoch: self.shared.epoch(partition),
                    message,
                    event: Some(event),
                }))
            }
            Err(e) if e.is_retryable() => {
                self.hold(partition, message.offset(), &e);
                Ok(None)
            }
            Err(e) => {
                self.release(partition);
                self.dead_letter(&message, &e.to_string()).await?;
                Ok(Some(Taken {
                    epoch: self.shared.epoch(partition),
                    message,
                    event: None,
                }))
            }
        }
    }

    /// Notes where the consumer stands on every partition while nothing is in flight.
    fn note_idle_positions(&self) {
        let Ok(positions) = self.consumer.position() else {
            return;
        };
        let mut idle = lock(&self.shared.status.idle_positions);
        for element in positions.elements() {
            if let Offset::Offset(next) = element.offset() {
                idle.insert(element.partition(), next);
            }
        }
    }

    /// Pauses `partition` at `offset` until the registry may answer, with growing delays.
    fn hold(&self, partition: i32, offset: i64, error: &topics::Error) {
        let mut held = lock(&self.shared.held);
        let delay = held
            .get(&partition)
            .map_or(Duration::from_millis(100), |h| {
                (h.delay * 2).min(Duration::from_secs(5))
            });
        held.insert(
            partition,
            Held {
                offset,
                resume_at: Some(Instant::now() + delay),
                delay,
            },
        );
        let mut paused = TopicPartitionList::new();
        paused.add_partition(&self.settings.topic, partition);
        if let Err(e) = self.consumer.pause(&paused) {
            warn!(error = %e, partition, "pausing a partition failed");
        }
        warn!(error = %error, partition, offset, ?delay, "decoding waits for the registry; partition paused");
        lock(&self.shared.status.registry_waits).insert(
            partition,
            format!("partition {partition} at offset {offset} waits for the registry: {error}"),
        );
    }

    /// A record of `partition` decoded (or the partition starts over elsewhere): it is no
    /// longer held.
    fn release(&self, partition: i32) {
        if lock(&self.shared.held).remove(&partition).is_some() {
            lock(&self.shared.status.registry_waits).remove(&partition);
        }
    }

    /// Seeks every held partition whose delay is over back to its record and resumes it.
    async fn resume_due(&self) -> Result<()> {
        let now = Instant::now();
        let due: Vec<(i32, i64)> = lock(&self.shared.held)
            .iter_mut()
            .filter(|(_, h)| h.resume_at.is_some_and(|at| at <= now))
            .map(|(partition, h)| {
                h.resume_at = None;
                (*partition, h.offset)
            })
            .collect();
        for (partition, offset) in due {
            self.seek_and_resume(partition, Offset::Offset(offset))
                .await?;
        }
        Ok(())
    }

    /// Seeks `partition` to `start` and resumes it, waiting out Kafka.
    async fn seek_and_resume(&self, partition: i32, start: Offset) -> Result<()> {
        let seek = || async {
            let (consumer, topic) = (self.consumer.clone(), self.settings.topic.clone());
            tokio::task::spawn_blocking(move || {
                consumer.seek(&topic, partition, start, KAFKA_TIMEOUT)?;
                let mut resumed = TopicPartitionList::new();
                resumed.add_partition(&topic, partition);
                Ok::<_, Error>(consumer.resume(&resumed)?)
            })
            .await
            .unwrap_or_else(|e| Err(Error::Kafka(KafkaError::Seek(e.to_string()))))
        };
        seek.retry(forever())
            .when(Error::is_retryable)
            .notify(|e, delay| warn!(error = %e, ?delay, partition, "seeking a partition failed; retrying"))
            .await
    }

    /// Sends `message` to the dead-letter topic. Losing the record is the one thing a
    /// dead-letter topic must not do: Kafka is waited out rather than the record given up.
    async fn dead_letter(&self, message: &BorrowedMessage<'_>, reason: &str) -> Result<()> {
        warn!(
            topic = message.topic(),
            partition = message.partition(),
            offset = message.offset(),
            reason,
            "dead-lettering a record"
        );
        let send = || async {
            let headers = crate::dead_letters::headers(message, reason, &self.settings.group_id);
            let mut record = FutureRecord::<[u8], [u8]>::to(&self.settings.dead_letter_topic)
                .headers(headers)
                .payload(message.payload().unwrap_or_default());
            if let Some(key) = message.key() {
                record = record.key(key);
            }
            self.dead_letters
                .send(record, Duration::from_secs(30))
                .await
                .map_err(|(e, _)| Error::Kafka(e))
        };
        // A record the dead-letter topic can never take stops the projector rather than being
        // lost or retried forever.
        let refused = |e: &Error| matches!(e, Error::Kafka(e) if crate::dead_letters::refused(e));
        send.retry(forever())
            .when(|e| e.is_retryable() && !refused(e))
            .notify(|e, delay| warn!(error = %e, ?delay, "dead-letter topic unavailable; retrying"))
            .await
            .map_err(|e| match e {
                e if refused(&e) => Error::Config(format!(
                    "{} partition {} offset {} cannot be dead-lettered to {}: {e}",
                    message.topic(),
                    message.partition(),
                    message.offset(),
                    self.settings.dead_letter_topic
                )),
                e => e,
            })?;
        self.shared
            .status
            .dead_lettered
            .fetch_add(1, Ordering::Relaxed);
        telemetry::metrics::counter!(telemetry::names::PROJECTOR_DEAD_LETTERED, "group" => self.settings.group_id.clone())
            .increment(1);
        Ok(())
    }

    /// Folds and writes the batch, the partitions side by side (one after the other when a
    /// document key is folded from two partitions), then commits the offsets to Kafka.
    async fn apply(&self, taken: Vec<Taken<'_, P::Event>>) -> Result<()> {
        let mut partitions: BTreeMap<i32, Vec<Taken<'_, P::Event>>> = BTreeMap::new();
        for record in taken {
            partitions
                .entry(record.message.partition())
                .or_default()
                .push(record);
        }
        let mut work = Vec::with_capacity(partitions.len());
        for (partition, mut records) in partitions {
            // Taken before the partition was sought elsewhere: it is read again from there.
            let epoch = self.shared.epoch(partition);
            records.retain(|r| r.epoch == epoch);
            records.sort_by_key(Taken::offset);
            // Not ours any more (revoked while the batch was fetched): the new owner folds them.
            let Some(expected) = lock(&self.shared.positions).get(&partition).copied() else {
                continue;
            };
            // Redelivered below what the store has: applied already.
            records.retain(|r| r.offset() > expected.unwrap_or(-1));
            if records.is_empty() {
                continue;
            }
            let keys = records
                .iter()
                .map(|r| r.event.as_ref().map(|e| self.projection.key(e)))
                .collect();
            work.push(PartitionWork {
                partition,
                epoch,
                expected,
                records,
                keys,
            });
        }
        // A fold that reads state must see the write of the same key from another partition.
        let side_by_side = !self.projection.reads_state() || {
            let mut owners: HashMap<&str, i32> = HashMap::new();
            work.iter().all(|w| {
                w.keys
                    .iter()
                    .flatten()
                    .all(|k| *owners.entry(k.as_str()).or_insert(w.partition) == w.partition)
            })
        };
        let outcomes = if side_by_side {
            futures::future::join_all(work.iter().map(|w| self.apply_partition(w))).await
        } else {
            let mut outcomes = Vec::with_capacity(work.len());
            for w in &work {
                outcomes.push(self.apply_partition(w).await);
            }
            outcomes
        };
        let mut commits = TopicPartitionList::new();
        let mut failed = None;
        for outcome in outcomes {
            match outcome {
                Ok(Some((partition, last))) => {
                    commits.add_partition_offset(
                        &self.settings.topic,
                        partition,
                        Offset::Offset(last + 1),
                    )?;
                    if let Some(mut element) =
                        commits.find_partition(&self.settings.topic, partition)
                    {
                        element.set_metadata(topics::groups::STORE_OWNED_METADATA);
                    }
                }
                Ok(None) => {}
                Err(e) => {
                    failed.get_or_insert(e);
                }
            }
        }
        if commits.count() > 0 {
            if let Err(e) = self.consumer.commit(&commits, CommitMode::Async) {
                debug!(error = %e, "commit deferred to the next batch");
            }
        }
        failed.map_or(Ok(()), Err)
    }

    /// Folds and writes one partition's records. Returns the partition and its last offset
    /// when written, `None` when the partition was sought back to the store (or moved away).
    async fn apply_partition(&self, w: &PartitionWork<'_, P::Event>) -> Result<Option<(i32, i64)>> {
        let partition = w.partition;
        // Records dead-lettered while folding, so the event-by-event path does not send
        // them twice.
        let mut dead = HashSet::new();
        let written = match self
            .write(
                partition, w.epoch, w.expected, &w.records, &w.keys, &mut dead,
            )
            .await
        {
            Err(e @ Error::Rejected { .. }) => {
                warn!(error = %e, partition, "the store refused part of a batch; writing it event by event");
                self.write_one_by_one(
                    partition, w.epoch, w.expected, &w.records, &w.keys, &mut dead,
                )
                .await
            }
            written => written,
        };
        match written {
            Ok(recorded) => {
                // Revoked or positioned again while writing: the position is the new one's.
                if self.shared.epoch(partition) != w.epoch {
                    return Ok(None);
                }
                let mut positions = lock(&self.shared.positions);
                let Some(position) = positions.get_mut(&partition) else {
                    return Ok(None);
                };
                *position = Some(recorded);
                Ok(w.records.last().map(|r| (partition, r.offset())))
            }
            Err(Error::OffsetMoved {
                expected, found, ..
            }) => {
                warn!(partition, ?expected, ?found, "the store's offset moved under the projector; folding again from what the store has");
                self.reposition(partition).await?;
                Ok(None)
            }
            Err(e) => Err(e),
        }
    }

    /// Folds one partition's records into their documents and writes them with the
    /// partition's last offset, waiting out store outages. Returns the recorded offset.
    /// `keys[i]` is the document key of `records[i]` (`None`: not decoded). Records whose
    /// document the store refuses are dead-lettered (before the write, so a crash never
    /// records their offset without them) and added to `dead`.
    #[allow(clippy::too_many_arguments)]
    async fn write(
        &self,
        partition: i32,
        epoch: u64,
        expected: Option<i64>,
        records: &[Taken<'_, P::Event>],
        keys: &[Option<String>],
        dead: &mut HashSet<i64>,
    ) -> Result<i64> {
        let started = Instant::now();
        let reads_state = self.projection.reads_state();
        let mut documents: HashMap<&str, Working<P::Document>> =
            HashMap::with_capacity(records.len());
        if reads_state {
            let mut wanted: Vec<&str> = keys.iter().flatten().map(String::as_str).collect();
            wanted.sort_unstable();
            wanted.dedup();
            // Kept from this instance's earlier writes, or else loaded.
            let cached = self.shared.take_cached(&wanted);
            let mut missing = Vec::with_capacity(wanted.len());
            for (key, cached) in wanted.into_iter().zip(cached) {
                match cached {
                    Some((state, sequence)) => {
                        documents.insert(key, Working::new(state, sequence));
                    }
                    None => missing.push(key),
                }
            }
            if !missing.is_empty() {
                let stored = self
                    .patiently(partition, || self.store().load_json(&missing))
                    .await?;
                for (key, stored) in missing.into_iter().zip(stored) {
                    let state = stored.json.and_then(|text| {
                        serde_json::from_str(&text)
                            .inspect_err(|e| warn!(key, error = %e, projection = self.projection.name(), "a stored document does not parse as the read model's document; folding it as none"))
                            .ok()
                    });
                    documents.insert(key, Working::new(state, stored.sequence));
                }
            }
        }
        // A store with limits judges every folded document, so which records are
        // dead-lettered never depends on where batches split; the text it judged is the one
        // written when no later event of the batch changes the document. A store without
        // limits gets each document's text once, for the write.
        let measured = self.store().limits_documents();
        let (mut applied, mut duplicates) = (0, 0);
        for (record, key) in records.iter().zip(keys) {
            let (Some(event), Some(key)) = (&record.event, key) else {
                continue;
            };
            let own_key = record.message.key() == Some(key.as_bytes());
            if !own_key {
                self.shared.stop_caching();
            }
            if dead.contains(&record.offset()) {
                continue;
            }
            let document = documents
                .entry(key.as_str())
                .or_insert_with(|| Working::new(None, None));
            // A sequence speaks for the record's key only.
            let sequence = record.sequence().filter(|_| own_key);
            if let (Some(sequence), Some(seen)) = (sequence, document.sequence) {
                if sequence <= seen {
                    duplicates += 1;
                    continue;
                }
            }
            let folded = self.projection.fold(document.state.as_ref(), event);
            let text = if measured {
                let judged = folded.as_ref().map(to_json).transpose().and_then(|text| {
                    match self.store().refuses_json(key, text.as_deref()) {
                        Some(reason) => Err(reason),
                        None => Ok(text),
                    }
                });
                match judged {
                    Ok(text) => text,
                    Err(reason) => {
                        self.dead_letter(&record.message, &reason).await?;
                        dead.insert(record.offset());
                        continue;
                    }
                }
            } else {
                None
            };
            document.state = folded;
            document.text = text;
            document.sequence = sequence.or(document.sequence);
            document.offset = Some(record.offset());
            applied += 1;
        }
        // Each changed document as text, made once per batch unless the store judged it
        // already; what the store holds afterwards (changed and untouched) is kept in the
        // fold's own form.
        let mut kept = Vec::with_capacity(documents.len());
        let mut changes = Vec::with_capacity(documents.len());
        for (key, document) in documents {
            if let Some(offset) = document.offset {
                let change = match (&document.state, document.text) {
                    (None, _) => Change::Delete {
                        key: key.to_owned(),
                    },
                    (Some(_), Some(json)) => Change::PutJson {
                        key: key.to_owned(),
                        json,
                    },
                    // A document type that cannot always be JSON fails here (a store without
                    // limits only): the batch is then written event by event, where the
                    // record that made such a document is dead-lettered with the reason.
                    (Some(state), None) => Change::PutJson {
                        key: key.to_owned(),
                        json: to_json(state).map_err(|message| Error::Rejected {
                            backend: "projector",
                            message,
                        })?,
                    },
                };
                changes.push(Write {
                    offset,
                    sequence: document.sequence,
                    change,
                });
            }
            if reads_state {
                kept.push((key.to_owned(), document.state, document.sequence));
            }
        }
        let batch = PartitionBatch {
            topic: self.settings.topic.clone(),
            partition,
            expected_offset: expected,
            last_offset: records.last().map_or(-1, Taken::offset),
            changes,
        };
        // Consumer spans of the records that carry a trace context, over the store write;
        // none at all when tracing is off.
        let _traces = telemetry::messaging::process_spans(
            records.iter().map(|r| &r.message),
            &self.settings.group_id,
            self.projection.name(),
        );
        let recorded = self
            .patiently(partition, || self.store().write(&batch))
            .await?;
        if reads_state {
            self.shared.keep(partition, epoch, kept);
        }
        let group = self.settings.group_id.clone();
        telemetry::metrics::histogram!(telemetry::names::PROJECTOR_BATCH_DURATION, "group" => group.clone())
            .record(started.elapsed().as_secs_f64());
        telemetry::metrics::counter!(telemetry::names::PROJECTOR_APPLIED, "group" => group)
            .increment(applied);
        let status = &self.shared.status;
        status.applied.fetch_add(applied, Ordering::Relaxed);
        status.duplicates.fetch_add(duplicates, Ordering::Relaxed);
        Ok(recorded)
    }

    /// The slow path after the store refused a batch: each record is written on its own, and
    /// the ones the store refuses are dead-lettered with its reason.
    async fn write_one_by_one(
        &self,
        partition: i32,
        epoch: u64,
        mut expected: Option<i64>,
        records: &[Taken<'_, P::Event>],
        keys: &[Option<String>],
        dead: &mut HashSet<i64>,
    ) -> Result<i64> {
        for (i, record) in records.iter().enumerate() {
            let one = &records[i..=i];
            let recorded = match self
                .write(partition, epoch, expected, one, &keys[i..=i], dead)
                .await
            {
                Err(Error::Rejected { message, .. }) => {
                    self.dead_letter(&record.message, &message).await?;
                    dead.insert(record.offset());
                    // Past the refused record, with nothing changed.
                    let empty = PartitionBatch {
                        topic: self.settings.topic.clone(),
                        partition,
                        expected_offset: expected,
                        last_offset: record.offset(),
                        changes: Vec::new(),
                    };
                    self.patiently(partition, || self.store().write(&empty))
                        .await?
                }
                written => written?,
            };
            expected = Some(recorded);
        }
        // Callers pass at least one record, so something was recorded.
        Ok(expected.unwrap_or(-1))
    }

    /// Seeks `partition` to where the store stands, after the store's offset moved.
    async fn reposition(&self, partition: i32) -> Result<()> {
        let topic = self.settings.topic.clone();
        // Records of the next batch are taken while this one is written: pausing discards
        // what was fetched from the old position, and the new epoch drops what was taken
        // from it already, so only records from the new start are folded.
        let mut paused = TopicPartitionList::new();
        paused.add_partition(&topic, partition);
        if let Err(e) = self.consumer.pause(&paused) {
            warn!(error = %e, partition, "pausing a partition failed");
        }
        self.shared.new_epoch(partition);
        let stored = self
            .patiently(partition, || self.store().applied_offset(&topic, partition))
            .await?;
        let watermarks = (|| async {
            let (consumer, topic) = (self.consumer.clone(), topic.clone());
            tokio::task::spawn_blocking(move || {
                Ok::<_, Error>(consumer.fetch_watermarks(&topic, partition, KAFKA_TIMEOUT)?)
            })
            .await
            .unwrap_or_else(|e| Err(Error::Kafka(KafkaError::Seek(e.to_string()))))
        })
        .retry(forever())
        .when(Error::is_retryable)
        .await?;
        let start = self.shared.start(partition, stored, watermarks)?;
        // Whatever the partition was held at, it now starts over from the store.
        self.release(partition);
        self.seek_and_resume(partition, start).await?;
        lock(&self.shared.positions).insert(partition, stored);
        info!(%topic, partition, ?stored, ?start, "partition sought to where the store stands");
        Ok(())
    }

    /// Runs a store call until it succeeds or fails for good, showing the wait in the status.
    async fn patiently<T, F, Fut>(&self, partition: i32, call: F) -> Result<T>
    where
        F: FnMut() -> Fut,
        Fut: Future<Output = Result<T>>,
    {
        let status = &self.shared.status;
        let result = call
            .retry(forever())
            .when(Error::is_retryable)
            .notify(|e, delay| {
                warn!(error = %e, ?delay, partition, "store unavailable; retrying");
                *lock(&status.store_wait) = Some(format!("store unavailable: {e}"));
            })
            .await;
        lock(&status.store_wait).take();
        result
    }

    /// The offsets as Kafka has them committed, for tests and operators.
    pub fn committed(&self) -> Result<TopicPartitionList> {
        Ok(self.consumer.committed(KAFKA_TIMEOUT)?)
    }
}

/// Sleeps until `at`, or forever.
async fn sleep_until(at: Option<Instant>) {
    match at {
        Some(at) => tokio::time::sleep_until(at.into()).await,
        None => std::future::pending().await,
    }
}

/// Capped exponential backoff without a limit on attempts.
fn forever() -> ExponentialBuilder {
    ExponentialBuilder::default()
        .with_min_delay(Duration::from_millis(50))
        .with_max_delay(Duration::from_secs(5))
        .without_max_times()
}
