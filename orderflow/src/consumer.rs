//! The consumer loop the saga intake, loyalty and audit share: order events from
//! `commerce.order-events` in batches, decoded with the registry's schema, handed to a
//! handler, and their offsets committed only after the handler returned (its effect is
//! durable by then). A batch the handler fails on transiently is retried with backoff; a
//! record that never decodes is reported in one line and counted, then passed over.
//!
//! Redelivery (after a crash, a rebalance, or the `redeliver` test hook, which seeks every
//! batch back once before committing it) hands the handler records it has seen: handlers are
//! idempotent.

use std::collections::{BTreeMap, HashSet};
use std::future::Future;
use std::time::Duration;

use backon::{BackoffBuilder, ExponentialBuilder};
use rdkafka::consumer::{CommitMode, Consumer, StreamConsumer};
use rdkafka::message::{BorrowedMessage, Message};
use rdkafka::{Offset, TopicPartitionList};
use tokio::sync::watch;
use topics::codec::Decoder;
use topics::commerce::OrderEvent;
use topics::events::Event;
use topics::kafka::consumer_config;
use topics::registry::Registry;
use topics::settings::KafkaSettings;

use crate::error::{Error, Result};

/// One record: where it was and what it said.
#[derive(Debug, Clone)]
pub struct Delivered {
    pub partition: i32,
    pub offset: i64,
    pub event: OrderEvent,
}

/// How a consumer runs.
#[derive(Debug, Clone)]
pub struct ConsumerConfig {
    pub group: String,
    /// Records per batch at most.
    pub batch: usize,
    /// How long a batch waits for more records once it has one.
    pub linger: Duration,
    /// Test hook: seek each batch back once before committing it, so every record is
    /// delivered (at least) twice.
    pub redeliver: bool,
}

impl ConsumerConfig {
    pub fn new(group: impl Into<String>) -> Self {
        Self {
            group: group.into(),
            batch: 500,
            linger: Duration::from_millis(20),
            redeliver: std::env::var_os("ORDERFLOW_REDELIVER").is_some_and(|v| v == "true"),
        }
    }
}

/// Consumes order events until `shutdown` turns true, calling `handle` for every batch.
pub async fn run<H, Fut>(
    kafka: &KafkaSettings,
    config: ConsumerConfig,
    mut shutdown: watch::Receiver<bool>,
    mut handle: H,
) -> Result<()>
where
    H: FnMut(Vec<Delivered>) -> Fut,
    Fut: Future<Output = Result<()>>,
{
    let consumer: StreamConsumer = consumer_config(kafka, &config.group).create()?;
    consumer.subscribe(&[OrderEvent::TOPIC.name])?;
    let decoder = Decoder::<OrderEvent>::new(Registry::new(&kafka.schema_registry_url));
    let _lag = telemetry::lag::watch(
        kafka.clone(),
        config.group.clone(),
        OrderEvent::TOPIC.name.to_owned(),
        Duration::from_secs(5),
    );
    let mut redelivered: HashSet<(i32, i64)> = HashSet::new();
    let mut undecodable = 0u64;
    tracing::info!(group = %config.group, topic = OrderEvent::TOPIC.name, "consuming");
    let mut idle_committed: BTreeMap<i32, i64> = BTreeMap::new();
    loop {
        let first = tokio::select! {
            message = consumer.recv() => message,
            _ = tokio::time::sleep(IDLE) => {
                commit_idle_positions(&consumer, &mut idle_committed);
                continue;
            }
            _ = shutdown.wait_for(|stop| *stop) => break,
        };
        let first = match first {
            Ok(message) => message,
            Err(e) => {
                tracing::warn!(error = %e, "kafka receive failed; retrying");
                tokio::time::sleep(Duration::from_millis(200)).await;
                continue;
            }
        };
        let mut messages = vec![first];
        let deadline = tokio::time::Instant::now() + config.linger;
        while messages.len() < config.batch {
            match tokio::time::timeout_at(deadline, consumer.recv()).await {
                Ok(Ok(message)) => messages.push(message),
                Ok(Err(e)) => {
                    tracing::warn!(error = %e, "kafka receive failed");
                    break;
                }
                Err(_) => break,
            }
        }
        let mut batch = Vec::with_capacity(messages.len());
        let mut ends: BTreeMap<i32, (i64, i64)> = BTreeMap::new();
        for message in &messages {
            let span = ends
                .entry(message.partition())
                .or_insert((message.offset(), message.offset()));
            span.0 = span.0.min(message.offset());
            span.1 = span.1.max(message.offset());
            match decode(&decoder, message).await {
                Ok(event) => batch.push(Delivered {
                    partition: message.partition(),
                    offset: message.offset(),
                    event,
                }),
                Err(e) => {
                    undecodable += 1;
                    tracing::error!(
                        partition = message.partition(),
                        offset = message.offset(),
                        error = %e,
                        undecodable,
                        "an order event does not decode; passed over"
                    );
                }
            }
        }
        handle_with_retry(&mut handle, batch, &mut shutdown).await?;
        if *shutdown.borrow() {
            break;
        }
        if config.redeliver {
            let fresh: Vec<(i32, i64)> = ends
                .iter()
                .map(|(p, (low, _))| (*p, *low))
                .filter(|key| !redelivered.contains(key))
                .collect();
            if !fresh.is_empty() {
                for (partition, low) in fresh {
                    redelivered.insert((partition, low));
                    consumer.seek(
                        OrderEvent::TOPIC.name,
                        partition,
                        Offset::Offset(low),
                        Duration::from_secs(5),
                    )?;
                }
                continue;
            }
        }
        let mut commit = TopicPartitionList::new();
        for (partition, (_, high)) in &ends {
            commit.add_partition_offset(
                OrderEvent::TOPIC.name,
                *partition,
                Offset::Offset(high + 1),
            )?;
        }
        if let Err(e) = consumer.commit(&commit, CommitMode::Sync) {
            // A revoked partition, or the broker away: its records come again, and the
            // handler is idempotent.
            tracing::warn!(error = %e, "offset commit failed; records will be delivered again");
        }
    }
    tracing::info!(group = %config.group, "consumer stopped");
    Ok(())
}

