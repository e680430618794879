//! The order flow's errors.

use crate::resilience::CallError;

pub type Result<T, E = Error> = std::result::Result<T, E>;

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("database: {0}")]
    Database(#[from] sqlx::Error),
    #[error(transparent)]
    Call(#[from] CallError),
    #[error("kafka: {0}")]
    Kafka(#[from] rdkafka::error::KafkaError),
    #[error("file: {0}")]
    Io(#[from] std::io::Error),
    #[error("outbox: {0}")]
    Outbox(#[from] outbox::Error),
    /// An answer that no retry will change (a malformed body, an unexpected status).
    #[error("{0}")]
    Permanent(String),
}

impl Error {
    /// Whether trying again later can succeed.
    pub fn is_retryable(&self) -> bool {
        match self {
            Error::Database(e) => !matches!(
                e,
                sqlx::Error::Configuration(_)
                    | sqlx::Error::ColumnDecode { .. }
                    | sqlx::Error::Decode(_)
                    | sqlx::Error::Encode(_)
                    | sqlx::Error::TypeNotFound { .. }
            ),
            Error::Call(e) => e.is_retryable(),
            Error::Kafka(_) | Error::Io(_) => true,
            Error::Outbox(e) => e.is_retryable(),
            Error::Permanent(_) => false,
        }
    }
}
