//! Following another service's events: a consumer-group member that decodes each record and
//! hands it to an idempotent handler, committing its offset only once the handler's effect
//! is durable (so a crash means redelivery, never loss).
//!
//! Transient failures (Kafka, the registry, the database) are retried with backoff for as
//! long as they last, holding the partition's position; a record that can never apply (not
//! the wire format, not the schema, refused by the handler as a bad request) goes to the
//! dead-letter topic with the reason in a header, and the consumer moves on.

use std::future::Future;
use std::time::Duration;

use backon::{ExponentialBuilder, Retryable};
use rdkafka::consumer::{CommitMode, Consumer, StreamConsumer};
use rdkafka::message::{Header, Message, OwnedHeaders, OwnedMessage};
use rdkafka::producer::{FutureProducer, FutureRecord};
use rdkafka::{Offset, TopicPartitionList};
use tokio::sync::watch;
use topics::codec::Decoder;
use topics::events::Event;
use topics::registry::Registry;
use topics::settings::KafkaSettings;

use crate::http::ApiError;

/// Where a follower reads, and where its poison records go.
#[derive(Debug, Clone)]
pub struct Follower {
    pub kafka: KafkaSettings,
    pub group_id: String,
    pub dead_letter_topic: String,
}

/// The dead-letter header naming why a record could never apply.
pub const REASON_HEADER: &str = "dead-letter.reason";

fn backoff() -> ExponentialBuilder {
    ExponentialBuilder::default()
        .with_min_delay(Duration::from_millis(50))
        .with_max_delay(Duration::from_secs(5))
        .without_max_times()
}

impl Follower {
    /// Follows `E`'s topic until `shutdown` flips, calling `handle` once per record (again
    /// after a crash before its commit: `handle` must be idempotent).
    pub async fn run<E, F, Fut>(self, mut shutdown: watch::Receiver<bool>, handle: F)
    where
        E: Event,
        F: Fn(E) -> Fut + Send + Sync,
        Fut: Future<Output = Result<(), ApiError>> + Send,
    {
        let topic = E::TOPIC.name;
        let setup = || -> Result<(StreamConsumer, FutureProducer), rdkafka::error::KafkaError> {
            let consumer: StreamConsumer =
                topics::kafka::consumer_config(&self.kafka, &self.group_id).create()?;
            consumer.subscribe(&[topic])?;
            let producer: FutureProducer = topics::kafka::producer_config(&self.kafka).create()?;
            Ok((consumer, producer))
        };
        let (consumer, producer) = match setup() {
            Ok(clients) => clients,
            Err(e) => {
                tracing::error!(%topic, error = %e, "cannot create the Kafka clients; not following");
                return;
            }
        };
        let decoder = Decoder::<E>::new(Registry::new(&self.kafka.schema_registry_url));
        tracing::info!(%topic, group = %self.group_id, "following");
        loop {
            let message = tokio::select! {
                () = stopping(&mut shutdown) => break,
                received = consumer.recv() => match received {
                    Ok(message) => message.detach(),
                    Err(e) => {
                        tracing::warn!(%topic, error = %e, "consumer error");
                        tokio::time::sleep(Duration::from_millis(500)).await;
                        continue;
                    }
                },
            };
            let work = async {
                let outcome = (|| async {
                    let event = decoder.decode(message.payload().unwrap_or_default()).await;
                    match event {
                        Ok(event) => handle(event).await.map_err(Failure::Handler),
                        Err(e) => Err(Failure::Decode(e)),
                    }
                })
                .retry(backoff())
                .when(Failure::is_retryable)
                .notify(|e, wait| tracing::warn!(%topic, error = %e, ?wait, "retrying a record"))
                .await;
                if let Err(failure) = outcome {
                    self.dead_letter(&producer, &message, &failure.to_string())
                        .await;
                }
                let mut position = TopicPartitionList::new();
                if let Err(e) = position.add_partition_offset(
                    message.topic(),
                    message.partition(),
                    Offset::Offset(message.offset() + 1),
                ) {
                    tracing::warn!(%topic, error = %e, "offset not committed");
                    return;
                }
                let commit = || async { consumer.commit(&position, CommitMode::Sync) };
                if let Err(e) = commit.retry(backoff().with_max_times(10)).await {
                    // The record is redelivered later; the handler is idempotent.
                    tracing::warn!(%topic, error = %e, "offset not committed");
                }
            };
            tokio::select! {
                () = stopping(&mut shutdown) => break,
                () = work => {}
            }
        }
        tracing::info!(%topic, "stopped following");
    }

    async fn dead_letter(&self, producer: &FutureProducer, message: &OwnedMessage, reason: &str) {
        tracing::error!(topic = message.topic(), partition = message.partition(), offset = message.offset(), %reason, "record dead-lettered");
        let send = || async {
            let headers = OwnedHeaders::new().insert(Header {
                key: REASON_HEADER,
                value: Some(reason),
            });
            let mut record = FutureRecord::to(&self.dead_letter_topic).headers(headers);
            if let Some(key) = message.key() {
                record = record.key(key);
            }
            if let Some(payload) = message.payload() {
                record = record.payload(payload);
            }
            producer
                .send(record, Duration::from_secs(10))
                .await
                .map_err(|(e, _)| e)
        };
        if let Err(e) = send.retry(backoff()).await {
            tracing::error!(error = %e, "dead letter not written");
        }
    }
}

/// Completes once `shutdown` is true (or its sender is gone).
async fn stopping(shutdown: &mut watch::Receiver<bool>) {
    let _ = shutdown.wait_for(|stop| *stop).await;
}

#[derive(Debug, thiserror::Error)]
enum Failure {
    #[error("decoding: {0}")]
    Decode(topics::Error),
    #[error("{0}")]
    Handler(ApiError),
}

impl Failure {
    fn is_retryable(&self) -> bool {
        match self {
            Failure::Decode(e) => e.is_retryable(),
            Failure::Handler(e) => e.is_retryable(),
        }
    }
}
