//! The platform's domain events as Rust types, each tied to its topic and Avro schema.

use std::fmt;
use std::str::FromStr;
use std::sync::OnceLock;

use apache_avro::Schema;
use serde::de::{self, DeserializeOwned, Deserializer};
use serde::{Deserialize, Serialize};
use uuid::Uuid;

use crate::spec::{self, TopicSpec};

/// A value published to a topic of the catalogue in that topic's value schema.
pub trait Event: Serialize + DeserializeOwned + Send + Sync + 'static {
    /// The topic this event is published to.
    const TOPIC: &'static TopicSpec;

    /// The reader schema: the topic's current value schema, parsed once.
    fn schema() -> &'static Schema;

    /// The record key: the id of the entity the event is about.
    fn key(&self) -> &str;

    /// Unique per event, so consumers and operators can trace and deduplicate it.
    fn event_id(&self) -> Uuid;
}

fn parse_once(cell: &'static OnceLock<Schema>, spec: &TopicSpec) -> &'static Schema {
    // The catalogue's schemas are compiled in and checked by `spec::tests`, so a missing or
    // unparsable schema here is a build defect, not a runtime condition.
    cell.get_or_init(|| {
        let text = spec.value_schema.expect("event topics have a value schema");
        Schema::parse_str(text).expect("catalogue schema parses")
    })
}

/// A grid connection's id (an EAN-18 in practice): trimmed, non-empty, at most
/// [`ConnectionId::MAX_LEN`] characters. Parsed once where it enters the platform (an API body
/// or path, a seed row, a record read from Kafka), so everything behind that edge holds a
/// valid one: a record from a foreign producer with a longer id fails to decode and is
/// dead-lettered with the reason.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize)]
#[serde(transparent)]
pub struct ConnectionId(String);

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum InvalidConnectionId {
    #[error("connectionId must not be empty")]
    Empty,
    #[error("connectionId must be at most {max} characters, not {len}", max = ConnectionId::MAX_LEN)]
    TooLong { len: usize },
}

impl ConnectionId {
    /// EANs are 18 digits; the margin is for other numbering schemes.
    pub const MAX_LEN: usize = 64;

    pub fn parse(raw: &str) -> Result<Self, InvalidConnectionId> {
        let id = raw.trim();
        let len = id.chars().count();
        if len == 0 {
            return Err(InvalidConnectionId::Empty);
        }
        if len > Self::MAX_LEN {
            return Err(InvalidConnectionId::TooLong { len });
        }
        Ok(Self(id.to_owned()))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl FromStr for ConnectionId {
    type Err = InvalidConnectionId;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Self::parse(s)
    }
}

impl fmt::Display for ConnectionId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl AsRef<str> for ConnectionId {
    fn as_ref(&self) -> &str {
        &self.0
    }
}

impl<'de> Deserialize<'de> for ConnectionId {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let raw = String::deserialize(deserializer)?;
        Self::parse(&raw).map_err(de::Error::custom)
    }
}

/// The mandate a customer gives on a grid connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum MandateLevel {
    /// 0: the platform may not read the connection.
    None,
    /// 1: readings may be used for billing only.
    BillingOnly,
    /// 2: the connection may be read in real time.
    RealTime,
}

impl MandateLevel {
    /// The classic numeric level (0, 1 or 2).
    pub fn level(self) -> u8 {
        match self {
            MandateLevel::None => 0,
            MandateLevel::BillingOnly => 1,
            MandateLevel::RealTime => 2,
        }
    }

    pub fn from_level(level: u8) -> Option<Self> {
        match level {
            0 => Some(MandateLevel::None),
            1 => Some(MandateLevel::BillingOnly),
            2 => Some(MandateLevel::RealTime),
            _ => None,
        }
    }
}

/// The mandate on a connection changed: either its customer changed the level, a new customer
/// took the connection, or (with level `None`) the customer moved to another connection.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ConnectionMandateChanged {
    pub event_id: Uuid,
    pub connection_id: ConnectionId,
    pub customer_id: i64,
    pub mandate: MandateLevel,
    /// Milliseconds since the Unix epoch.
    pub occurred_at: i64,
}

impl Event for ConnectionMandateChanged {
    const TOPIC: &'static TopicSpec = &spec::CONNECTION_MANDATES;

    fn schema() -> &'static Schema {
        static SCHEMA: OnceLock<Schema> = OnceLock::new();
        parse_once(&SCHEMA, Self::TOPIC)
    }

    fn key(&self) -> &str {
        self.connection_id.as_str()
    }

    fn event_id(&self) -> Uuid {
        self.event_id
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mandate_levels_round_trip_through_their_number() {
        for level in 0..=2 {
            assert_eq!(
                MandateLevel::from_level(level).map(MandateLevel::level),
                Some(level)
            );
        }
        assert_eq!(MandateLevel::from_level(3), None);
    }

    #[test]
    fn connection_ids_are_trimmed_non_empty_and_bounded() {
        assert_eq!(
            ConnectionId::parse(" 871685900000000001 ")
                .unwrap()
                .as_str(),
            "871685900000000001"
        );
        assert_eq!(ConnectionId::parse("  "), Err(InvalidConnectionId::Empty));
        let long = "8".repeat(256);
        let err = ConnectionId::parse(&long).unwrap_err();
        assert_eq!(err, InvalidConnectionId::TooLong { len: 256 });
        assert_eq!(
            err.to_string(),
            "connectionId must be at most 64 characters, not 256"
        );
        assert!(ConnectionId::parse(&"8".repeat(64)).is_ok());
        // Decoding applies the same rules: an invalid id never gets past the edge.
        assert!(serde_json::from_str::<ConnectionId>(&format!("\"{long}\"")).is_err());
        assert_eq!(
            serde_json::to_string(&ConnectionId::parse("a").unwrap()).unwrap(),
            "\"a\""
        );
    }
}
