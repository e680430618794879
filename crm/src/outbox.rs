//! The transactional outbox: mandate events are written to the `outbox` table in the same
//! transaction as the customer change they describe, and a relay publishes them to Kafka.
//!
//! Delivery is at-least-once. A crash (or a lost database connection) after Kafka
//! acknowledged a batch but before it was marked published re-sends that batch, and a batch
//! that failed half-way is re-sent from its first unconfirmed row; consumers dedupe by
//! offset or by the `event-id` header. Per connection, events are never skipped and arrive
//! in the order they were committed: see [`enqueue`] and [`Relay`].

use std::time::{Duration, Instant};

use backon::{BackoffBuilder, ExponentialBuilder, Retryable};
use rdkafka::message::{Header, OwnedHeaders};
use rdkafka::producer::{FutureProducer, FutureRecord};
use rdkafka::ClientConfig;
use sqlx::postgres::{PgConnectOptions, PgListener};
use sqlx::{Connection, PgConnection, PgPool, Postgres, Transaction};
use tokio::sync::watch;
use topics::codec::Encoder;
use topics::events::{ConnectionMandateChanged, Event};
use topics::kafka::{producer_config, EVENT_ID_HEADER};
use topics::registry::Registry;
use topics::settings::KafkaSettings;
use uuid::Uuid;

/// The channel the relay listens on; writers notify it inside their transaction, so the
/// notification is delivered exactly when the rows become visible.
pub const CHANNEL: &str = "crm_outbox";

/// Relays of different CRM instances on the same database exclude each other with this
/// session-level advisory lock (advisory locks are per database), so one relay at a time
/// publishes and per-key order holds across instances.
const RELAY_LOCK: i64 = 0x0063_726d_5f6f_7574; // "crm_out"

/// The first half of the two-int advisory lock key writers take per connection id.
const KEY_LOCK_SPACE: i32 = 0x0063_726d; // "crm"

const BATCH_SIZE: i64 = 500;
/// The fallback when a notification is missed (listener reconnecting, another instance's
/// relay had the lock when it fired).
const POLL_INTERVAL: Duration = Duration::from_secs(1);
/// How long Kafka may take to acknowledge a record before its batch counts as failed and is
/// retried; without it librdkafka would wait forever for a broker that is down.
const MESSAGE_TIMEOUT_MS: &str = "10000";
const MAX_BACKOFF: Duration = Duration::from_secs(5);
/// How often the relay looks its schema id up again (see `Relay::recheck_encoder`).
const SCHEMA_RECHECK: Duration = Duration::from_secs(60);

/// Writes `events` to the outbox of the transaction `tx` and notifies the relay on commit.
///
/// Rows are ordered by their `id`, but a sequence hands out ids at insert time, not at
/// commit: two transactions writing the same connection could commit in the opposite order.
/// A transaction-scoped advisory lock per connection id serializes them, so per connection
/// the id order is the commit order. Keys are locked in sorted order to avoid deadlocks.
pub async fn enqueue(
    tx: &mut Transaction<'_, Postgres>,
    events: &[ConnectionMandateChanged],
) -> Result<(), sqlx::Error> {
    let mut keys: Vec<&str> = events.iter().map(|e| e.key()).collect();
    keys.sort_unstable();
    keys.dedup();
    for key in keys {
        // The two-int form lives apart from the single-bigint space of RELAY_LOCK; a hash
        // collision between connections only serializes two unrelated writers.
        sqlx::query("SELECT pg_advisory_xact_lock($1, hashtext($2))")
            .bind(KEY_LOCK_SPACE)
            .bind(key)
            .execute(&mut **tx)
            .await?;
    }
    enqueue_unlocked(tx, events).await
}

/// [`enqueue`] without the per-key locks, for the seed import: it writes hundreds of keys
/// in one transaction (each lock would hold a slot of the server's shared lock table until
/// commit) and holds the seed lock, before this instance serves any request.
pub async fn enqueue_unlocked(
    tx: &mut Transaction<'_, Postgres>,
    events: &[ConnectionMandateChanged],
) -> Result<(), sqlx::Error> {
    if events.is_empty() {
        return Ok(());
    }
    for event in events {
        let payload = serde_json::to_value(event).map_err(|e| sqlx::Error::Encode(e.into()))?;
        sqlx::query("INSERT INTO outbox (topic, key, event_id, payload) VALUES ($1, $2, $3, $4)")
            .bind(ConnectionMandateChanged::TOPIC.name)
            .bind(event.key())
            .bind(event.event_id())
            .bind(payload)
            .execute(&mut **tx)
            .await?;
    }
    sqlx::query("SELECT pg_notify($1, '')")
        .bind(CHANNEL)
        .execute(&mut **tx)
        .await?;
    Ok(())
}

