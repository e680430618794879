//! Client settings every producer and consumer of the platform shares, so delivery semantics
//! are decided once: idempotent acks=all producers, manually committing consumers.

use std::time::{Duration, Instant};

use rdkafka::admin::AdminClient;
use rdkafka::client::DefaultClientContext;
use rdkafka::error::KafkaResult;
use rdkafka::producer::{Producer, ProducerContext};
use rdkafka::ClientConfig;

use crate::error::Result;
use crate::settings::KafkaSettings;

/// The header carrying an event's unique id.
pub const EVENT_ID_HEADER: &str = "event-id";

/// The header carrying an event's per-key sequence (the outbox row id for events relayed from
/// an outbox): strictly increasing per key, so a read model can ignore a re-sent event whose
/// sequence is at or below the one it stored for that key.
pub const SEQUENCE_HEADER: &str = "event-seq";

/// An idempotent producer that waits for all in-sync replicas, so a retried send neither
/// duplicates nor reorders records of a partition.
pub fn producer_config(settings: &KafkaSettings) -> ClientConfig {
    let mut config = ClientConfig::new();
    config
        .set("bootstrap.servers", &settings.kafka_bootstrap_servers)
        .set("enable.idempotence", "true")
        .set("acks", "all")
        .set("compression.type", "lz4")
        .set("linger.ms", "5");
    config
}

/// A transactional producer: [`producer_config`] with a fixed `transactional.id`. Starting a
/// producer with the same id (after `init_transactions`) fences every older one: the broker
/// aborts its open transaction and refuses its further commits, so a stale instance cannot
/// write after its successor took over. Consumers read with `isolation.level=read_committed`
/// ([`consumer_config`]) and never see an aborted record.
pub fn transactional_producer_config(
    settings: &KafkaSettings,
    transactional_id: &str,
) -> ClientConfig {
    let mut config = producer_config(settings);
    config
        .set("transactional.id", transactional_id)
        // A transaction left open by a crashed producer is aborted by the broker after this.
        .set("transaction.timeout.ms", "60000");
    config
}

/// How often [`commit_transaction`] looks whether the producer still has messages in flight.
const IN_FLIGHT_POLL: Duration = Duration::from_micros(200);

/// Commits the producer's open transaction (blocking: call it off the async workers) without
/// the client's flush stall.
///
/// rdkafka's `commit_transaction` first flushes; with a message still counted in flight (its
/// delivery report queued, or being served right now by the producer's polling thread, even
/// after its delivery future resolved), that flush polls the event queue for up to 100 ms,
/// and the polling thread takes the event it waits for: one commit in ~50 took 100 ms longer
/// (the outbox relay's p99), and every commit made before its deliveries (the queries engine)
/// did. Waiting here until nothing is in flight leaves the flush nothing to wait for.
pub fn commit_transaction<C, P>(producer: &P, timeout: Duration) -> KafkaResult<()>
where
    C: ProducerContext,
    P: Producer<C>,
{
    let deadline = Instant::now() + timeout;
    while producer.in_flight_count() > 0 && Instant::now() < deadline {
        std::thread::sleep(IN_FLIGHT_POLL);
    }
    producer.commit_transaction(deadline.saturating_duration_since(Instant::now()))
}

/// A consumer-group member that never commits on its own: callers store and commit offsets
/// only after the effect of a record is durable.
pub fn consumer_config(settings: &KafkaSettings, group_id: &str) -> ClientConfig {
    let mut config = ClientConfig::new();
    config
        .set("bootstrap.servers", &settings.kafka_bootstrap_servers)
        .set("group.id", group_id)
        .set("enable.auto.commit", "false")
        .set("enable.auto.offset.store", "false")
        .set("auto.offset.reset", "earliest")
        .set("isolation.level", "read_committed")
        // Adding an instance moves only the partitions it takes; the others keep flowing.
        .set("partition.assignment.strategy", "cooperative-sticky")
        // A dead member is noticed within seconds, so its partitions move quickly.
        .set("session.timeout.ms", "6000")
        .set("heartbeat.interval.ms", "500")
        .set("fetch.wait.max.ms", "10")
        // When the local queue is above its thresholds (a consumer busy writing a batch),
        // librdkafka postpones the partition's next fetch by this much; its 1 s default
        // stalled every replay for ~0.5 s of each second once the writer caught up.
        .set("fetch.queue.backoff.ms", "10");
    config
}

pub fn admin_client(settings: &KafkaSettings) -> Result<AdminClient<DefaultClientContext>> {
    Ok(ClientConfig::new()
        .set("bootstrap.servers", &settings.kafka_bootstrap_servers)
        .create()?)
}
