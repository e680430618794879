//! The error domain of the contracts crate.

use rdkafka::error::KafkaError;

pub type Result<T, E = Error> = std::result::Result<T, E>;

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("configuration: {0}")]
    Config(#[from] config::ConfigError),

    #[error("kafka: {0}")]
    Kafka(#[from] KafkaError),

    #[error("kafka at {bootstrap} did not answer: {source}")]
    KafkaUnreachable {
        bootstrap: String,
        source: KafkaError,
    },

    #[error("schema registry at {url}: {message}")]
    Registry { url: String, message: String },

    #[error("schema for subject {subject} breaks BACKWARD compatibility: {reason}")]
    IncompatibleSchema { subject: String, reason: String },

    #[error("avro: {0}")]
    Avro(#[from] Box<apache_avro::Error>),

    /// A record names a schema id the registry does not have: it can never be decoded here.
    #[error("schema id {0} is unknown to the registry")]
    UnknownSchemaId(u32),

    #[error("not in the Confluent wire format: {0}")]
    WireFormat(String),

    #[error("unknown topic {0}")]
    UnknownTopic(String),

    #[error(
        "consumer group {group} is {state} with {members} member(s); stop them before moving its offsets"
    )]
    GroupActive {
        group: String,
        state: String,
        members: usize,
    },

    #[error(
        "consumer group {group} has no committed offsets{}",
        .topic.as_ref().map_or_else(|| " (does it exist?)".to_owned(), |t| format!(" on {t}"))
    )]
    NoCommittedOffsets {
        group: String,
        topic: Option<String>,
    },

    #[error("reset target {0:?} is not earliest, latest, an RFC 3339 time or epoch milliseconds")]
    BadResetTarget(String),

    #[error(
        "consumer group {group}: the new offset of {topic} partition {partition} did not take"
    )]
    ResetNotApplied {
        group: String,
        topic: String,
        partition: i32,
    },
}

impl From<apache_avro::Error> for Error {
    fn from(e: apache_avro::Error) -> Self {
        Error::Avro(Box::new(e))
    }
}

impl Error {
    /// Whether trying again later can succeed (a service was unreachable or busy), as opposed
    /// to input that will never be accepted. Consumers use this to choose retry vs dead-letter.
    pub fn is_retryable(&self) -> bool {
        match self {
            Error::Kafka(_) | Error::KafkaUnreachable { .. } | Error::Registry { .. } => true,
            Error::Config(_)
            | Error::IncompatibleSchema { .. }
            | Error::Avro(_)
            | Error::WireFormat(_)
            | Error::UnknownSchemaId(_)
            | Error::UnknownTopic(_)
            | Error::GroupActive { .. }
            | Error::NoCommittedOffsets { .. }
            | Error::BadResetTarget(_)
            | Error::ResetNotApplied { .. } => false,
        }
    }
}