/// A row of the outbox not yet confirmed by Kafka.
#[derive(Debug, sqlx::FromRow)]
struct Pending {
    id: i64,
    topic: String,
    key: String,
    event_id: Uuid,
    payload: serde_json::Value,
}

/// Publishes the outbox to Kafka until `shutdown` turns true.
pub struct Relay {
    database: PgConnectOptions,
    kafka: KafkaSettings,
    shutdown: watch::Receiver<bool>,
}

/// Why a relay round stopped.
enum Stop {
    Shutdown,
    /// The lock connection failed: the lock may be gone, so start over by taking it again.
    LostDatabase(sqlx::Error),
}

impl Relay {
    pub fn new(
        database: PgConnectOptions,
        kafka: KafkaSettings,
        shutdown: watch::Receiver<bool>,
    ) -> Self {
        Self {
            database,
            kafka,
            shutdown,
        }
    }

    pub async fn run(mut self) {
        let mut backoff = backoff();
        loop {
            match self.run_once().await {
                Stop::Shutdown => break,
                Stop::LostDatabase(e) => {
                    let delay = backoff.next().unwrap_or(MAX_BACKOFF);
                    tracing::warn!(error = %e, ?delay, "outbox relay lost its database connection; starting over");
                    if self.sleep(delay).await.is_err() {
                        break;
                    }
                }
            }
        }
        tracing::info!("outbox relay stopped");
    }

    async fn run_once(&mut self) -> Stop {
        // The lock belongs to this connection's session, so all relay queries run on it: if
        // the connection dies, so does the lock, and the relay notices on its next query.
        let mut lock = match PgConnection::connect_with(&self.database).await {
            Ok(conn) => conn,
            Err(e) => return Stop::LostDatabase(e),
        };
        if let Err(stop) = self.take_lock(&mut lock).await {
            return stop;
        }
        tracing::info!("outbox relay holds the relay lock");

        let mut listener = match PgListener::connect_with(&self.listener_pool()).await {
            Ok(listener) => Some(listener),
            Err(e) => {
                tracing::warn!(error = %e, "outbox relay could not LISTEN; polling only");
                None
            }
        };
        if let Some(listener) = listener.as_mut() {
            if let Err(e) = listener.listen(CHANNEL).await {
                tracing::warn!(error = %e, "outbox relay could not LISTEN; polling only");
            }
        }

        let Some(mut encoder) = self.connect_encoder().await else {
            return Stop::Shutdown;
        };
        let mut encoder_checked = Instant::now();
        let mut producer = match self.producer() {
            Ok(producer) => producer,
            // librdkafka only refuses a configuration, which retrying cannot fix.
            Err(e) => {
                tracing::error!(error = %e, "outbox relay cannot create a Kafka producer; events stay in the outbox");
                let _ = self.shutdown.wait_for(|stop| *stop).await;
                return Stop::Shutdown;
            }
        };

        let mut backoff = backoff();
        loop {
            if *self.shutdown.borrow() {
                return Stop::Shutdown;
            }
            let batch = match fetch(&mut lock).await {
                Ok(batch) => batch,
                Err(e) => return Stop::LostDatabase(e),
            };
            if batch.is_empty() {
                if self.wait_for_work(listener.as_mut()).await.is_err() {
                    return Stop::Shutdown;
                }
                continue;
            }
            if encoder_checked.elapsed() >= SCHEMA_RECHECK {
                encoder = self.recheck_encoder(encoder).await;
                encoder_checked = Instant::now();
            }
            let outcome = tokio::select! {
                outcome = publish(&producer, &encoder, &batch) => outcome,
                _ = self.shutdown.wait_for(|stop| *stop) => return Stop::Shutdown,
            };
            if outcome.delivered > 0 {
                let ids: Vec<i64> = batch[..outcome.delivered].iter().map(|p| p.id).collect();
                if let Err(e) = mark_published(&mut lock, &ids).await {
                    return Stop::LostDatabase(e);
                }
            }
            match outcome.error {
                None => {
                    tracing::debug!(count = batch.len(), "outbox batch published");
                    backoff = self::backoff();
                }
                Some(error) => {
                    let delay = backoff.next().unwrap_or(MAX_BACKOFF);
                    tracing::warn!(
                        %error,
                        delivered = outcome.delivered,
                        pending = batch.len() - outcome.delivered,
                        ?delay,
                        "outbox batch not fully delivered; retrying from its first unconfirmed event"
                    );
                    // A producer that failed may be in a fatal state (idempotence); a new one
                    // costs nothing next to the backoff, and nothing is in flight any more.
                    match self.producer() {
                        Ok(fresh) => {
                            let old = std::mem::replace(&mut producer, fresh);
                            // Dropping a producer joins its thread and flushes for up to
                            // half a second: not on a runtime worker.
                            tokio::task::spawn_blocking(move || drop(old));
                        }
                        Err(e) => tracing::warn!(error = %e, "keeping the old producer"),
                    }
                    if self.sleep(delay).await.is_err() {
                        return Stop::Shutdown;
                    }
                }
            }
        }
    }

