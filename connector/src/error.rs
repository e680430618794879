//! The connector's error type. Every variant renders as one line that names
//! the cause, because operators read these in a terminal or a log line.

use std::fmt;

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("configuration: {0}")]
    Config(String),

    #[error("cannot connect to PostgreSQL: {}", pg_message(.0))]
    PostgresConnect(#[source] tokio_postgres::Error),

    #[error(
        "PostgreSQL has wal_level={0}; logical replication needs wal_level=logical \
         (set it in postgresql.conf and restart the server)"
    )]
    WalLevel(String),

    #[error(
        "role \"{0}\" may not stream changes: it lacks the REPLICATION privilege \
         (ALTER ROLE \"{0}\" WITH REPLICATION)"
    )]
    NoReplicationPrivilege(String),

    #[error("table {0} does not exist in the database")]
    UnknownTable(String),

    #[error(
        "replication slot \"{slot}\" was invalidated by the server ({reason}); the WAL it held is \
         gone, so changes after LSN {lsn} cannot be streamed: run `connector reset` to drop the \
         slot and take a new snapshot"
    )]
    SlotInvalidated {
        slot: String,
        reason: String,
        lsn: String,
    },

    #[error(
        "replication slot \"{0}\" is missing but the stored offset says the snapshot was done, \
         so changes may have been missed: run `connector reset` to take a new snapshot"
    )]
    SlotLost(String),

    #[error(
        "PostgreSQL changed under the connector: {0}; the slot position the connector \
         resumes from may not exist there: run `connector reset` to take a new snapshot"
    )]
    ServerChanged(String),

    #[error("Kafka at {servers} is unreachable: {}", one_line(.source))]
    KafkaUnreachable {
        servers: String,
        #[source]
        source: rdkafka::error::KafkaError,
    },

    /// A PostgreSQL failure the connector describes itself (no underlying error).
    #[error("PostgreSQL: {0}")]
    Postgres(String),

    /// A failure of the PostgreSQL client: the server's message and SQLSTATE, or the client's.
    #[error("PostgreSQL: {}", pg_message(.0))]
    PostgresClient(#[source] tokio_postgres::Error),

    /// A replication-protocol failure the connector describes itself.
    #[error("replication stream: {0}")]
    Replication(String),

    #[error("replication stream: {}", one_line(.0))]
    ReplicationClient(#[source] pg_walstream::ReplicationError),

    /// A Kafka failure the connector describes itself (a delivery lost, a bad offset record).
    #[error("Kafka: {0}")]
    Kafka(String),

    #[error("Kafka: {}", one_line(.0))]
    KafkaClient(#[source] rdkafka::error::KafkaError),

    /// The shared client layer (schema registry): classified by [`topics::Error::is_retryable`].
    #[error(transparent)]
    Topics(#[from] topics::Error),

    #[error(
        "table {table}: {change}, which the schema registry refuses for {subject} as \
         incompatible with the registered versions ({reason})"
    )]
    SchemaIncompatible {
        table: String,
        subject: String,
        change: String,
        reason: String,
    },

    #[error(
        "table {table}: columns {first:?} and {second:?} both become the Avro field {field:?}; \
         rename one of them (or use format = \"json\", which keeps column names)"
    )]
    FieldNameCollision {
        table: String,
        first: String,
        second: String,
        field: String,
    },

    #[error(
        "table {table}: a {op} carries no value for primary-key column {column:?} (its REPLICA \
         IDENTITY index does not contain the primary key); set REPLICA IDENTITY FULL or DEFAULT, \
         or use an index that includes the primary key"
    )]
    MissingKey {
        table: String,
        column: String,
        op: &'static str,
    },

    #[error("cannot convert {column} value {value:?}: {reason}")]
    Value {
        column: String,
        value: String,
        reason: String,
    },
}

pub type Result<T, E = Error> = std::result::Result<T, E>;

impl Error {
    /// Whether trying again later can succeed: a server that is down or
    /// restarting, a dropped connection. Everything else (configuration, lost
    /// slot, incompatible schema, a value that cannot be encoded) is final.
    pub fn is_retryable(&self) -> bool {
        matches!(
            self,
            Error::PostgresConnect(_)
                | Error::Postgres(_)
                | Error::PostgresClient(_)
                | Error::Replication(_)
                | Error::ReplicationClient(_)
        ) || matches!(self, Error::Topics(e) if e.is_retryable())
    }
}

impl From<tokio_postgres::Error> for Error {
    fn from(e: tokio_postgres::Error) -> Self {
        Error::PostgresClient(e)
    }
}

/// tokio-postgres renders server errors as "db error: ERROR: ..." with the
/// detail on further lines; keep the server's message and SQLSTATE only.
pub fn pg_message(e: &tokio_postgres::Error) -> String {
    match e.as_db_error() {
        Some(db) => format!("{} (SQLSTATE {})", db.message(), db.code().code()),
        None => one_line(e),
    }
}

impl From<pg_walstream::ReplicationError> for Error {
    fn from(e: pg_walstream::ReplicationError) -> Self {
        Error::ReplicationClient(e)
    }
}

impl From<rdkafka::error::KafkaError> for Error {
    fn from(e: rdkafka::error::KafkaError) -> Self {
        Error::KafkaClient(e)
    }
}

/// Collapses a multi-line message so that every error stays a single log line.
pub fn one_line(e: &dyn fmt::Display) -> String {
    e.to_string()
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty())
        .collect::<Vec<_>>()
        .join("; ")
}

#[cfg(test)]
mod tests {
    use std::error::Error as _;

    use super::*;

    #[test]
    fn shared_client_errors_keep_their_classification_and_source() {
        let down = Error::from(topics::Error::Registry {
            url: "http://127.0.0.1:1".into(),
            message: "unreachable".into(),
        });
        assert!(down.is_retryable(), "{down}");
        let refused = Error::from(topics::Error::RegistryRejected {
            url: "http://127.0.0.1:1".into(),
            status: 422,
            message: "invalid schema".into(),
        });
        assert!(!refused.is_retryable(), "{refused}");

        let kafka = Error::from(rdkafka::error::KafkaError::ClientCreation(
            "no brokers\nconfigured".into(),
        ));
        assert!(kafka.source().is_some(), "the librdkafka error is kept");
        assert_eq!(kafka.to_string().lines().count(), 1, "{kafka}");
    }
}
