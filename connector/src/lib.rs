//! PostgreSQL change data capture into Kafka, as Debezium's PostgreSQL
//! connector would publish it.
//!
//! - [`config`]: layered configuration (defaults → TOML → environment).
//! - [`pg`]: pre-flight checks, publication, slot and catalog queries.
//! - [`schema`]: PostgreSQL → Avro type mapping and envelope/key schemas.
//! - [`value`]: text values → typed datums → Avro binary / JSON.
//! - [`envelope`]: Debezium's envelope and key.
//! - [`publisher`]: idempotent Kafka producer, topics, schema registry.
//! - [`snapshot`]: initial snapshot through the slot's exported snapshot.
//! - [`stream`]: pgoutput streaming, per-transaction publishing, heartbeats.
//! - [`incremental`]: incremental snapshots on a signal (DBLog watermarks).
//! - [`offsets`]: durable offset (slot + compacted topic) and the ack tracker.
//! - [`runner`]: wiring, `status` and `reset`.
//! - [`error`]: one-line errors.

pub mod config;
pub mod envelope;
pub mod error;
pub mod incremental;
pub mod offsets;
pub mod pg;
pub mod publisher;
pub mod runner;
pub mod schema;
pub mod snapshot;
pub mod stream;
pub mod value;

pub use error::{Error, Result};
