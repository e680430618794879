//! The consume → decode → apply → commit loop.
//!
//! Records are taken in batches: whatever is already fetched, up to `max_batch`. Each
//! partition's share of a batch is coalesced (the last change per key wins, which is what a
//! fold means) and written to the store together with the partition's offset. Only then is
//! the offset handed to Kafka, so a crash at any point means redelivery, never loss, and the
//! store's offset check makes redelivery change nothing.

use std::collections::{BTreeSet, HashMap};
use std::future::Future;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use backon::{ExponentialBuilder, Retryable};
use rdkafka::consumer::{CommitMode, Consumer, ConsumerContext, Rebalance, StreamConsumer};
use rdkafka::message::{BorrowedMessage, Header, Headers, Message, OwnedHeaders};
use rdkafka::producer::{FutureProducer, FutureRecord};
use rdkafka::{ClientContext, TopicPartitionList};
use topics::codec::Decoder;
use topics::registry::Registry;
use topics::settings::KafkaSettings;
use tracing::{debug, info, warn};

use crate::error::{Error, Result};
use crate::projection::{Change, Projection};
use crate::store::{PartitionBatch, Store};

/// How long to wait after a consumer error before polling again.
const CONSUMER_ERROR_PAUSE: Duration = Duration::from_millis(200);

/// Headers a dead-lettered record carries, besides its own.
pub const DEAD_LETTER_REASON: &str = "dead-letter.reason";
pub const DEAD_LETTER_TOPIC: &str = "dead-letter.topic";
pub const DEAD_LETTER_PARTITION: &str = "dead-letter.partition";
pub const DEAD_LETTER_OFFSET: &str = "dead-letter.offset";

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
    assigned: Mutex<BTreeSet<i32>>,
}

impl ProjectorStatus {
    /// The partitions this instance currently owns.
    pub fn assigned(&self) -> Vec<i32> {
        lock(&self.assigned).iter().copied().collect()
    }
}

fn lock<T>(mutex: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    mutex
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
}

/// Keeps [`ProjectorStatus::assigned`] in step with the group's rebalances.
struct GroupMembership {
    status: Arc<ProjectorStatus>,
}

impl ClientContext for GroupMembership {}

impl ConsumerContext for GroupMembership {
    fn post_rebalance(
        &self,
        _consumer: &rdkafka::consumer::BaseConsumer<Self>,
        rebalance: &Rebalance<'_>,
    ) {
        let mut assigned = lock(&self.status.assigned);
        match rebalance {
            // Cooperative rebalancing hands out and takes back partitions incrementally.
            Rebalance::Assign(partitions) => {
                assigned.extend(partitions.elements().iter().map(|p| p.partition()));
                info!(partitions = ?*assigned, "partitions assigned");
            }
            Rebalance::Revoke(partitions) => {
                for p in partitions.elements() {
                    assigned.remove(&p.partition());
                }
                info!(partitions = ?*assigned, "partitions revoked");
            }
            Rebalance::Error(e) => warn!(error = %e, "rebalance failed"),
        }
    }
}

pub struct Projector<P: Projection, S: Store> {
    projection: P,
    store: S,
    settings: ProjectorSettings,
    consumer: StreamConsumer<GroupMembership>,
    dead_letters: FutureProducer,
    decoder: Decoder<P::Event>,
    status: Arc<ProjectorStatus>,
}

/// A record taken from the topic, reduced to what the batch needs.
enum Taken<E> {
    Event {
        partition: i32,
        offset: i64,
        event: E,
    },
    /// A record that can never apply; it is already in the dead-letter topic.
    DeadLettered { partition: i32, offset: i64 },
}

