//! The relay: one per database (a session-level advisory lock), woken by `LISTEN/NOTIFY` and
//! polling as a fallback, publishing unpublished rows in id order through a [`Publisher`],
//! one Kafka transaction per cycle. Writers notify only while the relay sleeps, which it
//! shows by holding the wake lock (see [`crate::write`]); while writers are mid-transaction
//! it looks again within milliseconds instead of sleeping.
//!
//! A cycle fetches up to [`RelayConfig::batch_size`] unpublished rows of keys that are not
//! held back, encodes them with the [`Encode`] of the service, publishes them in one
//! transaction and marks exactly the rows of the committed transaction. A row whose record
//! cannot be encoded or written holds back its key (exponential backoff, 1 s to 30 s): the
//! key's later rows are not sent, every other key's rows are (an aborted transaction is
//! retried at once without the held keys). A held key whose backoff ran out is retried in a
//! cycle of its own, so a key that still fails never aborts the other keys' transaction.
//! Per key, a row is therefore marked only after it and every earlier row of its key were
//! committed to Kafka.
//!
//! Fencing: the relay's producer has the role's fixed `transactional.id`. When its database
//! session dies the lock is released (within about 30 s, see [`crate::session`]) and a
//! standby relay takes over, calling `init_transactions`, which fences this one: on
//! [`Error::Fenced`] the relay stops publishing and starts over by taking the lock again.

use std::future::Future;
use std::time::Duration;

use backon::{BackoffBuilder, ExponentialBuilder};
use sqlx::postgres::{PgConnectOptions, PgListener};
use sqlx::{Connection, PgConnection, PgPool};
use tokio::sync::watch;
use tokio::time::Instant;
use topics::settings::KafkaSettings;
use uuid::Uuid;

use crate::error::{BoxError, Error, Result};
use crate::held::Held;
use crate::publisher::{Publisher, Record};
use crate::session::{lock_session_options, QUERY_TIMEOUT};
use crate::write::Outbox;

const MAX_BACKOFF: Duration = Duration::from_secs(5);
/// How often a standby relay tries to take the lock.
const LOCK_RETRY: Duration = Duration::from_secs(2);
/// How soon an idle relay looks again while writers keep it from the wake lock (the first
/// time, doubling up to the second).
const MIN_BUSY_POLL: Duration = Duration::from_millis(1);
const MAX_BUSY_POLL: Duration = Duration::from_millis(16);

/// An unpublished outbox row, as the relay hands it to the [`Encode`].
#[derive(Debug, Clone, PartialEq, sqlx::FromRow)]
pub struct Row {
    /// The relay order and the per-key sequence (`event-seq`).
    pub id: i64,
    pub topic: String,
    pub key: String,
    pub event_id: Uuid,
    pub payload: serde_json::Value,
    /// The W3C trace context stored with the row (`None` when it was written untraced, or
    /// the table predates [`crate::schema::TRACE_CONTEXT_MIGRATION`]).
    #[sqlx(default)]
    pub traceparent: Option<String>,
    #[sqlx(default)]
    pub tracestate: Option<String>,
}

/// Turns a row into its record's value bytes (e.g. Avro in the Confluent wire format).
///
/// Any `Fn(&Row) -> Result<Vec<u8>, BoxError> + Send + 'static` closure is one. A type with
/// state (a schema id looked up in a registry) implements [`Encode::prepare`] too.
pub trait Encode: Send + 'static {
    /// Called before each non-empty cycle. An error (e.g. the registry is unreachable) makes
    /// the relay wait with backoff and call it again; rows wait in the outbox meanwhile.
    fn prepare(&mut self) -> impl Future<Output = Result<(), BoxError>> + Send {
        async { Ok(()) }
    }

    /// The record value for `row`. An error holds back the row's key (retried with backoff,
    /// never skipped): fix the encoder or the row and the key flows again.
    fn encode(&self, row: &Row) -> Result<Vec<u8>, BoxError>;
}

impl<F> Encode for F
where
    F: Fn(&Row) -> Result<Vec<u8>, BoxError> + Send + 'static,
{
    fn encode(&self, row: &Row) -> Result<Vec<u8>, BoxError> {
        self(row)
    }
}

