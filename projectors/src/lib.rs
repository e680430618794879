//! The projector runtime every read model of the platform runs on: a consumer-group member
//! that decodes events, folds them into a read model in batches, and records per partition
//! the offset it applied atomically with the state, so redelivery changes nothing.
//!
//! - [`projection`]: what a read model makes of an event ([`Projection`], [`Change`]).
//! - [`digest`]: a count and hash chain of a key's events, for read models compared on every event.
//! - [`store`]: where read models live ([`Store`]) and the [`store::redis`] backend.
//! - [`runtime`]: the consume → decode → fold → write → commit loop ([`Projector`]); the store
//!   owns the offsets, so a partition starts where its store stands.
//! - [`dead_letters`]: reading back what a group dead-lettered (a rebuild checks it).
//! - [`error`]: the error domain; [`Error::is_retryable`] decides retry vs dead-letter.

pub mod dead_letters;
pub mod digest;
pub mod error;
pub mod projection;
pub mod runtime;
pub mod store;

pub use error::{Error, Result};
pub use projection::{Change, Projection};
pub use runtime::{Projector, ProjectorSettings};
pub use store::Store;
