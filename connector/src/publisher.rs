//! Kafka side: an idempotent producer (acks=all), topic creation, and the
//! schema registry through `topics::registry` with the connector's retry policy.
//!
//! Deliveries are accounted per group ([`Deliveries`]: a transaction's events, a batch of
//! snapshot rows), not per record: each record carries a reference to its group's counter,
//! librdkafka's delivery report decrements it, and the group is awaited once. A future per
//! record (rdkafka's `FutureProducer`) cost two allocations and a channel per row.

use std::collections::HashSet;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use backon::{ExponentialBuilder, Retryable};
use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
use rdkafka::client::{ClientContext, DefaultClientContext};
use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use rdkafka::producer::{BaseRecord, DeliveryResult, Producer, ProducerContext, ThreadedProducer};
use serde_json::Value as Json;
use tokio::sync::Notify;

use crate::config::Config;
use crate::error::{one_line, Error, Result};

/// Records sent together whose deliveries are awaited together, in one [`Deliveries::wait`].
#[derive(Default)]
pub struct Deliveries {
    group: Option<Arc<Group>>,
    sent: usize,
}

/// What a group's records share: how many are not yet acknowledged, the first failure.
#[derive(Default)]
struct Group {
    outstanding: AtomicUsize,
    failure: Mutex<Option<String>>,
    settled: Notify,
}

impl Deliveries {
    /// Records handed to the producer in this group.
    pub fn len(&self) -> usize {
        self.sent
    }

    pub fn is_empty(&self) -> bool {
        self.sent == 0
    }

    fn group(&mut self) -> &Arc<Group> {
        self.group.get_or_insert_with(Arc::default)
    }

    /// Waits until Kafka acknowledged every record of the group; the first record it
    /// refused is the error.
    pub async fn wait(self) -> Result<()> {
        let Some(group) = self.group else {
            return Ok(());
        };
        // `notify_one` leaves a permit when nobody waits, so a report between the load and
        // the wait is not missed; a permit left from before the last send only loops once.
        while group.outstanding.load(Ordering::Acquire) > 0 {
            group.settled.notified().await;
        }
        let failure = group.failure.lock().expect("poisoned").take();
        failure.map_or(Ok(()), |reason| Err(Error::Kafka(reason)))
    }
}

/// The producer's context: a delivery report settles one record of its group.
struct Counting;

impl ClientContext for Counting {}

impl ProducerContext for Counting {
    type DeliveryOpaque = Arc<Group>;

    fn delivery(&self, result: &DeliveryResult<'_>, group: Arc<Group>) {
        if let Err((e, _)) = result {
            group
                .failure
                .lock()
                .expect("poisoned")
                .get_or_insert_with(|| one_line(e));
        }
        if group.outstanding.fetch_sub(1, Ordering::AcqRel) == 1 {
            group.settled.notify_one();
        }
    }
}

pub struct Publisher {
    /// The connector's `name`, for the failure counter's label.
    name: String,
    producer: Arc<ThreadedProducer<Counting>>,
    admin: AdminClient<DefaultClientContext>,
    registry: Registry,
    partitions: i32,
    replication: i32,
    known_topics: Mutex<HashSet<String>>,
}