/// What a relay is: its role and the outbox it serves.
#[derive(Debug, Clone)]
pub struct RelayConfig {
    /// The relay role, used as the Kafka `transactional.id` (and as the lock session's
    /// `application_name`): every instance of one service's relay uses the same role, e.g.
    /// `crm-outbox-relay`; different services need different roles.
    pub role: String,
    pub outbox: Outbox,
    /// Rows per cycle (one Kafka transaction).
    pub batch_size: i64,
    /// The fallback poll when no notification arrives (the listener reconnecting, or a
    /// notification sent while another instance held the lock).
    pub poll_interval: Duration,
}

impl RelayConfig {
    pub fn new(role: impl Into<String>, outbox: Outbox) -> Self {
        Self {
            role: role.into(),
            outbox,
            batch_size: 500,
            poll_interval: Duration::from_secs(1),
        }
    }
}

/// Publishes the outbox to Kafka until `shutdown` turns true.
pub struct Relay<E: Encode> {
    config: RelayConfig,
    database: PgConnectOptions,
    kafka: KafkaSettings,
    encoder: E,
    shutdown: watch::Receiver<bool>,
}

/// Why a relay stopped holding its lock.
enum Stop {
    Shutdown,
    /// The lock session failed or the producer was fenced: start over by taking the lock.
    Restart(Error),
}

/// Why a producer generation ended while the lock is held.
enum CycleStop {
    Stop(Stop),
    /// Kafka failed the transaction calls themselves: a new producer, after a backoff.
    Kafka(Error),
}

impl From<Stop> for CycleStop {
    fn from(stop: Stop) -> Self {
        CycleStop::Stop(stop)
    }
}

impl<E: Encode> Relay<E> {
    /// `database` is the service's own database: the lock session adds the settings of
    /// [`crate::session`] to it.
    pub fn new(
        config: RelayConfig,
        database: PgConnectOptions,
        kafka: KafkaSettings,
        encoder: E,
        shutdown: watch::Receiver<bool>,
    ) -> Self {
        Self {
            config,
            database,
            kafka,
            encoder,
            shutdown,
        }
    }

    pub async fn run(mut self) {
        // Backlog and oldest-unpublished-age gauges, while the relay runs.
        let _backlog = crate::metrics::watch_backlog(&self.database, &self.config.role);
        let mut backoff = backoff();
        loop {
            match self.hold_lock_and_relay().await {
                Stop::Shutdown => break,
                Stop::Restart(e) => {
                    let delay = backoff.next().unwrap_or(MAX_BACKOFF);
                    tracing::warn!(role = %self.config.role, error = %e, ?delay, "outbox relay starts over");
                    if self.sleep(delay).await.is_err() {
                        break;
                    }
                }
            }
        }
        tracing::info!(role = %self.config.role, "outbox relay stopped");
    }

    async fn hold_lock_and_relay(&mut self) -> Stop {
        // The lock belongs to this connection's session, so all relay queries run on it: if
        // the connection dies, so does the lock, and the relay notices on its next query.
        let options = lock_session_options(&self.database, &self.config.role);
        let mut lock = match bounded(PgConnection::connect_with(&options)).await {
            Ok(conn) => conn,
            Err(e) => return Stop::Restart(e),
        };
        if let Err(stop) = self.take_lock(&mut lock).await {
            return stop;
        }
        tracing::info!(role = %self.config.role, "outbox relay holds the relay lock");
        let mut listener = self.listen().await;
        let mut held = Held::default();
        let mut backoff = backoff();
        loop {
            let publisher = match self.start_publisher().await {
                Ok(publisher) => publisher,
                Err(stop) => return stop,
            };
            match self
                .cycles(&mut lock, listener.as_mut(), &publisher, &mut held)
                .await
            {
                CycleStop::Stop(stop) => return stop,
                CycleStop::Kafka(e) => {
                    let delay = backoff.next().unwrap_or(MAX_BACKOFF);
                    tracing::warn!(error = %e, ?delay, "outbox transaction failed; starting a new producer");
                    drop(publisher);
                    if self.sleep(delay).await.is_err() {
                        return Stop::Shutdown;
                    }
                }
            }
        }
    }

