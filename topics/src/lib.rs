//! The platform's contracts: which topics exist, what their records look like, and how they
//! are encoded. Every producer and consumer of the platform depends on this crate.
//!
//! - [`spec`]: topic specs as data (partitions, cleanup policy, key format, value schema).
//! - [`commerce`]: the commerce domain's order and stock events.
//! - [`events`]: the domain events as Rust types bound to their topic and Avro schema.
//! - [`codec`]: the Confluent wire format (magic byte + schema id + Avro) against the registry.
//! - [`registry`]: a client of a Confluent-compatible schema registry.
//! - [`cluster`]: what the Kafka cluster holds, and creating topics.
//! - [`apply`]: making the cluster and registry match the specs (`topics apply`).
//! - [`groups`]: consumer groups' lag, and moving their committed offsets (`topics lag`, `reset`).
//! - [`kafka`]: producer and consumer settings shared by every service.
//! - [`settings`]: the layered configuration (defaults → file → env) every binary uses.
//! - [`error`]: the error type and `Result` alias.
//!
//! The `topics` binary (`src/main.rs`) is the operator's CLI over these modules.

pub mod apply;
pub mod cluster;
pub mod codec;
pub mod commerce;
pub mod error;
pub mod events;
pub mod groups;
pub mod kafka;
pub mod registry;
pub mod settings;
pub mod spec;

pub use error::{Error, Result};
