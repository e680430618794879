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

    /// The store refused a change it will never accept (a key or document beyond its limits,
    /// SQL data or constraint errors): the event that made it goes to the dead-letter topic.
    #[error("{backend} store refused the change: {message}")]
    Rejected {
        backend: &'static str,
        message: String,
    },

    /// The store's recorded offset is not what the writer last saw: the store lost or rolled
    /// back data (flushed, tables dropped, writes lost in an fsync window) or another writer
    /// moved it. The writer seeks to what the store has and folds from there again.
    #[error(
        "{topic} partition {partition}: the store has offset {} recorded, the projector expected {}",
        show(*.found), show(*.expected)
    )]
    OffsetMoved {
        topic: String,
        partition: i32,
        expected: Option<i64>,
        found: Option<i64>,
    },

    /// The store has applied records the topic does not have (a recreated topic, a store
    /// restored from another cluster): nothing a projector does can make them agree.
    #[error(
        "{topic} partition {partition}: the store recorded offset {stored}, beyond the topic's high watermark {high}; was the topic recreated? Rebuild the read model or empty its store"
    )]
    OffsetBeyondLog {
        topic: String,
        partition: i32,
        stored: i64,
        high: i64,
    },

    #[error(transparent)]
    Contract(#[from] topics::Error),

    #[error("configuration: {0}")]
    Config(String),
}

fn show(offset: Option<i64>) -> String {
    offset.map_or_else(|| "none".to_owned(), |o| o.to_string())
}

impl Error {
    /// Whether waiting and trying again can succeed. A projector retries these forever
    /// rather than skip an event; a rejected change is dead-lettered; everything else stops.
    pub fn is_retryable(&self) -> bool {
        match self {
            Error::Kafka(_) | Error::Store { .. } => true,
            Error::Contract(e) => e.is_retryable(),
            Error::Rejected { .. }
            | Error::OffsetMoved { .. }
            | Error::OffsetBeyondLog { .. }
            | Error::Config(_) => false,
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
    /// SQLSTATE class 22 (data exception: too long, out of range, invalid JSON) and 23
    /// (integrity constraint) say the change itself is wrong; anything else (connections,
    /// deadlocks, timeouts, a server restarting) may pass.
    fn from(e: sqlx::Error) -> Self {
        let permanent = matches!(
            &e,
            sqlx::Error::Database(db)
                if db.code().is_some_and(|code| code.starts_with("22") || code.starts_with("23"))
        );
        if permanent {
            Error::Rejected {
                backend: "mysql",
                message: e.to_string(),
            }
        } else {
            Error::Store {
                backend: "mysql",
                message: e.to_string(),
            }
        }
    }
}