    async fn cycles(
        &mut self,
        lock: &mut PgConnection,
        mut listener: Option<&mut PgListener>,
        publisher: &Publisher,
        held: &mut Held,
    ) -> CycleStop {
        let mut backoff = backoff();
        let mut busy = MIN_BUSY_POLL;
        loop {
            if *self.shutdown.borrow() {
                return Stop::Shutdown.into();
            }
            let now = Instant::now();
            let due = held.due(now);
            let fetched = if due.is_empty() {
                fetch_except(lock, &held.keys(), self.config.batch_size).await
            } else {
                fetch_only(lock, &due, self.config.batch_size).await
            };
            let batch = match fetched {
                Ok(batch) => batch,
                Err(e) => return Stop::Restart(e).into(),
            };
            if batch.is_empty() {
                if !due.is_empty() {
                    // Their rows are gone (published by an earlier holder of the lock).
                    for key in &due {
                        held.release(key);
                    }
                    continue;
                }
                match self
                    .sleep_until_work(lock, listener.as_deref_mut(), held, &mut busy)
                    .await
                {
                    Ok(()) => continue,
                    Err(stop) => return stop.into(),
                }
            }
            busy = MIN_BUSY_POLL;
            if let Err(e) = self.encoder.prepare().await {
                let delay = backoff.next().unwrap_or(MAX_BACKOFF);
                tracing::warn!(error = %e, ?delay, "outbox encoder not ready; events wait in the outbox");
                if self.sleep(delay).await.is_err() {
                    return Stop::Shutdown.into();
                }
                continue;
            }

            let mut failed = std::collections::HashMap::new();
            let mut records = Vec::with_capacity(batch.len());
            // Producer spans of traced rows (none when tracing is off), ended after the commit.
            let mut spans = Vec::new();
            let publish_started = std::time::Instant::now();
            for row in &batch {
                if failed.contains_key(&row.key) {
                    continue;
                }
                match self.encoder.encode(row) {
                    Ok(value) => records.push(Record {
                        id: row.id,
                        topic: row.topic.clone(),
                        key: row.key.clone(),
                        event_id: row.event_id,
                        value,
                        trace: crate::trace::publishing(row, &mut spans),
                    }),
                    Err(e) => {
                        failed.insert(
                            row.key.clone(),
                            format!("outbox row {} cannot be encoded: {e}", row.id),
                        );
                    }
                }
            }
            let sent_keys: std::collections::HashSet<&str> =
                records.iter().map(|r| r.key.as_str()).collect();
            let sent_key_count = sent_keys.len();
            drop(sent_keys);

            // Not cancelled by shutdown: a transaction left open would hold back
            // read_committed consumers of its partitions until the broker aborts it.
            let published = match publisher.publish(&records).await {
                Ok(published) => published,
                Err(e) if e.is_fenced() => return Stop::Restart(e).into(),
                Err(e) => {
                    crate::metrics::publish_failed(&self.config.role, "kafka", 1);
                    return CycleStop::Kafka(e);
                }
            };
            crate::metrics::published(&self.config.role, &published, failed.len(), publish_started);
            drop(spans);
            let publish_took = publish_started.elapsed();
            if !published.committed.is_empty() {
                let mark_started = std::time::Instant::now();
                if let Err(e) = mark_published(lock, &published.committed).await {
                    // Kafka has them: the next holder of the lock sends them again.
                    return Stop::Restart(e).into();
                }
                let committed: std::collections::HashSet<i64> =
                    published.committed.iter().copied().collect();
                for row in batch.iter().filter(|row| committed.contains(&row.id)) {
                    if held.release(&row.key) {
                        tracing::info!(key = %row.key, "held-back outbox key flows again");
                    }
                }
                tracing::debug!(
                    count = committed.len(),
                    fetch_us = (publish_started - now.into_std()).as_micros() as u64,
                    publish_us = publish_took.as_micros() as u64,
                    mark_us = mark_started.elapsed().as_micros() as u64,
                    "outbox batch committed"
                );
            }
            // Nothing got through and every key sent failed: Kafka as a whole is failing
            // (e.g. every record timed out), not these keys.
            let whole_batch_failed = published.aborted
                && published.acknowledged == 0
                && sent_key_count > 1
                && published.failed.len() >= sent_key_count;
            // Rows that could not be encoded hold their key back whatever Kafka did.
            if !whole_batch_failed {
                failed.extend(published.failed);
            }
            for (key, reason) in &failed {
                let delay = held.hold(key, Instant::now());
                tracing::warn!(%key, %reason, ?delay, "outbox key held back; other keys go on");
            }
            if published.aborted && (whole_batch_failed || failed.is_empty()) {
                let delay = backoff.next().unwrap_or(MAX_BACKOFF);
                tracing::warn!(
                    ?delay,
                    "outbox transaction aborted; retrying after a backoff"
                );
                if self.sleep(delay).await.is_err() {
                    return Stop::Shutdown.into();
                }
            } else if !published.aborted {
                backoff = self::backoff();
            }
        }
    }

