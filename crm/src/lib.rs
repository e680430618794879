//! The CRM's write side: it owns customers and the mandate each gives on their grid
//! connection, and tells the rest of the platform about mandates through the
//! `connection-mandates` topic, so the IoT platform never has to call the CRM.
//!
//! - [`configuration`]: the service's settings (defaults → `CRM_CONFIG` file → env).
//! - [`startup`]: database bootstrap, seeding, and the [`startup::Application`] that serves the
//!   API and runs the outbox relay until shutdown.
//! - [`telemetry`]: tracing setup.
//! - [`routes`]: the HTTP API, one module per resource (`customers`, `classic`).
//! - [`domain`]: customers, their validation, and the classic mandate encoding.
//! - [`store`]: the customer queries, each change written with its events in one transaction.
//! - [`outbox`]: the CRM's glue to the shared `outbox` crate: its outbox names, enqueueing
//!   mandate events, and the Avro encoder its relay publishes with.
//! - [`seed`]: the one-time import of the shipped customer CSV.
//! - [`error`]: the API's error type and how it maps to HTTP statuses.

pub mod configuration;
pub mod domain;
pub mod error;
pub mod outbox;
pub mod routes;
pub mod seed;
pub mod startup;
pub mod store;
pub mod telemetry;
