//! The relay's transactional producer: one Kafka transaction per [`Publisher::publish`].
//!
//! Every publisher of one relay role uses the same `transactional.id`. [`Publisher::start`]
//! calls `init_transactions`, which fences every older producer with that id: the broker
//! aborts the older one's open transaction and refuses its further commits
//! ([`Error::Fenced`]). So a stale relay, one that lost its database lock without noticing
//! yet, cannot add a record after its successor started.

use std::collections::HashMap;
use std::time::Duration;

use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use rdkafka::message::{Header, OwnedHeaders};
use rdkafka::producer::{FutureProducer, FutureRecord, Producer};
use topics::kafka::{transactional_producer_config, EVENT_ID_HEADER, SEQUENCE_HEADER};
use topics::settings::KafkaSettings;
use uuid::Uuid;

use crate::error::{Error, Result};

/// How long Kafka may take to acknowledge a record before it counts as failed; without it
/// librdkafka would wait for a broker that is down forever. Below the transaction timeout.
const MESSAGE_TIMEOUT_MS: &str = "10000";
/// A topic the cluster does not have fails its records after this, not after 30 s: a
/// held-back key whose topic is missing stalls its retry cycle this long.
const TOPIC_PROPAGATION_MS: &str = "1000";
/// How often the producer refreshes metadata, so a topic created while a key was held back
/// is seen within seconds, not the default 5 minutes.
const METADATA_REFRESH_MS: &str = "3000";
/// No linger: a cycle awaits every delivery before it commits, so the platform's 5 ms linger
/// (batching for producers that do not wait) would be added to every cycle; records queued
/// while a request is in flight are still sent together.
const LINGER_MS: &str = "0";
/// The bound on `init_transactions`, `commit_transaction` and `abort_transaction`.
const TRANSACTION_CALL_TIMEOUT: Duration = Duration::from_secs(30);
/// How often a commit that failed with a retriable error is tried again before aborting.
const COMMIT_ATTEMPTS: usize = 3;

/// One outbox row as a Kafka record.
#[derive(Debug, Clone, PartialEq)]
pub struct Record {
    /// The outbox row id, sent as the `event-seq` header (decimal).
    pub id: i64,
    pub topic: String,
    pub key: String,
    /// Sent as the `event-id` header.
    pub event_id: Uuid,
    pub value: Vec<u8>,
    /// Sent as the `traceparent` / `tracestate` headers (the relay's producer span, or the
    /// context stored with the row).
    pub trace: Option<telemetry::TraceContext>,
}

/// What one [`Publisher::publish`] did.
#[derive(Debug, Default, Clone, PartialEq)]
pub struct Published {
    /// Row ids of the records in the committed transaction, in the order given. Empty when
    /// the transaction was aborted: then none of its records is visible to a
    /// `read_committed` consumer.
    pub committed: Vec<i64>,
    /// Keys whose record Kafka refused, with the first reason. A key's records after its
    /// refused one were not sent.
    pub failed: HashMap<String, String>,
    /// Records Kafka acknowledged (in a committed or an aborted transaction).
    pub acknowledged: usize,
    /// Whether the transaction was aborted.
    pub aborted: bool,
}

/// A transactional producer under the `transactional.id` of one relay role.
pub struct Publisher {
    producer: FutureProducer,
    role: String,
}

impl Publisher {
    /// Creates the producer and calls `init_transactions`, fencing older producers of `role`.
    pub async fn start(kafka: &KafkaSettings, role: &str) -> Result<Self> {
        let producer: FutureProducer = transactional_producer_config(kafka, role)
            .set("message.timeout.ms", MESSAGE_TIMEOUT_MS)
            .set("linger.ms", LINGER_MS)
            .set("topic.metadata.propagation.max.ms", TOPIC_PROPAGATION_MS)
            .set("topic.metadata.refresh.interval.ms", METADATA_REFRESH_MS)
            .create()?;
        let publisher = Self {
            producer,
            role: role.to_owned(),
        };
        publisher
            .blocking(|p| p.init_transactions(TRANSACTION_CALL_TIMEOUT))
            .await?;
        Ok(publisher)
    }

    pub fn role(&self) -> &str {
        &self.role
    }