    async fn take_lock(&mut self, lock: &mut PgConnection) -> Result<(), Stop> {
        let mut logged = false;
        loop {
            let taken: bool = bounded(async {
                sqlx::query_scalar("SELECT pg_try_advisory_lock($1)")
                    .bind(self.config.outbox.relay_lock)
                    .fetch_one(&mut *lock)
                    .await
            })
            .await
            .map_err(Stop::Restart)?;
            if taken {
                return Ok(());
            }
            if !logged {
                tracing::info!(role = %self.config.role, "another instance relays the outbox; standing by");
                logged = true;
            }
            if self.sleep(LOCK_RETRY).await.is_err() {
                return Err(Stop::Shutdown);
            }
        }
    }

    async fn listen(&self) -> Option<PgListener> {
        // PgListener needs a pool to reconnect from; a lazy one opens a connection only when
        // the listener asks for it.
        let pool = PgPool::connect_lazy_with(self.database.clone());
        let mut listener = match bounded(PgListener::connect_with(&pool)).await {
            Ok(listener) => listener,
            Err(e) => {
                tracing::warn!(error = %e, "outbox relay could not LISTEN; polling only");
                return None;
            }
        };
        if let Err(e) = bounded(listener.listen(self.config.outbox.channel)).await {
            tracing::warn!(error = %e, "outbox relay could not LISTEN; polling only");
            return None;
        }
        Some(listener)
    }

    /// A producer whose `init_transactions` succeeded, retried with backoff until Kafka
    /// answers; events wait in the outbox meanwhile.
    async fn start_publisher(&mut self) -> Result<Publisher, Stop> {
        let mut backoff = backoff();
        loop {
            let started = tokio::select! {
                started = Publisher::start(&self.kafka, &self.config.role) => started,
                _ = self.shutdown.wait_for(|stop| *stop) => return Err(Stop::Shutdown),
            };
            match started {
                Ok(publisher) => return Ok(publisher),
                Err(e) if !e.is_retryable() && !e.is_fenced() => {
                    // librdkafka refuses only a configuration, which retrying cannot fix.
                    tracing::error!(error = %e, "outbox relay cannot create its producer; events stay in the outbox");
                    let _ = self.shutdown.wait_for(|stop| *stop).await;
                    return Err(Stop::Shutdown);
                }
                Err(e) => {
                    let delay = backoff.next().unwrap_or(MAX_BACKOFF);
                    tracing::warn!(error = %e, ?delay, "outbox relay cannot start its Kafka transactions yet");
                    if self.sleep(delay).await.is_err() {
                        return Err(Stop::Shutdown);
                    }
                }
            }
        }
    }

    /// Sleeps, or fails at once when shutdown is requested.
    async fn sleep(&mut self, delay: Duration) -> Result<(), ()> {
        tokio::select! {
            _ = tokio::time::sleep(delay) => Ok(()),
            _ = self.shutdown.wait_for(|stop| *stop) => Err(()),
        }
    }