/// How long without a record before the consumer counts as idle.
const IDLE: Duration = Duration::from_millis(500);

/// While idle, every record before the consumer's position was handled: committing the
/// position moves the group past transaction markers too (a read_committed consumer never
/// sees them, so the last record's offset + 1 stays one short of the log end).
fn commit_idle_positions(consumer: &StreamConsumer, committed: &mut BTreeMap<i32, i64>) {
    let Ok(positions) = consumer.position() else {
        return;
    };
    let mut commit = TopicPartitionList::new();
    for element in positions.elements() {
        if let Offset::Offset(next) = element.offset() {
            if committed.get(&element.partition()) != Some(&next)
                && commit
                    .add_partition_offset(
                        element.topic(),
                        element.partition(),
                        Offset::Offset(next),
                    )
                    .is_ok()
            {
                committed.insert(element.partition(), next);
            }
        }
    }
    if commit.count() > 0 {
        if let Err(e) = consumer.commit(&commit, CommitMode::Async) {
            tracing::debug!(error = %e, "idle position commit failed");
        }
    }
}

async fn decode(
    decoder: &Decoder<OrderEvent>,
    message: &BorrowedMessage<'_>,
) -> Result<OrderEvent> {
    let payload = message
        .payload()
        .ok_or_else(|| Error::Permanent("a record without a value".to_owned()))?;
    let mut backoff = ExponentialBuilder::default()
        .with_max_delay(Duration::from_secs(2))
        .with_max_times(8)
        .with_jitter()
        .build();
    loop {
        match decoder.decode(payload).await {
            Ok(event) => return Ok(event.with_key()),
            // The registry unreachable is transient; bytes that do not decode are not.
            Err(e) if e.is_retryable() => match backoff.next() {
                Some(delay) => {
                    tracing::warn!(error = %e, "registry unavailable; retrying");
                    tokio::time::sleep(delay).await;
                }
                None => return Err(Error::Permanent(e.to_string())),
            },
            Err(e) => return Err(Error::Permanent(e.to_string())),
        }
    }
}

async fn handle_with_retry<H, Fut>(
    handle: &mut H,
    batch: Vec<Delivered>,
    shutdown: &mut watch::Receiver<bool>,
) -> Result<()>
where
    H: FnMut(Vec<Delivered>) -> Fut,
    Fut: Future<Output = Result<()>>,
{
    let mut backoff = ExponentialBuilder::default()
        .with_min_delay(Duration::from_millis(50))
        .with_max_delay(Duration::from_secs(5))
        .without_max_times()
        .with_jitter()
        .build();
    loop {
        match handle(batch.clone()).await {
            Ok(()) => return Ok(()),
            Err(e) if e.is_retryable() => {
                let delay = backoff.next().unwrap_or(Duration::from_secs(5));
                tracing::warn!(error = %e, ?delay, "batch not handled; retrying");
                tokio::select! {
                    _ = tokio::time::sleep(delay) => {}
                    _ = shutdown.wait_for(|stop| *stop) => return Ok(()),
                }
            }
            Err(e) => return Err(e),
        }
    }
}
