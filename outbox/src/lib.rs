//! The transactional outbox, shared by every write-side service (crm, commerce): events are
//! written to an `outbox` table in the same PostgreSQL transaction as the change they
//! describe, and one relay per database publishes them to Kafka.
//!
//! - [`database`]: a service's database, created at first start and migrated ([`database::prepare`]).
//! - [`schema`]: the `outbox` table ([`schema::MIGRATION`], [`schema::migrate`]).
//! - [`write`]: [`NewEvent`] and [`Outbox::enqueue`], called inside the caller's
//!   `sqlx::Transaction<Postgres>` (one statement), or [`Outbox::statement`], which writes a
//!   change and its events in one statement; a per-key transaction-scoped advisory lock makes
//!   the row id order per key the commit order. Writers `NOTIFY` only while the relay sleeps
//!   (it holds the [`Outbox::wake_lock`] then): one notifying commit at a time is all
//!   PostgreSQL allows.
//! - [`relay`]: [`Relay`], configured by [`RelayConfig`] (relay role = Kafka
//!   `transactional.id`, the [`Outbox`] names: NOTIFY channel and lock keys) and an
//!   [`Encode`] (trait or closure) that turns a [`Row`] into the record's value bytes.
//! - [`publisher`]: [`Publisher`], the relay's transactional producer: one Kafka transaction
//!   per [`Publisher::publish`]; a newer publisher with the same role fences older ones.
//! - [`session`]: the lock session's connection options (TCP keepalives, timeouts).
//! - [`error`]: [`Error`] with [`Error::is_retryable`].
//! - [`metrics`]: the relay's Prometheus metrics (backlog, oldest unpublished age, published,
//!   failures, transaction latency); `trace` keeps a request's trace context with its rows and
//!   puts it into the records' `traceparent` / `tracestate` headers.
//!
//! Guarantees: per key, events reach Kafka in commit order, each with the `event-id` header
//! (the event id) and the `event-seq` header (the row id, increasing per key). A row is
//! marked published only after the Kafka transaction that carried it committed, so a
//! `read_committed` consumer sees each row once per successful relay cycle; a relay crash
//! between commit and mark re-sends (at-least-once, dedupe by `event-seq` per key). A key
//! whose records cannot be written (missing topic, record too large, encoding fails) is held
//! back with backoff, its later rows are not sent before it, and every other key keeps flowing.
//!
//! Choosing names: one relay role per database (every instance relaying that database shares
//! it; two databases under one role would fence each other in turn), and per database an
//! [`Outbox`] whose `relay_lock` / `key_lock_space` no other advisory-lock user there takes.
//! Ordering is per key across all topics of the outbox. Shutdown lets a started Kafka
//! transaction finish (bounded by the 10 s message timeout and the 30 s commit/abort bound)
//! instead of leaving it open to block `read_committed` readers.
//!
//! ```no_run
//! # async fn demo(pool: sqlx::PgPool, db: sqlx::postgres::PgConnectOptions,
//! #               kafka: topics::settings::KafkaSettings) -> Result<(), outbox::Error> {
//! use outbox::{NewEvent, Outbox, Relay, RelayConfig, Row};
//! const OUTBOX: Outbox = Outbox::new("orders_outbox", 0x6f72_6465, 0x6f72);
//! outbox::schema::migrate(&pool).await?;
//!
//! let mut tx = pool.begin().await?;
//! // ... the business change on `tx` ...
//! let event = NewEvent::new("orders", "order-1", uuid::Uuid::new_v4(), &serde_json::json!({"total": 3}))?;
//! OUTBOX.enqueue(&mut tx, &[event]).await?;
//! tx.commit().await?;
//!
//! let (_stop, shutdown) = tokio::sync::watch::channel(false);
//! let encoder = |row: &Row| -> Result<Vec<u8>, outbox::BoxError> { Ok(row.payload.to_string().into_bytes()) };
//! let config = RelayConfig::new("orders-outbox-relay", OUTBOX);
//! tokio::spawn(Relay::new(config, db, kafka, encoder, shutdown).run());
//! # Ok(()) }
//! ```

pub mod database;
pub mod error;
mod held;
pub mod metrics;
pub mod publisher;
pub mod relay;
pub mod schema;
pub mod session;
mod trace;
pub mod write;

pub use error::{BoxError, Error};
pub use publisher::{Published, Publisher, Record};
pub use relay::{Encode, Relay, RelayConfig, Row};
pub use write::{NewEvent, Outbox};