impl<P: Projection, S: Store> Projector<P, S> {
    pub fn new(projection: P, store: S, settings: ProjectorSettings) -> Result<Self> {
        let status = Arc::new(ProjectorStatus::default());
        let consumer: StreamConsumer<GroupMembership> =
            topics::kafka::consumer_config(&settings.kafka, &settings.group_id)
                .create_with_context(GroupMembership {
                    status: status.clone(),
                })?;
        let dead_letters = topics::kafka::producer_config(&settings.kafka).create()?;
        let decoder = Decoder::new(Registry::new(&settings.kafka.schema_registry_url));
        Ok(Self {
            projection,
            store,
            settings,
            consumer,
            dead_letters,
            decoder,
            status,
        })
    }

    pub fn status(&self) -> Arc<ProjectorStatus> {
        self.status.clone()
    }

    /// Runs until `shutdown` completes, then finishes the batch in hand and commits.
    pub async fn run(self, shutdown: impl Future<Output = ()>) -> Result<()> {
        self.consumer.subscribe(&[&self.settings.topic])?;
        info!(projection = self.projection.name(), group = %self.settings.group_id, topic = %self.settings.topic, "projector started");
        tokio::pin!(shutdown);
        loop {
            // Retries inside a batch wait out outages for as long as they last; shutdown
            // interrupts them. An interrupted batch was never committed, so its records are
            // redelivered to whoever owns the partitions next.
            let step = async {
                let taken = self.next_batch().await?;
                self.apply(taken).await
            };
            tokio::select! {
                () = &mut shutdown => break,
                result = step => result?,
            }
        }
        // Offsets of everything applied are stored; a final synchronous commit spares the next
        // owner of these partitions a redelivery.
        if let Err(e) = self.consumer.commit_consumer_state(CommitMode::Sync) {
            debug!(error = %e, "final commit");
        }
        info!(projection = self.projection.name(), "projector stopped");
        Ok(())
    }

    /// Waits for a record, then takes whatever else is already fetched, up to `max_batch`.
    async fn next_batch(&self) -> Result<Vec<Taken<P::Event>>> {
        let first = loop {
            match self.consumer.recv().await {
                Ok(message) => break message,
                Err(e) => {
                    // librdkafka recovers on its own; a persistent error (a deleted topic)
                    // must not spin.
                    warn!(error = %e, "consumer error");
                    tokio::time::sleep(CONSUMER_ERROR_PAUSE).await;
                }
            }
        };
        let mut taken = Vec::with_capacity(self.settings.max_batch);
        taken.push(self.take(&first).await?);
        while taken.len() < self.settings.max_batch {
            match tokio::time::timeout(Duration::ZERO, self.consumer.recv()).await {
                Ok(Ok(message)) => taken.push(self.take(&message).await?),
                Ok(Err(e)) => warn!(error = %e, "consumer error"),
                Err(_) => break,
            }
        }
        Ok(taken)
    }

    /// Decodes a record; one that can never decode goes to the dead-letter topic.
    async fn take(&self, message: &BorrowedMessage<'_>) -> Result<Taken<P::Event>> {
        let (partition, offset) = (message.partition(), message.offset());
        let payload = message.payload().unwrap_or_default();
        let decoded = (|| self.decoder.decode(payload))
            .retry(forever())
            .when(topics::Error::is_retryable)
            .notify(|e, delay| warn!(error = %e, ?delay, "decoding waits for the registry"))
            .await;
        match decoded {
            Ok(event) => Ok(Taken::Event {
                partition,
                offset,
                event,
            }),
            Err(e) => {
                let reason = e.to_string();
                // Losing the record is the one thing a dead-letter topic must not do: wait
                // for Kafka rather than give up on it.
                (|| self.dead_letter(message, &reason))
                    .retry(forever())
                    .when(Error::is_retryable)
                    .notify(|e, delay| warn!(error = %e, ?delay, "dead-letter topic unavailable; retrying"))
                    .await?;
                Ok(Taken::DeadLettered { partition, offset })
            }
        }
    }

