//! The mandates read model: connection id → its current mandate, with a digest of every
//! mandate event the connection has seen.

use chrono::{DateTime, SecondsFormat};
use projectors::digest::Digest;
use projectors::Projection;
use serde::de::IgnoredAny;
use serde::{Deserialize, Serialize};
use serde_json::Value;
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

    fn name(&self) -> &str {
        "mandates"
    }

    fn key(&self, event: &ConnectionMandateChanged) -> String {
        event.key().to_owned()
    }

    fn fold(&self, state: Option<&Value>, event: &ConnectionMandateChanged) -> Option<Value> {
        // Deserialized from the borrowed document: no copy of it per event.
        let history = state
            .and_then(|s| ConnectionMandate::deserialize(s).ok())
            .map(|previous| previous.history)
            .unwrap_or_default();
        serde_json::to_value(next(history, event)).ok()
    }

    fn folds_json(&self) -> bool {
        true
    }

    /// [`Projection::fold`] from and to the stored text: only the history is read from the
    /// previous document (which must still be a whole [`ConnectionMandate`], as for `fold`),
    /// and the new one is written straight from the struct.
    fn fold_json(&self, state: Option<&str>, event: &ConnectionMandateChanged) -> Option<String> {
        let history = state
            .and_then(|s| serde_json::from_str::<Previous>(s).ok())
            .map(|previous| previous.history)
            .unwrap_or_default();
        serde_json::to_string(&next(history, event)).ok()
    }
}

/// The history of a stored [`ConnectionMandate`]; the other fields are checked to be there
/// (a document `fold` would not read is not read here either) but not kept.
#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct Previous {
    #[serde(rename = "connectionId")]
    _connection_id: IgnoredAny,
    #[serde(rename = "mandate")]
    _mandate: IgnoredAny,
    #[serde(rename = "customerId")]
    _customer_id: IgnoredAny,
    #[serde(rename = "changedAt")]
    _changed_at: IgnoredAny,
    #[serde(rename = "eventId")]
    _event_id: IgnoredAny,
    history: Digest,
}

/// The connection's mandate after `event`, given the history before it.
fn next(history: Digest, event: &ConnectionMandateChanged) -> ConnectionMandate {
    let event_id = event.event_id.to_string();
    let changed_at = DateTime::from_timestamp_millis(event.occurred_at)
        .map(|at| at.to_rfc3339_opts(SecondsFormat::Millis, true))
        .unwrap_or_default();
    ConnectionMandate {
        connection_id: event.key().to_owned(),
        mandate: event.mandate.level(),
        customer_id: event.customer_id,
        changed_at,
        history: history.push(&event_id),
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
        let mandate: ConnectionMandate = serde_json::from_value(first.clone()).unwrap();
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
        let folded = MandatesProjection.fold(Some(&first), &second).unwrap();
        let mandate: ConnectionMandate = serde_json::from_value(folded).unwrap();
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
    fn the_json_fold_makes_the_same_documents() {
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
        let by_value = MandatesProjection.fold(None, &first);
        let by_json = MandatesProjection.fold_json(None, &first).unwrap();
        assert_eq!(by_value, serde_json::from_str(&by_json).ok());
        let by_value = MandatesProjection.fold(by_value.as_ref(), &second);
        let by_json = MandatesProjection
            .fold_json(Some(&by_json), &second)
            .unwrap();
        assert_eq!(by_value, serde_json::from_str(&by_json).ok());
        // A document neither fold can read starts a new history in both.
        let unreadable = r#"{"history":{"events":5,"chain":"00"}}"#;
        assert_eq!(
            MandatesProjection.fold(serde_json::from_str(unreadable).ok().as_ref(), &first),
            serde_json::from_str(
                &MandatesProjection
                    .fold_json(Some(unreadable), &first)
                    .unwrap()
            )
            .ok()
        );
    }
}