    /// Called when a fetch found nothing: sleeps until there may be work, holding the wake
    /// lock meanwhile so that writers notify (see [`crate::write`]).
    ///
    /// A writer between its write and its commit holds the wake lock shared and will not
    /// notify: then the relay does not sleep but looks again after `busy` (1 ms, doubling to
    /// 16 ms while writers keep it from the lock). Once it has the lock, every writer that did
    /// not notify has committed, so one more look decides whether to sleep.
    async fn sleep_until_work(
        &mut self,
        lock: &mut PgConnection,
        listener: Option<&mut PgListener>,
        held: &Held,
        busy: &mut Duration,
    ) -> Result<(), Stop> {
        let (wake_space, wake_key) = self.config.outbox.wake_lock();
        let taken: bool = bounded(
            sqlx::query_scalar("SELECT pg_try_advisory_lock($1, $2)")
                .bind(wake_space)
                .bind(wake_key)
                .fetch_one(&mut *lock),
        )
        .await
        .map_err(Stop::Restart)?;
        if !taken {
            let delay = *busy;
            *busy = (*busy * 2).min(MAX_BUSY_POLL);
            return self.sleep(delay).await.map_err(|()| Stop::Shutdown);
        }
        *busy = MIN_BUSY_POLL;
        let waited = match any_unpublished_except(lock, &held.keys()).await {
            Ok(true) => Ok(()),
            Ok(false) => self
                .wait_for_work(listener, held)
                .await
                .map_err(|()| Stop::Shutdown),
            Err(e) => Err(Stop::Restart(e)),
        };
        bounded(
            sqlx::query("SELECT pg_advisory_unlock($1, $2)")
                .bind(wake_space)
                .bind(wake_key)
                .execute(&mut *lock),
        )
        .await
        .map_err(Stop::Restart)?;
        waited
    }

    /// Waits for a notification, the poll interval, or the next held key's retry.
    async fn wait_for_work(
        &mut self,
        listener: Option<&mut PgListener>,
        held: &Held,
    ) -> Result<(), ()> {
        let mut until = Instant::now() + self.config.poll_interval;
        if let Some(due) = held.next_due() {
            until = until.min(due);
        }
        let notified = async {
            match listener {
                Some(listener) => {
                    if let Err(e) = listener.recv().await {
                        // The poll keeps the relay going while the listener reconnects.
                        tracing::debug!(error = %e, "outbox listener failed");
                        std::future::pending::<()>().await;
                    }
                }
                None => std::future::pending::<()>().await,
            }
        };
        tokio::select! {
            _ = notified => Ok(()),
            _ = tokio::time::sleep_until(until) => Ok(()),
            _ = self.shutdown.wait_for(|stop| *stop) => Err(()),
        }
    }
}

fn backoff() -> impl Iterator<Item = Duration> {
    ExponentialBuilder::default()
        .with_min_delay(Duration::from_millis(200))
        .with_max_delay(MAX_BACKOFF)
        .without_max_times()
        .build()
}

/// Bounds a call on the lock session (see [`crate::session`]).
async fn bounded<T>(call: impl Future<Output = Result<T, sqlx::Error>>) -> Result<T> {
    match tokio::time::timeout(QUERY_TIMEOUT, call).await {
        Ok(result) => Ok(result?),
        Err(_) => Err(Error::DatabaseTimeout(QUERY_TIMEOUT)),
    }
}

async fn fetch_except(conn: &mut PgConnection, held: &[String], limit: i64) -> Result<Vec<Row>> {
    bounded(
        sqlx::query_as(
            "-- every column: traceparent/tracestate exist only after TRACE_CONTEXT_MIGRATION
             SELECT * FROM outbox
             WHERE published_at IS NULL AND NOT (key = ANY($1))
             ORDER BY id LIMIT $2",
        )
        .bind(held)
        .bind(limit)
        .fetch_all(conn),
    )
    .await
}

async fn any_unpublished_except(conn: &mut PgConnection, held: &[String]) -> Result<bool> {
    bounded(
        sqlx::query_scalar(
            "SELECT EXISTS (SELECT 1 FROM outbox
                            WHERE published_at IS NULL AND NOT (key = ANY($1)))",
        )
        .bind(held)
        .fetch_one(conn),
    )
    .await
}

async fn fetch_only(conn: &mut PgConnection, keys: &[String], limit: i64) -> Result<Vec<Row>> {
    bounded(
        sqlx::query_as(
            "-- every column: traceparent/tracestate exist only after TRACE_CONTEXT_MIGRATION
             SELECT * FROM outbox
             WHERE published_at IS NULL AND key = ANY($1)
             ORDER BY id LIMIT $2",
        )
        .bind(keys)
        .bind(limit)
        .fetch_all(conn),
    )
    .await
}

async fn mark_published(conn: &mut PgConnection, ids: &[i64]) -> Result<()> {
    bounded(
        sqlx::query("UPDATE outbox SET published_at = now() WHERE id = ANY($1)")
            .bind(ids)
            .execute(conn),
    )
    .await?;
    Ok(())
}