    fn listener_pool(&self) -> PgPool {
        // PgListener needs a pool to reconnect from; a lazy one opens a connection only when
        // the listener asks for it.
        PgPool::connect_lazy_with(self.database.clone())
    }

    async fn take_lock(&mut self, lock: &mut PgConnection) -> Result<(), Stop> {
        let mut logged = false;
        loop {
            let taken: bool = sqlx::query_scalar("SELECT pg_try_advisory_lock($1)")
                .bind(RELAY_LOCK)
                .fetch_one(&mut *lock)
                .await
                .map_err(Stop::LostDatabase)?;
            if taken {
                return Ok(());
            }
            if !logged {
                tracing::info!("another CRM instance relays the outbox; standing by");
                logged = true;
            }
            if self.sleep(Duration::from_secs(2)).await.is_err() {
                return Err(Stop::Shutdown);
            }
        }
    }

    /// The encoder needs the schema id `topics apply` registered. Until the registry answers,
    /// events wait in the outbox while the API keeps accepting writes.
    async fn connect_encoder(&mut self) -> Option<Encoder<ConnectionMandateChanged>> {
        let registry = Registry::new(&self.kafka.schema_registry_url);
        let connect = (|| Encoder::<ConnectionMandateChanged>::connect(&registry))
            .retry(
                ExponentialBuilder::default()
                    .with_max_delay(MAX_BACKOFF)
                    .without_max_times(),
            )
            .notify(|e, delay| {
                tracing::warn!(error = %e, ?delay, "outbox relay cannot reach the schema registry yet");
            });
        tokio::select! {
            encoder = connect => encoder.ok(),
            _ = self.shutdown.wait_for(|stop| *stop) => None,
        }
    }

    /// The registry of this platform keeps schemas in memory: after a restart `topics apply`
    /// registers them again, possibly under another id. Looking the id up again now and then
    /// keeps the relay from writing an id the registry no longer knows; when the registry
    /// does not answer, the id that worked so far is kept.
    async fn recheck_encoder(
        &self,
        current: Encoder<ConnectionMandateChanged>,
    ) -> Encoder<ConnectionMandateChanged> {
        let registry = Registry::new(&self.kafka.schema_registry_url);
        let lookup = Encoder::<ConnectionMandateChanged>::connect(&registry);
        match tokio::time::timeout(Duration::from_secs(5), lookup).await {
            Ok(Ok(fresh)) => {
                if fresh.schema_id() != current.schema_id() {
                    tracing::warn!(
                        old = current.schema_id(),
                        new = fresh.schema_id(),
                        "the registry has the mandate schema under a new id; using it"
                    );
                }
                fresh
            }
            Ok(Err(e)) => {
                tracing::warn!(error = %e, schema_id = current.schema_id(), "schema id not rechecked; keeping it");
                current
            }
            Err(_) => {
                tracing::warn!(
                    schema_id = current.schema_id(),
                    "schema registry did not answer in time; keeping the schema id"
                );
                current
            }
        }
    }

    fn producer(&self) -> Result<FutureProducer, rdkafka::error::KafkaError> {
        relay_producer_config(&self.kafka).create()
    }

