//! The platform's domain events as Rust types, each tied to its topic and Avro schema.

use std::sync::OnceLock;

use apache_avro::Schema;
use serde::de::DeserializeOwned;
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
    pub connection_id: String,
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
        &self.connection_id
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
}
