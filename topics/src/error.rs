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

    /// The registry was unreachable, timed out, or answered 5xx, 408 or 429: worth retrying.
    #[error("schema registry at {url}: {message}")]
    Registry { url: String, message: String },

    /// The registry refused a request for good (a 4xx other than 408, 409 on registering, or
    /// 429): the same request gets the same answer.
    #[error("schema registry at {url} refused the request: HTTP {status}: {message}")]
    RegistryRejected {
        url: String,
        status: u16,
        message: String,
    },

    #[error("schema for subject {subject} breaks BACKWARD compatibility: {reason}")]
    IncompatibleSchema { subject: String, reason: String },

    #[error("avro: {0}")]
    Avro(#[from] Box<apache_avro::Error>),

    /// A record names a schema id the registry does not have (yet): retried, since a registry
    /// that restarted or is being restored may learn it.
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

    /// The group is a projector's: its read model's store owns the offsets, so moving Kafka's
    /// would change nothing but the lag shown.
    #[error(
        "consumer group {group} is a projector whose store owns its offsets; resetting Kafka's changes nothing. Replay with a rebuild (e.g. `iot-platform rebuild`), or empty the read model's store and restart the group"
    )]
    StoreOwnedOffsets { group: String },

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
            // A registry that restarted may not know an id yet (or lost it until `topics apply`
            // runs): an event must wait for its schema, never be dead-lettered for lacking it.
            Error::Kafka(_)
            | Error::KafkaUnreachable { .. }
            | Error::Registry { .. }
            | Error::UnknownSchemaId(_) => true,
            Error::Config(_)
            | Error::RegistryRejected { .. }
            | Error::IncompatibleSchema { .. }
            | Error::Avro(_)
            | Error::WireFormat(_)
            | Error::UnknownTopic(_)
            | Error::StoreOwnedOffsets { .. }
            | Error::GroupActive { .. }
            | Error::NoCommittedOffsets { .. }
            | Error::BadResetTarget(_)
            | Error::ResetNotApplied { .. } => false,
        }
    }
}
