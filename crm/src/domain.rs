//! Customers and their mandates, and the rules a customer must satisfy whichever way it
//! arrives (API body or seed file).

use std::fmt;

use chrono::Utc;
use serde::de::{self, Deserializer, Visitor};
use serde::{Deserialize, Serialize};
use topics::events::{ConnectionId, ConnectionMandateChanged, MandateLevel};
use uuid::Uuid;

/// The longest name or city accepted, so a single row cannot bloat every page of the list.
pub const MAX_TEXT_LEN: usize = 200;

/// A stored customer, serialized with the classic service's field names.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Customer {
    pub id: i64,
    #[serde(flatten)]
    pub details: CustomerDetails,
}

/// Everything about a customer except its id: what POST creates and PUT replaces.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct CustomerDetails {
    pub first_name: String,
    pub last_name: String,
    pub city: String,
    pub connection_id: ConnectionId,
    #[serde(serialize_with = "serialize_mandate")]
    pub connection_mandate: MandateLevel,
}

/// A POST or PUT body as clients of the classic service send it. Valid JSON of this shape
/// may still be refused by [`CustomerBody::validate`].
#[derive(Debug, Clone, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct CustomerBody {
    pub first_name: String,
    pub last_name: String,
    pub city: String,
    pub connection_id: String,
    #[serde(deserialize_with = "deserialize_mandate")]
    pub connection_mandate: MandateLevel,
}

impl CustomerBody {
    pub fn validate(self) -> Result<CustomerDetails, String> {
        let connection_id = ConnectionId::parse(&self.connection_id).map_err(|e| e.to_string())?;
        let text = [
            ("firstName", self.first_name),
            ("lastName", self.last_name),
            ("city", self.city),
        ]
        .map(|(field, value)| (field, value.trim().to_owned()));
        for (field, value) in &text {
            if value.chars().count() > MAX_TEXT_LEN {
                return Err(format!("{field} must be at most {MAX_TEXT_LEN} characters"));
            }
        }
        let [(_, first_name), (_, last_name), (_, city)] = text;
        Ok(CustomerDetails {
            first_name,
            last_name,
            city,
            connection_id,
            connection_mandate: self.connection_mandate,
        })
    }
}

/// The events a change of customer `id` from `before` (`None`: a new customer) to `after`
/// must publish, in publishing order. A change of name or city publishes nothing: the topic
/// is about mandates on connections.
pub fn events_for_change(
    customer_id: i64,
    before: Option<&CustomerDetails>,
    after: &CustomerDetails,
) -> Vec<ConnectionMandateChanged> {
    let occurred_at = Utc::now().timestamp_millis();
    let event = |connection_id: &ConnectionId, mandate| ConnectionMandateChanged {
        event_id: Uuid::new_v4(),
        connection_id: connection_id.clone(),
        customer_id,
        mandate,
        occurred_at,
    };
    match before {
        None => vec![event(&after.connection_id, after.connection_mandate)],
        // The customer left the old connection: consumers must stop treating it as covered
        // by this customer's mandate before they learn about the new one.
        Some(before) if before.connection_id != after.connection_id => vec![
            event(&before.connection_id, MandateLevel::None),
            event(&after.connection_id, after.connection_mandate),
        ],
        Some(before) if before.connection_mandate != after.connection_mandate => {
            vec![event(&after.connection_id, after.connection_mandate)]
        }
        Some(_) => Vec::new(),
    }
}

/// Parses the classic textual mandate ("0", "1" or "2").
pub fn parse_mandate(text: &str) -> Result<MandateLevel, String> {
    text.trim()
        .parse::<u8>()
        .ok()
        .and_then(MandateLevel::from_level)
        .ok_or_else(|| format!("connectionMandate must be 0, 1 or 2, not {text:?}"))
}

fn serialize_mandate<S: serde::Serializer>(
    mandate: &MandateLevel,
    serializer: S,
) -> Result<S::Ok, S::Error> {
    serializer.serialize_u8(mandate.level())
}