impl Publisher {
    /// Connects and checks that the brokers answer, so that a wrong address
    /// fails at startup with one line instead of buffering forever.
    pub async fn connect(cfg: &Config) -> Result<Self> {
        // The platform's producer (idempotent, acks=all, lz4) with the connector's overrides.
        let mut client = topics::kafka::producer_config(&topics::settings::KafkaSettings {
            kafka_bootstrap_servers: cfg.kafka_bootstrap_servers.clone(),
            schema_registry_url: cfg.schema_registry_url.clone(),
        });
        client
            // Never give up on a record: during a Kafka outage the connector
            // waits (and stops reading WAL once the queue is full) instead of
            // dropping changes.
            .set("message.timeout.ms", "0")
            // Configurable (`linger_ms`) to trade commit-to-Kafka latency for batching.
            .set("linger.ms", cfg.linger_ms.to_string())
            // A deep local queue: a transaction of many rows is handed over
            // without waiting on QueueFull at every batch.
            .set("queue.buffering.max.messages", "200000")
            // Java's murmur2 on the key bytes, like the Java producer Debezium
            // runs in: a key lands on the same partition as with Debezium.
            .set("partitioner", "murmur2_random")
            // librdkafka's own log to errors only: the connector reports
            // broker trouble itself (status, one-line errors).
            .set("log_level", "3");
        let producer = Arc::new(client.create_with_context::<_, ThreadedProducer<_>>(Counting)?);
        let admin: AdminClient<DefaultClientContext> = client.create()?;

        let servers = cfg.kafka_bootstrap_servers.clone();
        let timeout = Duration::from_millis(cfg.kafka_connect_timeout_ms);
        let p = producer.clone();
        tokio::task::spawn_blocking(move || p.client().fetch_metadata(None, timeout))
            .await
            .map_err(|e| Error::Kafka(e.to_string()))?
            .map_err(|source| Error::KafkaUnreachable { servers, source })?;

        Ok(Publisher {
            name: cfg.name.clone(),
            producer,
            admin,
            registry: Registry::new(&cfg.schema_registry_url),
            partitions: cfg.topic_partitions,
            replication: cfg.topic_replication_factor,
            known_topics: Mutex::new(HashSet::new()),
        })
    }

    pub fn registry(&self) -> &Registry {
        &self.registry
    }

    /// Creates the topic once per process; "already exists" is success.
    pub async fn ensure_topic(&self, topic: &str, compacted: bool) -> Result<()> {
        if self.known_topics.lock().expect("poisoned").contains(topic) {
            return Ok(());
        }
        let mut new = NewTopic::new(
            topic,
            self.partitions,
            TopicReplication::Fixed(self.replication),
        );
        if compacted {
            new = NewTopic::new(topic, 1, TopicReplication::Fixed(self.replication))
                .set("cleanup.policy", "compact");
        }
        let opts = AdminOptions::new().operation_timeout(Some(Duration::from_secs(30)));
        let results = self.admin.create_topics([&new], &opts).await?;
        for r in results {
            match r {
                Ok(_) | Err((_, RDKafkaErrorCode::TopicAlreadyExists)) => {}
                Err((t, code)) => return Err(Error::Kafka(format!("creating topic {t}: {code}"))),
            }
        }
        self.known_topics
            .lock()
            .expect("poisoned")
            .insert(topic.to_string());
        Ok(())
    }

    /// Hands the record to librdkafka, in the group `out`. When the local queue is full
    /// (Kafka slow or down) this waits, which is the back-pressure that stops WAL
    /// consumption until Kafka catches up.
    pub async fn send(
        &self,
        topic: &str,
        key: Option<&[u8]>,
        value: Option<&[u8]>,
        out: &mut Deliveries,
    ) -> Result<()> {
        self.send_with_headers(topic, key, value, &[], out).await
    }

