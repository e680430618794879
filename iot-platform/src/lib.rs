//! The IoT platform's read side: it knows the current mandate of every grid connection without
//! ever calling the CRM, by folding `connection-mandates` into Redis.
//!
//! - [`configuration`]: the service's settings (defaults → file → env).
//! - [`mandates`]: the read model, a pure fold of mandate events.
//! - [`generations`]: which consumer group and store namespace hold each read model generation.
//! - [`routes`]: the HTTP API over the read model.
//! - [`startup`]: wiring the projector and the HTTP server, following generation switches.
//! - [`rebuild`]: building the next generation from the log and switching reads to it.

pub mod configuration;
pub mod generations;
pub mod mandates;
pub mod rebuild;
pub mod routes;
pub mod startup;
