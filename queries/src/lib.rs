//! Continuous queries over the commerce databases' change topics, maintained incrementally by
//! differential dataflow, each publishing its result changes (added / updated / deleted) to a
//! compacted topic of its own.
//!
//! - [`declared`]: the queries, declared in one place (key, columns, dataflow).
//! - [`query`]: what a query is ([`query::Query`]) and the collections it reads ([`query::Inputs`]).
//! - [`row`]: result columns and cells.
//! - [`model`]: the source tables' rows, parsed at the edge from the connector's records.
//! - [`cdc`]: Debezium envelopes as upserts and deletes of source rows.
//! - [`avro`]: generic decoding of Confluent-framed Avro with writer schemas from the registry.
//! - [`dead_letters`]: source changes that can never be read, kept with the reason; waiting
//!   for the registry while decoding is only transiently impossible.
//! - [`engine`]: the differential-dataflow worker and the per-table state feeding it.
//! - [`results`]: result changes, their Avro contract, reading a result topic back.
//! - [`runner`]: the engine's life: recover (replay sources, diff against what was
//!   published), then follow the sources and the clock, publishing in Kafka transactions.
//! - [`settings`]: the engine's layered settings.
//! - [`catalogue`]: the catalogue read model (projector runtime) and the `catalogue` service.
//! - [`dashboard`]: the live page and its Server-Sent Events (`dashboard` service).
//! - [`notifications`]: the low/critical-stock business events and the `notifications` service.
//! - [`error`]: the error type; [`Error::is_retryable`].

pub mod avro;
pub mod catalogue;
pub mod cdc;
pub mod dashboard;
pub mod dead_letters;
pub mod declared;
pub mod engine;
pub mod error;
pub mod model;
pub mod notifications;
pub mod query;
pub mod results;
pub mod row;
pub mod runner;
pub mod settings;

pub use error::{Error, Result};
