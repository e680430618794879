//! The projector's error domain.

pub type Result<T, E = Error> = std::result::Result<T, E>;

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("kafka: {0}")]
    Kafka(#[from] rdkafka::error::KafkaError),

    /// The read model's store failed; the same write can succeed later.
    #[error("{backend} store: {message}")]
    Store {
        backend: &'static str,
        message: String,
    },

    #[error(transparent)]
    Contract(#[from] topics::Error),

    #[error("configuration: {0}")]
    Config(String),
}

impl Error {
    /// Whether waiting and trying again can succeed. A projector retries these forever
    /// rather than skip an event; everything else about an event is final.
    pub fn is_retryable(&self) -> bool {
        match self {
            Error::Kafka(_) | Error::Store { .. } => true,
            Error::Contract(e) => e.is_retryable(),
            Error::Config(_) => false,
        }
    }
}

impl From<redis::RedisError> for Error {
    fn from(e: redis::RedisError) -> Self {
        Error::Store {
            backend: "redis",
            message: e.to_string(),
        }
    }
}

impl From<sqlx::Error> for Error {
    fn from(e: sqlx::Error) -> Self {
        Error::Store {
            backend: "mysql",
            message: e.to_string(),
        }
    }
}
