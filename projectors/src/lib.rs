//! The projector runtime every read model of the platform runs on: a consumer-group member
//! that decodes events, folds them into a read model in batches, and records per partition
//! the offset it applied atomically with the state, so redelivery changes nothing.
//!
//! - [`projection`]: what a read model makes of an event ([`Projection`], [`Change`]).
//! - [`store`]: where read models live ([`Store`]) and the [`store::redis`] backend.
//! - [`runtime`]: the consume → decode → apply → commit loop ([`Projector`]).
//! - [`error`]: the error domain; [`Error::is_retryable`] decides retry vs dead-letter.

pub mod error;
pub mod projection;
pub mod runtime;
pub mod store;

pub use error::{Error, Result};
pub use projection::{Change, Projection};
pub use runtime::{Projector, ProjectorSettings};
pub use store::Store;