    /// [`Publisher::send`] with record headers.
    pub async fn send_with_headers(
        &self,
        topic: &str,
        key: Option<&[u8]>,
        value: Option<&[u8]>,
        headers: &[(&str, &[u8])],
        out: &mut Deliveries,
    ) -> Result<()> {
        let group = out.group();
        let send = || {
            let mut record: BaseRecord<'_, [u8], [u8], Arc<Group>> =
                BaseRecord::with_opaque_to(topic, Arc::clone(group));
            if let Some(k) = key {
                record = record.key(k);
            }
            if let Some(v) = value {
                record = record.payload(v);
            }
            if !headers.is_empty() {
                let mut h = rdkafka::message::OwnedHeaders::new_with_capacity(headers.len());
                for (name, v) in headers {
                    h = h.insert(rdkafka::message::Header {
                        key: name,
                        value: Some(*v),
                    });
                }
                record = record.headers(h);
            }
            // Counted before the hand-over: its report may come before `send` returns.
            group.outstanding.fetch_add(1, Ordering::AcqRel);
            self.producer.send(record).map_err(|(e, _)| {
                group.outstanding.fetch_sub(1, Ordering::AcqRel);
                e
            })
        };
        let queue_full = |e: &KafkaError| {
            matches!(
                e,
                KafkaError::MessageProduction(RDKafkaErrorCode::QueueFull)
            )
        };
        let sent = match send() {
            Err(e) if queue_full(&e) => {
                // A full local queue (Kafka slower than the WAL, or away) is waited out: the
                // record is offered again until librdkafka has room, for as long as it takes.
                let backoff = ExponentialBuilder::default()
                    .with_min_delay(Duration::from_millis(5))
                    .with_max_delay(Duration::from_millis(200))
                    .with_jitter()
                    .without_max_times();
                (|| async { send() }).retry(backoff).when(queue_full).await
            }
            sent => sent,
        };
        match sent {
            Ok(()) => {
                out.sent += 1;
                Ok(())
            }
            Err(e) => {
                crate::offsets::publish_failure(&self.name, "send");
                Err(e.into())
            }
        }
    }

    pub fn flush(&self, timeout: Duration) -> Result<()> {
        self.producer.flush(timeout).map_err(Into::into)
    }
}

/// Registers schemas under `<topic>-key` / `<topic>-value` (TopicNameStrategy) through the
/// shared [`topics::registry::Registry`], whose id cache per (subject, schema) means the
/// registry is only asked when a table's columns change.
pub struct Registry {
    inner: topics::registry::Registry,
}

impl Registry {
    pub fn new(url: &str) -> Self {
        Registry {
            inner: topics::registry::Registry::new(url),
        }
    }

    pub fn url(&self) -> &str {
        self.inner.base_url()
    }

    /// Registers `schema` for `table` under `subject` and returns its id.
    ///
    /// A registry that is down, times out or answers 5xx/408/429 is waited for
    /// without limit (the stream is held back meanwhile, with a warning per
    /// attempt): skipping the change or exiting would both be worse. An
    /// incompatible schema (409) is final, with the column change named.
    pub async fn register(&self, subject: &str, table: &str, schema: &Json) -> Result<u32> {
        let text = schema.to_string();
        let backoff = ExponentialBuilder::default()
            .with_min_delay(Duration::from_millis(200))
            .with_max_delay(Duration::from_secs(5))
            .with_jitter()
            .without_max_times();
        let id = (|| self.inner.id_for(subject, &text))
            .retry(backoff)
            .when(topics::Error::is_retryable)
            .notify(|e, wait| {
                tracing::warn!(error = %one_line(e), %subject, retry_in_ms = wait.as_millis() as u64,
                    "schema registry unavailable; holding the stream until it answers");
            })
            .await;
        match id {
            Err(topics::Error::IncompatibleSchema { reason, .. }) => {
                let change = match self.latest(subject).await {
                    Some(old) => crate::schema::describe_change(&old, schema),
                    None => "its schema changes".to_string(),
                };
                Err(Error::SchemaIncompatible {
                    table: table.to_string(),
                    subject: subject.to_string(),
                    change,
                    reason: one_line(&reason),
                })
            }
            other => Ok(other?),
        }
    }

    /// The latest registered schema of `subject`, if the registry says.
    async fn latest(&self, subject: &str) -> Option<Json> {
        let latest = self.inner.latest(subject).await.ok()??;
        serde_json::from_str(&latest.schema).ok()
    }

    /// `Ok` when the registry answers (for `status`).
    pub async fn check(&self) -> Result<()> {
        Ok(self.inner.check().await?)
    }
}
