//! Dead-letter records: the headers a dead-lettered record carries ([`headers`]), when a
//! dead-letter topic can never take one ([`refused`]), and reading a dead-letter topic back
//! (which records a consumer group could never apply). The projector runtime and the query
//! engine write them alike.

use std::collections::HashSet;
use std::time::{Duration, Instant};

use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::error::KafkaError;
use rdkafka::message::{Header, Headers, Message, OwnedHeaders};
use rdkafka::types::RDKafkaErrorCode;
use rdkafka::{Offset, TopicPartitionList};
use topics::settings::KafkaSettings;

use crate::error::{Error, Result};
use crate::runtime::{
    DEAD_LETTER_GROUP, DEAD_LETTER_OFFSET, DEAD_LETTER_PARTITION, DEAD_LETTER_REASON,
    DEAD_LETTER_TOPIC,
};

const TIMEOUT: Duration = Duration::from_secs(10);

/// The headers of `message`'s dead-letter copy: its own, then why (`reason`), where it was
/// (topic, partition, offset) and who gave up on it (`group`).
pub fn headers<M: Message>(message: &M, reason: &str, group: &str) -> OwnedHeaders {
    let mut headers = OwnedHeaders::new();
    for header in message.headers().into_iter().flat_map(|h| h.iter()) {
        headers = headers.insert(header);
    }
    let (partition, offset) = (
        message.partition().to_string(),
        message.offset().to_string(),
    );
    [
        (DEAD_LETTER_REASON, reason),
        (DEAD_LETTER_TOPIC, message.topic()),
        (DEAD_LETTER_PARTITION, partition.as_str()),
        (DEAD_LETTER_OFFSET, offset.as_str()),
        (DEAD_LETTER_GROUP, group),
    ]
    .into_iter()
    .fold(headers, |headers, (key, value)| {
        headers.insert(Header {
            key,
            value: Some(value),
        })
    })
}

/// Whether the dead-letter topic can never take the record (too large with the added
/// headers, or invalid): retrying cannot help, and the writer must stop rather than lose it.
pub fn refused(e: &KafkaError) -> bool {
    matches!(
        e,
        KafkaError::MessageProduction(
            RDKafkaErrorCode::MessageSizeTooLarge | RDKafkaErrorCode::InvalidRecord
        )
    )
}
/// A dead-letter topic is read to its end; this bounds the read if it keeps growing.
const MAX_READ: Duration = Duration::from_secs(120);

/// One record a group dead-lettered, and where it came from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DeadLetter {
    pub topic: String,
    pub partition: i32,
    pub offset: i64,
    pub reason: String,
}

/// Every record `group` sent to `dead_letter_topic` (at or after `since`, epoch ms, when
/// given), read from its start to its current end, each source record once: a record
/// dead-lettered again after a redelivery counts once. Blocking: call it from `spawn_blocking`.
pub fn of_group(
    kafka: &KafkaSettings,
    dead_letter_topic: &str,
    group: &str,
    since: Option<i64>,
) -> Result<Vec<DeadLetter>> {
    // Assigned, never subscribed or committed: the reader joins no group.
    let consumer: BaseConsumer =
        topics::kafka::consumer_config(kafka, &format!("{group}.dead-letter-reader")).create()?;
    let metadata = consumer.fetch_metadata(Some(dead_letter_topic), TIMEOUT)?;
    let partitions: Vec<i32> = metadata
        .topics()
        .iter()
        .flat_map(|t| t.partitions().iter().map(|p| p.id()))
        .collect();
    let mut assignment = TopicPartitionList::new();
    let mut ends = Vec::new();
    for partition in partitions {
        let (low, high) = consumer.fetch_watermarks(dead_letter_topic, partition, TIMEOUT)?;
        if high > low {
            assignment.add_partition_offset(dead_letter_topic, partition, Offset::Beginning)?;
            ends.push((partition, high));
        }
    }
    let mut found = Vec::new();
    let mut seen = HashSet::new();
    if ends.is_empty() {
        return Ok(found);
    }
    consumer.assign(&assignment)?;
    let deadline = Instant::now() + MAX_READ;
    while !ends.is_empty() {
        if Instant::now() > deadline {
            return Err(Error::Config(format!(
                "reading {dead_letter_topic} to its end took longer than {MAX_READ:?}"
            )));
        }
        let Some(message) = consumer.poll(Duration::from_millis(500)) else {
            continue;
        };
        let message = message?;
        let (partition, offset) = (message.partition(), message.offset());
        ends.retain(|(p, high)| *p != partition || offset + 1 < *high);
        let header = |name: &str| {
            message
                .headers()
                .and_then(|h| h.iter().find(|h| h.key == name))
                .and_then(|h| h.value)
                .map(|v| String::from_utf8_lossy(v).into_owned())
        };
        if header(DEAD_LETTER_GROUP).as_deref() != Some(group) {
            continue;
        }
        if since.is_some_and(|since| message.timestamp().to_millis().is_some_and(|at| at < since)) {
            continue;
        }
        let dead = DeadLetter {
            topic: header(DEAD_LETTER_TOPIC).unwrap_or_default(),
            partition: header(DEAD_LETTER_PARTITION)
                .and_then(|p| p.parse().ok())
                .unwrap_or(-1),
            offset: header(DEAD_LETTER_OFFSET)
                .and_then(|o| o.parse().ok())
                .unwrap_or(-1),
            reason: header(DEAD_LETTER_REASON).unwrap_or_default(),
        };
        let source = (dead.topic.clone(), dead.partition, dead.offset);
        if seen.insert(source) {
            found.push(dead);
        }
    }
    Ok(found)
}