    async fn dead_letter(&self, message: &BorrowedMessage<'_>, reason: &str) -> Result<()> {
        warn!(
            topic = message.topic(),
            partition = message.partition(),
            offset = message.offset(),
            reason,
            "dead-lettering a record"
        );
        let partition = message.partition().to_string();
        let offset = message.offset().to_string();
        let mut headers = OwnedHeaders::new();
        for header in message.headers().into_iter().flat_map(|h| h.iter()) {
            headers = headers.insert(header);
        }
        let headers = [
            (DEAD_LETTER_REASON, reason),
            (DEAD_LETTER_TOPIC, message.topic()),
            (DEAD_LETTER_PARTITION, partition.as_str()),
            (DEAD_LETTER_OFFSET, offset.as_str()),
        ]
        .into_iter()
        .fold(headers, |headers, (key, value)| {
            headers.insert(Header {
                key,
                value: Some(value),
            })
        });
        let mut record = FutureRecord::<[u8], [u8]>::to(&self.settings.dead_letter_topic)
            .headers(headers)
            .payload(message.payload().unwrap_or_default());
        if let Some(key) = message.key() {
            record = record.key(key);
        }
        self.dead_letters
            .send(record, Duration::from_secs(30))
            .await
            .map_err(|(e, _)| Error::Kafka(e))?;
        self.status.dead_lettered.fetch_add(1, Ordering::Relaxed);
        Ok(())
    }

    /// Writes the batch partition by partition, then hands the offsets to Kafka.
    async fn apply(&self, taken: Vec<Taken<P::Event>>) -> Result<()> {
        let mut batches: HashMap<i32, PartitionBatch> = HashMap::new();
        let mut latest: HashMap<i32, HashMap<String, (i64, Change)>> = HashMap::new();
        let mut events = 0;
        for item in taken {
            let (partition, offset) = match &item {
                Taken::Event {
                    partition, offset, ..
                }
                | Taken::DeadLettered { partition, offset } => (*partition, *offset),
            };
            let batch = batches.entry(partition).or_insert_with(|| PartitionBatch {
                topic: self.settings.topic.clone(),
                partition,
                last_offset: offset,
                changes: Vec::new(),
            });
            batch.last_offset = batch.last_offset.max(offset);
            if let Taken::Event { event, .. } = item {
                events += 1;
                let by_key = latest.entry(partition).or_default();
                for change in self.projection.apply(&event) {
                    by_key.insert(change.key().to_owned(), (offset, change));
                }
            }
        }
        for (partition, batch) in &mut batches {
            let mut changes: Vec<_> = latest
                .remove(partition)
                .unwrap_or_default()
                .into_values()
                .collect();
            changes.sort_by_key(|(offset, _)| *offset);
            batch.changes = changes;
            self.write(batch).await?;
            // librdkafka's offset store commits `offset + 1`: the next record to read.
            if let Err(e) =
                self.consumer
                    .store_offset(&batch.topic, batch.partition, batch.last_offset)
            {
                // The partition was revoked meanwhile; its new owner skips what we applied.
                debug!(partition = batch.partition, error = %e, "offset not stored");
            }
        }
        self.status.applied.fetch_add(events, Ordering::Relaxed);
        if let Err(e) = self.consumer.commit_consumer_state(CommitMode::Async) {
            debug!(error = %e, "commit deferred to the next batch");
        }
        Ok(())
    }

    /// Writes one partition's batch, waiting out store outages: an event is never skipped.
    async fn write(&self, batch: &PartitionBatch) -> Result<()> {
        (|| self.store.write(batch))
            .retry(forever())
            .when(Error::is_retryable)
            .notify(|e, delay| warn!(error = %e, ?delay, partition = batch.partition, "store unavailable; retrying"))
            .await?;
        Ok(())
    }

    /// The offsets as Kafka has them committed, for tests and operators.
    pub fn committed(&self) -> Result<TopicPartitionList> {
        Ok(self.consumer.committed(Duration::from_secs(10))?)
    }
}

/// Capped exponential backoff without a limit on attempts.
fn forever() -> ExponentialBuilder {
    ExponentialBuilder::default()
        .with_min_delay(Duration::from_millis(50))
        .with_max_delay(Duration::from_secs(5))
        .without_max_times()
}
