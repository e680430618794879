//! The outbox's errors.

use rdkafka::error::KafkaError;

/// Whatever an [`crate::Encode`] implementation fails with.
pub type BoxError = Box<dyn std::error::Error + Send + Sync + 'static>;

pub type Result<T, E = Error> = std::result::Result<T, E>;

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("database: {0}")]
    Database(#[from] sqlx::Error),

    /// An event's payload could not be turned into JSON for its row.
    #[error("event payload is not JSON-serializable: {0}")]
    Payload(#[from] serde_json::Error),

    #[error("kafka: {0}")]
    Kafka(#[from] KafkaError),

    /// A newer relay with the same role (`transactional.id`) took over: this one must stop
    /// publishing; its open transaction was aborted by the broker.
    #[error("fenced by a newer relay with transactional.id {role}: {message}")]
    Fenced { role: String, message: String },

    /// A service's database name outside the alphabet it is held to (see
    /// [`crate::database::create_if_missing`]).
    #[error("database name {0:?} must consist of a-z, 0-9 and _")]
    DatabaseName(String),

    /// A service's migrations could not be applied (an edited or failing migration).
    #[error("migrating database {database}: {source}")]
    Migrate {
        database: String,
        #[source]
        source: sqlx::migrate::MigrateError,
    },

    /// A database call of the relay's lock session did not answer in time.
    #[error("database did not answer within {0:?}")]
    DatabaseTimeout(std::time::Duration),
}

impl Error {
    /// Whether trying again later can succeed. A fenced relay can only start over (take the
    /// lock again); a payload that is not JSON never will be.
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
            Error::Kafka(e) => !matches!(e, KafkaError::ClientConfig(..)),
            Error::DatabaseTimeout(_) => true,
            Error::Fenced { .. }
            | Error::Payload(_)
            | Error::DatabaseName(_)
            | Error::Migrate { .. } => false,
        }
    }

    /// Whether this relay was fenced (or otherwise hit a fatal producer error): the only way
    /// on is a new producer after taking the relay lock again.
    pub fn is_fenced(&self) -> bool {
        matches!(self, Error::Fenced { .. })
    }
}
