//! The mandates read model: connection id → its current mandate, with a digest of every
//! mandate event the connection has seen.

use chrono::{DateTime, SecondsFormat};
use projectors::digest::Digest;
use projectors::Projection;
use serde::{Deserialize, Serialize};
use topics::events::{ConnectionMandateChanged, Event};

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
    /// How many mandate events the connection has seen, and a hash chain over their ids:
    /// two read models (generations, stores) agree on a connection only if they folded the
    /// same events in the same order.
    pub history: Digest,
}

pub struct MandatesProjection;

impl Projection for MandatesProjection {
    type Event = ConnectionMandateChanged;
    type Document = ConnectionMandate;

    fn name(&self) -> &str {
        "mandates"
    }

    fn key(&self, event: &ConnectionMandateChanged) -> String {
        event.key().to_owned()
    }

    fn fold(
        &self,
        state: Option<&ConnectionMandate>,
        event: &ConnectionMandateChanged,
    ) -> Option<ConnectionMandate> {
        let history = state.map(|previous| &previous.history);
        Some(next(history, event))
    }
}

/// The connection's mandate after `event`, given the history before it.
fn next(history: Option<&Digest>, event: &ConnectionMandateChanged) -> ConnectionMandate {
    let event_id = event.event_id.to_string();
    let changed_at = DateTime::from_timestamp_millis(event.occurred_at)
        .map(|at| at.to_rfc3339_opts(SecondsFormat::Millis, true))
        .unwrap_or_default();
    ConnectionMandate {
        connection_id: event.key().to_owned(),
        mandate: event.mandate.level(),
        customer_id: event.customer_id,
        changed_at,
        history: history.map_or_else(|| Digest::default().push(&event_id), |h| h.push(&event_id)),
        event_id,
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
            connection_id: "871685900000000001".parse().unwrap(),
            customer_id: 7,
            mandate: MandateLevel::BillingOnly,
            occurred_at: 1_763_750_000_123,
        };
        assert_eq!(MandatesProjection.key(&event), "871685900000000001");
        let first = MandatesProjection.fold(None, &event).unwrap();
        let mandate = first.clone();
        assert_eq!(mandate.mandate, 1);
        assert_eq!(mandate.customer_id, 7);
        assert_eq!(mandate.changed_at, "2025-11-21T18:33:20.123Z");
        assert_eq!(
            mandate.history,
            Digest::of([event.event_id.to_string().as_str()])
        );

        let second = ConnectionMandateChanged {
            event_id: "6f1c2a3e-0000-4000-8000-000000000002".parse().unwrap(),
            mandate: MandateLevel::RealTime,
            ..event.clone()
        };
        let mandate = MandatesProjection.fold(Some(&first), &second).unwrap();
        assert_eq!(mandate.mandate, 2);
        assert_eq!(
            mandate.history,
            Digest::of(
                [event.event_id.to_string(), second.event_id.to_string()]
                    .iter()
                    .map(String::as_str)
            )
        );
    }

    #[test]
    fn a_document_folds_the_same_after_a_trip_through_its_stored_text() {
        let first = ConnectionMandateChanged {
            event_id: "6f1c2a3e-0000-4000-8000-000000000001".parse().unwrap(),
            connection_id: "871685900000000001".parse().unwrap(),
            customer_id: 7,
            mandate: MandateLevel::BillingOnly,
            occurred_at: 1_763_750_000_123,
        };
        let second = ConnectionMandateChanged {
            event_id: "6f1c2a3e-0000-4000-8000-000000000002".parse().unwrap(),
            mandate: MandateLevel::RealTime,
            ..first.clone()
        };
        let kept = MandatesProjection.fold(None, &first).unwrap();
        let stored: ConnectionMandate =
            serde_json::from_str(&serde_json::to_string(&kept).unwrap()).unwrap();
        assert_eq!(stored, kept);
        assert_eq!(
            MandatesProjection.fold(Some(&stored), &second),
            MandatesProjection.fold(Some(&kept), &second)
        );
        // A stored text that is not a whole document does not parse; the projector folds it
        // as no document, which starts a new history.
        let unreadable = r#"{"history":{"events":5,"chain":"00"}}"#;
        assert!(serde_json::from_str::<ConnectionMandate>(unreadable).is_err());
        assert_eq!(kept.history.events, 1);
    }
}