/// Accepts the mandate as a number (2) or, as the classic clients send it, a string ("2").
fn deserialize_mandate<'de, D: Deserializer<'de>>(
    deserializer: D,
) -> Result<MandateLevel, D::Error> {
    struct MandateVisitor;

    impl Visitor<'_> for MandateVisitor {
        type Value = MandateLevel;

        fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
            f.write_str("a connectionMandate of 0, 1 or 2 (a number or a string)")
        }

        fn visit_u64<E: de::Error>(self, v: u64) -> Result<MandateLevel, E> {
            u8::try_from(v)
                .ok()
                .and_then(MandateLevel::from_level)
                .ok_or_else(|| E::custom(format!("connectionMandate must be 0, 1 or 2, not {v}")))
        }

        fn visit_i64<E: de::Error>(self, v: i64) -> Result<MandateLevel, E> {
            match u64::try_from(v) {
                Ok(v) => self.visit_u64(v),
                Err(_) => Err(E::custom(format!(
                    "connectionMandate must be 0, 1 or 2, not {v}"
                ))),
            }
        }

        fn visit_str<E: de::Error>(self, v: &str) -> Result<MandateLevel, E> {
            parse_mandate(v).map_err(E::custom)
        }
    }

    deserializer.deserialize_any(MandateVisitor)
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    fn body(mandate: serde_json::Value) -> serde_json::Value {
        json!({
            "firstName": "Anna", "lastName": "de Vries", "city": "Utrecht",
            "connectionId": "871687140000000017", "connectionMandate": mandate
        })
    }

    #[test]
    fn mandate_is_accepted_as_number_or_string() {
        for (value, level) in [
            (json!(0), MandateLevel::None),
            (json!("1"), MandateLevel::BillingOnly),
            (json!(2), MandateLevel::RealTime),
            (json!("2"), MandateLevel::RealTime),
        ] {
            let parsed: CustomerBody = serde_json::from_value(body(value)).unwrap();
            assert_eq!(parsed.connection_mandate, level);
        }
    }

    #[test]
    fn mandates_outside_0_to_2_are_refused_with_a_reason() {
        for value in [
            json!(3),
            json!("3"),
            json!(-1),
            json!(1.5),
            json!("x"),
            json!(null),
        ] {
            let err = serde_json::from_value::<CustomerBody>(body(value.clone())).unwrap_err();
            assert!(
                err.to_string().contains("connectionMandate"),
                "{value}: {err}"
            );
        }
    }

    #[test]
    fn blank_connection_id_is_refused() {
        let mut b: CustomerBody = serde_json::from_value(body(json!(1))).unwrap();
        b.connection_id = "  ".to_owned();
        assert!(b.validate().unwrap_err().contains("connectionId"));
    }

    #[test]
    fn customers_serialize_with_classic_names_and_a_numeric_mandate() {
        let b: CustomerBody = serde_json::from_value(body(json!("2"))).unwrap();
        let customer = Customer {
            id: 7,
            details: b.validate().unwrap(),
        };
        assert_eq!(
            serde_json::to_value(&customer).unwrap(),
            json!({
                "id": 7, "firstName": "Anna", "lastName": "de Vries", "city": "Utrecht",
                "connectionId": "871687140000000017", "connectionMandate": 2
            })
        );
    }

    fn details(city: &str, connection_id: &str, mandate: MandateLevel) -> CustomerDetails {
        CustomerDetails {
            first_name: "Jan".to_owned(),
            last_name: "Janssens".to_owned(),
            city: city.to_owned(),
            connection_id: connection_id.parse().unwrap(),
            connection_mandate: mandate,
        }
    }

    fn summary(events: &[ConnectionMandateChanged]) -> Vec<(&str, MandateLevel, i64)> {
        events
            .iter()
            .map(|e| (e.connection_id.as_str(), e.mandate, e.customer_id))
            .collect()
    }

    #[test]
    fn a_new_customer_announces_its_mandate() {
        let after = details("Gent", "A", MandateLevel::BillingOnly);
        assert_eq!(
            summary(&events_for_change(1, None, &after)),
            [("A", MandateLevel::BillingOnly, 1)]
        );
    }

    #[test]
    fn a_city_change_publishes_nothing() {
        let before = details("Gent", "A", MandateLevel::RealTime);
        let after = details("Brugge", "A", MandateLevel::RealTime);
        assert!(events_for_change(1, Some(&before), &after).is_empty());
    }

    #[test]
    fn a_mandate_change_publishes_one_event() {
        let before = details("Gent", "A", MandateLevel::RealTime);
        let after = details("Gent", "A", MandateLevel::None);
        assert_eq!(
            summary(&events_for_change(1, Some(&before), &after)),
            [("A", MandateLevel::None, 1)]
        );
    }

    #[test]
    fn moving_connection_revokes_the_old_one_first() {
        let before = details("Gent", "A", MandateLevel::RealTime);
        let after = details("Gent", "B", MandateLevel::RealTime);
        let events = events_for_change(1, Some(&before), &after);
        assert_eq!(
            summary(&events),
            [
                ("A", MandateLevel::None, 1),
                ("B", MandateLevel::RealTime, 1)
            ]
        );
        assert_ne!(events[0].event_id, events[1].event_id);
    }
}
