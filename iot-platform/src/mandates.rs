//! The mandates read model: connection id → its current mandate.

use chrono::{DateTime, SecondsFormat};
use projectors::{Change, Projection};
use serde::{Deserialize, Serialize};
use topics::events::ConnectionMandateChanged;

/// What the IoT platform knows about a connection.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ConnectionMandate {
    pub connection_id: String,
    /// 0 = no mandate, 1 = billing only, 2 = real-time reading.
    pub mandate: u8,
    pub customer_id: i64,
    /// When the mandate last changed (RFC 3339, UTC).
    pub changed_at: String,
    pub event_id: String,
}

pub struct MandatesProjection;

impl Projection for MandatesProjection {
    type Event = ConnectionMandateChanged;

    fn name(&self) -> &str {
        "mandates"
    }

    fn apply(&self, event: &ConnectionMandateChanged) -> Vec<Change> {
        let changed_at = DateTime::from_timestamp_millis(event.occurred_at)
            .map(|at| at.to_rfc3339_opts(SecondsFormat::Millis, true))
            .unwrap_or_default();
        let mandate = ConnectionMandate {
            connection_id: event.connection_id.clone(),
            mandate: event.mandate.level(),
            customer_id: event.customer_id,
            changed_at,
            event_id: event.event_id.to_string(),
        };
        vec![Change::Put {
            key: event.connection_id.clone(),
            document: serde_json::to_value(mandate).unwrap_or_default(),
        }]
    }
}

#[cfg(test)]
mod tests {
    use topics::events::MandateLevel;

    use super::*;

    #[test]
    fn an_event_sets_the_connections_mandate() {
        let event = ConnectionMandateChanged {
            event_id: "6f1c2a3e-0000-4000-8000-000000000001".parse().unwrap(),
            connection_id: "871685900000000001".to_owned(),
            customer_id: 7,
            mandate: MandateLevel::BillingOnly,
            occurred_at: 1_763_750_000_123,
        };
        let changes = MandatesProjection.apply(&event);
        let [Change::Put { key, document }] = changes.as_slice() else {
            panic!("expected one put, got {changes:?}");
        };
        assert_eq!(key, "871685900000000001");
        let mandate: ConnectionMandate = serde_json::from_value(document.clone()).unwrap();
        assert_eq!(mandate.mandate, 1);
        assert_eq!(mandate.customer_id, 7);
        assert_eq!(mandate.changed_at, "2025-11-21T18:33:20.123Z");
    }
}
