//! What happens after an order is placed, on Kafka and PostgreSQL with no workflow server:
//! a checkout saga that survives crashes, a simulated payment provider, a durable restock
//! timer, loyalty points exactly once, and an audit log. Each component runs as
//! `orderflow <component>`; see `README.md` for the design and its guarantees.
//!
//! - [`saga`]: the checkout steps (profile, shipment, payment, email, history, sold) and the
//!   compensation of a declined payment (release the stock, cancel the order); state per
//!   order in PostgreSQL, each step's effect and advance in one transaction.
//! - [`payments`]: the simulated payment provider (latency, decline and error rates),
//!   idempotent per key.
//! - [`restock`]: the restock timer armed in the sale's transaction, fired by a poller with
//!   `FOR UPDATE SKIP LOCKED`, carried out once per restock id.
//! - [`loyalty`]: points per order, the ledger row and the points in one transaction; a naive
//!   mode that over-counts, for the demo and the benchmark.
//! - [`audit`]: every order event once in an hourly JSON-lines file, fsynced before the
//!   offsets are committed.
//! - [`consumer`]: the batch consumer of `commerce.order-events` the others share.
//! - [`clients`], [`resilience`]: calls to the other services, each under a policy of timeout,
//!   retries with backoff and jitter, and a circuit breaker.
//! - [`tracking`]: the order flow's read model, every order's status and history folded by
//!   the projector runtime into MySQL, served per order and per customer over HTTP.
//! - [`chaos`]: `orderflow chaos --orders N` (`scripts/chaos`), every process killed at random
//!   while orders flow, then the figures checked.
//! - [`configuration`], [`error`]: settings and errors (databases are prepared by `outbox::database`).
//! - [`telemetry`]: logs, traces and `/metrics` (the order flow's metric names in
//!   [`telemetry::names`]).

pub mod audit;
pub mod chaos;
pub mod clients;
pub mod configuration;
pub mod consumer;
pub mod error;
pub mod loyalty;
pub mod payments;
pub mod resilience;
pub mod restock;
pub mod saga;
pub mod telemetry;
pub mod tracking;

/// A short id for one chaos run's names.
pub fn chaos_id() -> String {
    uuid::Uuid::new_v4().simple().to_string()[..8].to_owned()
}