    /// Sleeps, or fails at once when shutdown is requested.
    async fn sleep(&mut self, delay: Duration) -> Result<(), ()> {
        tokio::select! {
            _ = tokio::time::sleep(delay) => Ok(()),
            _ = self.shutdown.wait_for(|stop| *stop) => Err(()),
        }
    }

    async fn wait_for_work(&mut self, listener: Option<&mut PgListener>) -> Result<(), ()> {
        let notified = async {
            match listener {
                Some(listener) => {
                    if let Err(e) = listener.recv().await {
                        // The poll below keeps the relay going while the listener reconnects.
                        tracing::debug!(error = %e, "outbox listener failed");
                        std::future::pending::<()>().await;
                    }
                }
                None => std::future::pending::<()>().await,
            }
        };
        tokio::select! {
            _ = notified => Ok(()),
            _ = tokio::time::sleep(POLL_INTERVAL) => Ok(()),
            _ = self.shutdown.wait_for(|stop| *stop) => Err(()),
        }
    }
}

/// The platform's producer settings plus a bounded wait for acknowledgements, so a batch
/// sent while Kafka is down fails and is retried instead of hanging.
pub fn relay_producer_config(kafka: &KafkaSettings) -> ClientConfig {
    let mut config = producer_config(kafka);
    config.set("message.timeout.ms", MESSAGE_TIMEOUT_MS);
    config
}

fn backoff() -> impl Iterator<Item = Duration> {
    ExponentialBuilder::default()
        .with_min_delay(Duration::from_millis(200))
        .with_max_delay(MAX_BACKOFF)
        .without_max_times()
        .build()
}

async fn fetch(conn: &mut PgConnection) -> Result<Vec<Pending>, sqlx::Error> {
    sqlx::query_as(
        "SELECT id, topic, key, event_id, payload FROM outbox
         WHERE published_at IS NULL ORDER BY id LIMIT $1",
    )
    .bind(BATCH_SIZE)
    .fetch_all(conn)
    .await
}

async fn mark_published(conn: &mut PgConnection, ids: &[i64]) -> Result<(), sqlx::Error> {
    sqlx::query("UPDATE outbox SET published_at = now() WHERE id = ANY($1)")
        .bind(ids)
        .execute(conn)
        .await?;
    Ok(())
}

struct Outcome {
    /// How many rows from the start of the batch Kafka confirmed: only this prefix may be
    /// marked, because a later row of the same connection must not overtake an earlier one.
    delivered: usize,
    error: Option<String>,
}

/// Hands the whole batch to the producer, then waits for every acknowledgement.
async fn publish(
    producer: &FutureProducer,
    encoder: &Encoder<ConnectionMandateChanged>,
    batch: &[Pending],
) -> Outcome {
    let mut deliveries = Vec::with_capacity(batch.len());
    let mut error = None;
    for pending in batch {
        let payload =
            match serde_json::from_value::<ConnectionMandateChanged>(pending.payload.clone())
                .map_err(|e| e.to_string())
                .and_then(|event| encoder.encode(&event).map_err(|e| e.to_string()))
            {
                Ok(payload) => payload,
                Err(e) => {
                    error = Some(format!("outbox row {} cannot be encoded: {e}", pending.id));
                    break;
                }
            };
        let event_id = pending.event_id.to_string();
        let record = FutureRecord::to(&pending.topic)
            .key(&pending.key)
            .payload(&payload)
            .headers(OwnedHeaders::new().insert(Header {
                key: EVENT_ID_HEADER,
                value: Some(event_id.as_bytes()),
            }));
        match producer.send_result(record) {
            Ok(delivery) => deliveries.push(delivery),
            Err((e, _)) => {
                error = Some(format!(
                    "outbox row {} not accepted by the producer: {e}",
                    pending.id
                ));
                break;
            }
        }
    }
    let mut delivered = 0;
    let mut gap = false;
    for delivery in deliveries {
        match delivery.await {
            Ok(Ok(_)) if !gap => delivered += 1,
            Ok(Ok(_)) => {}
            Ok(Err((e, _))) => {
                gap = true;
                error.get_or_insert_with(|| format!("delivery failed: {e}"));
            }
            Err(_) => {
                gap = true;
                error.get_or_insert_with(|| "the producer dropped a delivery".to_owned());
            }
        }
    }
    Outcome { delivered, error }
}
