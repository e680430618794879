//! The connector's error type. Every variant renders as one line that names
//! the cause, because operators read these in a terminal or a log line.

use std::fmt;

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("configuration: {0}")]
    Config(String),

    #[error("cannot connect to PostgreSQL: {0}")]
    PostgresConnect(String),

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

    #[error("Kafka at {servers} is unreachable: {reason}")]
    KafkaUnreachable { servers: String, reason: String },

    #[error("PostgreSQL: {0}")]
    Postgres(String),

    #[error("replication stream: {0}")]
    Replication(String),

    #[error("Kafka: {0}")]
    Kafka(String),

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
            Error::PostgresConnect(_) | Error::Postgres(_) | Error::Replication(_)
        ) || matches!(self, Error::Topics(e) if e.is_retryable())
    }
}

/// tokio-postgres renders server errors as "db error: ERROR: ..." with the
/// detail on further lines; keep the server's message and SQLSTATE only.
impl From<tokio_postgres::Error> for Error {
    fn from(e: tokio_postgres::Error) -> Self {
        Error::Postgres(pg_message(&e))
    }
}

pub fn pg_message(e: &tokio_postgres::Error) -> String {
    match e.as_db_error() {
        Some(db) => format!("{} (SQLSTATE {})", db.message(), db.code().code()),
        None => one_line(e),
    }
}

impl From<pg_walstream::ReplicationError> for Error {
    fn from(e: pg_walstream::ReplicationError) -> Self {
        Error::Replication(one_line(&e))
    }
}

impl From<rdkafka::error::KafkaError> for Error {
    fn from(e: rdkafka::error::KafkaError) -> Self {
        Error::Kafka(one_line(&e))
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