    /// Sends `records` in one transaction and commits it unless a record failed.
    ///
    /// A record refused at once (unknown topic, too large for the client) is left out with
    /// its key's later records, and the rest commits. A record refused by the broker makes
    /// the transaction abortable: it is aborted, and [`Published::failed`] names the keys to
    /// hold back before the rest is sent again in a new transaction.
    ///
    /// `Err` means no transaction is open any more and nothing was committed:
    /// [`Error::Fenced`] (only a new publisher, after taking the relay lock again, can go
    /// on) or a Kafka error of the transaction calls themselves (e.g. Kafka unreachable).
    pub async fn publish(&self, records: &[Record]) -> Result<Published> {
        let mut published = Published::default();
        if records.is_empty() {
            return Ok(published);
        }
        self.blocking(|p| p.begin_transaction()).await?;

        let mut deliveries = Vec::with_capacity(records.len());
        let mut must_abort = false;
        for record in records {
            if published.failed.contains_key(&record.key) {
                continue;
            }
            let seq = record.id.to_string();
            let event_id = record.event_id.to_string();
            let headers = OwnedHeaders::new()
                .insert(Header {
                    key: EVENT_ID_HEADER,
                    value: Some(event_id.as_bytes()),
                })
                .insert(Header {
                    key: SEQUENCE_HEADER,
                    value: Some(seq.as_bytes()),
                });
            let headers = match &record.trace {
                Some(trace) => trace.insert_into(headers),
                None => headers,
            };
            let future_record = FutureRecord::to(&record.topic)
                .key(&record.key)
                .payload(&record.value)
                .headers(headers);
            match self.producer.send_result(future_record) {
                Ok(delivery) => deliveries.push((record, delivery)),
                Err((e, _)) if is_key_specific(&e) => {
                    published.failed.insert(record.key.clone(), e.to_string());
                }
                // The transaction is already failing (or the queue is full): send no more;
                // what was sent is awaited and the rest waits for the next transaction.
                Err((e, _)) => {
                    tracing::debug!(error = %e, "producer refused a record; sending no more");
                    must_abort = true;
                    break;
                }
            }
        }

        let produced = std::time::Instant::now();
        let mut sent = Vec::with_capacity(deliveries.len());
        for (record, delivery) in deliveries {
            match delivery.await {
                Ok(Ok(_)) => {
                    published.acknowledged += 1;
                    sent.push(record.id);
                }
                Ok(Err((e, _))) => {
                    must_abort = true;
                    if !is_collateral(&e) {
                        published
                            .failed
                            .entry(record.key.clone())
                            .or_insert_with(|| e.to_string());
                    }
                }
                Err(_canceled) => must_abort = true,
            }
        }
        self.check_fatal()?;

        if !must_abort {
            let delivered = std::time::Instant::now();
            let committed = self.commit().await;
            tracing::debug!(
                deliveries_us = (delivered - produced).as_micros() as u64,
                commit_us = delivered.elapsed().as_micros() as u64,
                "outbox transaction"
            );
            match committed {
                Ok(()) => {
                    published.committed = sent;
                    return Ok(published);
                }
                Err(Error::Kafka(KafkaError::Transaction(e))) if e.txn_requires_abort() => {
                    tracing::warn!(error = %e, "outbox transaction must be aborted");
                }
                Err(e) => return Err(e),
            }
        }
        self.blocking(|p| p.abort_transaction(TRANSACTION_CALL_TIMEOUT))
            .await?;
        published.aborted = true;
        Ok(published)
    }

    async fn commit(&self) -> Result<()> {
        let mut attempt = 1;
        loop {
            match self
                .blocking(|p| topics::kafka::commit_transaction(p, TRANSACTION_CALL_TIMEOUT))
                .await
            {
                Err(Error::Kafka(KafkaError::Transaction(e)))
                    if e.is_retriable() && attempt < COMMIT_ATTEMPTS =>
                {
                    tracing::warn!(error = %e, attempt, "outbox commit failed; retrying it");
                    attempt += 1;
                }
                other => return other,
            }
        }
    }

    /// A fatal producer error (fenced, or an idempotence violation) ends this producer.
    fn check_fatal(&self) -> Result<()> {
        match self.producer.client().fatal_error() {
            Some((code, message)) => Err(Error::Fenced {
                role: self.role.clone(),
                message: format!("{code:?}: {message}"),
            }),
            None => Ok(()),
        }
    }

    /// Runs a blocking transaction call off the async workers, turning fatal errors into
    /// [`Error::Fenced`].
    async fn blocking<F>(&self, call: F) -> Result<()>
    where
        F: FnOnce(&FutureProducer) -> rdkafka::error::KafkaResult<()> + Send + 'static,
    {
        let producer = self.producer.clone();
        let result = tokio::task::spawn_blocking(move || call(&producer))
            .await
            .map_err(|_| Error::Kafka(KafkaError::Canceled))?;
        match result {
            Ok(()) => Ok(()),
            Err(e) if is_fatal(&e) => Err(Error::Fenced {
                role: self.role.clone(),
                message: e.to_string(),
            }),
            Err(e) => {
                self.check_fatal()?;
                Err(Error::Kafka(e))
            }
        }
    }
}

impl Drop for Publisher {
    fn drop(&mut self) {
        // Dropping a producer joins its thread and flushes for up to half a second: not on a
        // runtime worker. Nothing of an open transaction is committed by dropping.
        let producer = self.producer.clone();
        if let Ok(runtime) = tokio::runtime::Handle::try_current() {
            runtime.spawn_blocking(move || drop(producer));
        }
    }
}

fn is_fatal(e: &KafkaError) -> bool {
    match e {
        KafkaError::Transaction(e) => e.is_fatal(),
        other => matches!(
            other.rdkafka_error_code(),
            Some(
                RDKafkaErrorCode::Fenced
                    | RDKafkaErrorCode::ProducerFenced
                    | RDKafkaErrorCode::InvalidProducerEpoch
                    | RDKafkaErrorCode::Fatal
            )
        ),
    }
}

/// A record refused for what it is or where it goes, not for the producer's state: holding
/// back its key lets the other keys through.
fn is_key_specific(e: &KafkaError) -> bool {
    !matches!(
        e.rdkafka_error_code(),
        Some(RDKafkaErrorCode::State | RDKafkaErrorCode::QueueFull | RDKafkaErrorCode::Fatal)
            | None
    )
}

/// A delivery failure caused by another record's failure (the transaction turned abortable
/// and librdkafka purged what was queued), not by this record.
fn is_collateral(e: &KafkaError) -> bool {
    matches!(
        e.rdkafka_error_code(),
        Some(
            RDKafkaErrorCode::PurgeQueue
                | RDKafkaErrorCode::PurgeInflight
                | RDKafkaErrorCode::State
                | RDKafkaErrorCode::Fenced
                | RDKafkaErrorCode::Fatal
        )
    )
}
