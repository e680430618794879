//! Customers and their mandates, and the rules a customer must satisfy whichever way it
//! arrives (API body or seed file).

use std::fmt;

use serde::de::{self, Deserializer, Visitor};
use serde::{Deserialize, Serialize};
use topics::events::MandateLevel;

/// The longest connection id accepted; EANs are 18 digits, the margin is for other schemes.
pub const MAX_CONNECTION_ID_LEN: usize = 64;
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
    pub connection_id: String,
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
        let connection_id = self.connection_id.trim().to_owned();
        if connection_id.is_empty() {
            return Err("connectionId must not be empty".to_owned());
        }
        if connection_id.chars().count() > MAX_CONNECTION_ID_LEN {
            return Err(format!(
                "connectionId must be at most {MAX_CONNECTION_ID_LEN} characters"
            ));
        }
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
}
