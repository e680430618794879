//! The order flow against real services: commerce's products, customers and orders in this
//! process, the order flow's components as child processes (so they can be killed), real
//! Kafka, registry and PostgreSQL.

mod audit;
mod helpers;
mod loyalty;
mod restock;
mod saga;
mod tracking;
