//! The IoT platform's read side: it knows the current mandate of every grid connection without
//! ever calling the CRM, by folding `connection-mandates` into Redis.
//!
//! - [`configuration`]: the service's settings (defaults → file → env).
//! - [`mandates`]: the read model, a pure fold of mandate events.
//! - [`routes`]: the HTTP API over the read model.
//! - [`startup`]: wiring the projector and the HTTP server, run until a shutdown signal.

pub mod configuration;
pub mod mandates;
pub mod routes;
pub mod startup;
