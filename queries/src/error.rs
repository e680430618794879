//! The queries crate's errors; [`Error::is_retryable`] tells a transient failure (Kafka or the
//! registry unreachable) from one that will not go away by trying again.

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("configuration: {0}")]
    Config(String),
    #[error(transparent)]
    Topics(#[from] topics::Error),
    #[error("kafka: {0}")]
    Kafka(#[from] rdkafka::error::KafkaError),
    #[error("avro: {0}")]
    Avro(String),
    /// A source change the queries cannot read (a row without a column they need, an unknown
    /// status or tier).
    #[error("source change: {0}")]
    Source(String),
    /// A record on a result topic that does not decode as a result change.
    #[error("result change: {0}")]
    Result(String),
    #[error("the dataflow worker stopped")]
    EngineStopped,
    #[error("{what} did not happen within {secs} s")]
    Timeout { what: String, secs: u64 },
    #[error("store: {0}")]
    Store(String),
}

impl From<apache_avro::Error> for Error {
    fn from(e: apache_avro::Error) -> Self {
        Error::Avro(e.to_string())
    }
}

impl Error {
    /// Whether trying again can succeed.
    pub fn is_retryable(&self) -> bool {
        match self {
            Error::Topics(e) => e.is_retryable(),
            Error::Kafka(e) => !matches!(
                e.rdkafka_error_code(),
                Some(rdkafka::types::RDKafkaErrorCode::Fenced)
                    | Some(rdkafka::types::RDKafkaErrorCode::ProducerFenced)
                    | Some(rdkafka::types::RDKafkaErrorCode::InvalidTransactionalState)
            ),
            Error::Timeout { .. } | Error::Store(_) => true,
            Error::Config(_)
            | Error::Avro(_)
            | Error::Source(_)
            | Error::Result(_)
            | Error::EngineStopped => false,
        }
    }
}

pub type Result<T, E = Error> = std::result::Result<T, E>;
