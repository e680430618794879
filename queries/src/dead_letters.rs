//! Source records the engine can never read, kept on a dead-letter topic with the reason.
//!
//! A source change that does not decode (not Confluent-framed Avro, or Avro its writer schema
//! does not read) or that the queries cannot interpret (a row without a column they need, a
//! status or tier they do not know) is sent here as it came, with headers naming the reason
//! and where it was (the projectors' `dead-letter.*` headers, [`projectors::dead_letters::headers`]), and the engine goes on with the
//! next change. Transient failures never come here: the registry unreachable or a schema id
//! it does not know yet are waited for ([`decode`]).
//!
//! The engine replays its sources from the beginning on every start, so it meets the same bad
//! record again: the record's key is its source coordinates (`topic:partition:offset`) on a
//! compacted topic, and a replay overwrites the entry instead of adding one.

use std::time::Duration;

use backon::{ExponentialBuilder, Retryable};
use rdkafka::message::BorrowedMessage;
use rdkafka::producer::{FutureProducer, FutureRecord};
use rdkafka::Message;
use telemetry::metrics;
use telemetry::names::{QUERIES_SOURCE_DEAD_LETTERED, QUERIES_SOURCE_RETRIES};
use topics::settings::KafkaSettings;

use crate::avro::Schemas;
use crate::error::{Error, Result};
use crate::model::Table;

/// The dead-letter topic's producer (idempotent, acks=all).
pub struct DeadLetters {
    producer: FutureProducer,
    topic: String,
    /// Who dead-lettered (the engine's transactional id), in the `dead-letter.group` header.
    engine: String,
}

impl DeadLetters {
    pub fn new(kafka: &KafkaSettings, topic: &str, engine: &str) -> Result<Self> {
        Ok(Self {
            producer: topics::kafka::producer_config(kafka).create()?,
            topic: topic.to_owned(),
            engine: engine.to_owned(),
        })
    }

    /// Sends `message` with `reason` and returns once the broker has it; a broker that is
    /// away is waited for. Only a record the topic can never take is an error.
    pub async fn send(
        &self,
        message: &BorrowedMessage<'_>,
        table: Table,
        reason: &str,
    ) -> Result<()> {
        tracing::error!(
            topic = message.topic(),
            partition = message.partition(),
            offset = message.offset(),
            reason,
            "source change dead-lettered"
        );
        let key = format!(
            "{}:{}:{}",
            message.topic(),
            message.partition(),
            message.offset()
        );
        let send = || async {
            let record = FutureRecord::<str, [u8]>::to(&self.topic)
                .key(&key)
                .headers(projectors::dead_letters::headers(
                    message,
                    reason,
                    &self.engine,
                ))
                .payload(message.payload().unwrap_or_default());
            self.producer
                .send(record, Duration::from_secs(30))
                .await
                .map_err(|(e, _)| Error::Kafka(e))
        };
        let refused =
            |e: &Error| matches!(e, Error::Kafka(e) if projectors::dead_letters::refused(e));
        send.retry(forever())
            .when(|e| e.is_retryable() && !refused(e))
            .notify(|e, delay| {
                tracing::warn!(error = %e, ?delay, "dead-letter topic unavailable; retrying")
            })
            .await
            .map_err(|e| match e {
                e if refused(&e) => Error::Config(format!(
                    "{key} cannot be dead-lettered to {}: {e}",
                    self.topic
                )),
                e => e,
            })?;
        metrics::counter!(QUERIES_SOURCE_DEAD_LETTERED, "table" => table.name()).increment(1);
        Ok(())
    }
}

/// Decodes a source record, waiting (with backoff, without limit) while the failure is
/// transient: the registry unreachable, or a schema id it does not know yet (a registry
/// restored from a backup, `topics apply` not run yet). Each wait counts in
/// [`QUERIES_SOURCE_RETRIES`] and is logged, so a stalled engine says why.
pub async fn decode(
    schemas: &Schemas,
    table: Table,
    message: &BorrowedMessage<'_>,
    payload: &[u8],
) -> Result<apache_avro::types::Value> {
    (|| schemas.decode(payload))
        .retry(forever())
        .when(Error::is_retryable)
        .notify(|e, delay| {
            metrics::counter!(QUERIES_SOURCE_RETRIES, "table" => table.name()).increment(1);
            tracing::warn!(
                topic = message.topic(),
                partition = message.partition(),
                offset = message.offset(),
                error = %e,
                ?delay,
                "source change not decodable yet; waiting"
            );
        })
        .await
}

fn forever() -> ExponentialBuilder {
    ExponentialBuilder::default()
        .with_min_delay(Duration::from_millis(100))
        .with_max_delay(Duration::from_secs(5))
        .with_jitter()
        .without_max_times()
}
