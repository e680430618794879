//! The users read model: every user as the API shows it, folded by the projector runtime
//! from the connector's change topic of the users database (`commerce.users.public.users`,
//! Debezium's envelope, Avro), into the MySQL store.
//!
//! Why the change topic: the users service publishes domain events for three things only
//! (an agent created, a user deleted, an agent's status changed), so a customer's or an
//! admin's account reaches no domain topic. The connector streams every committed row change
//! from the WAL, snapshot first, so the read model sees every user and every change in
//! commit order (one partition) without the service publishing more than its contract says.
//!
//! The reader schema below names only the envelope fields the fold needs; Avro schema
//! resolution drops the rest of what the connector writes.

use std::sync::OnceLock;

use apache_avro::Schema;
use chrono::DateTime;
use projectors::Projection;
use serde::{Deserialize, Serialize};
use serde_json::{json, Value};
use topics::events::Event;
use topics::spec::{CleanupPolicy, KeyFormat, Retention, TopicSpec};
use uuid::Uuid;

use super::domain::format_time;

/// The change topic the connector writes for `public.users` with connector name
/// `commerce.users` (`commerce/connector/users.toml`). One partition: commit order.
pub const USERS_CHANGES: TopicSpec = TopicSpec {
    name: "commerce.users.public.users",
    partitions: 1,
    replication_factor: 1,
    cleanup_policy: CleanupPolicy::Delete,
    retention: Retention::Forever,
    key: KeyFormat::Utf8String,
    value_schema: Some(READER_SCHEMA),
};

const READER_SCHEMA: &str = r#"{
  "type": "record",
  "name": "Envelope",
  "namespace": "platform.commerce.users",
  "fields": [
    {"name": "before", "type": ["null", {
      "type": "record",
      "name": "Value",
      "fields": [
        {"name": "id", "type": ["null", "string"], "default": null},
        {"name": "email", "type": ["null", "string"], "default": null},
        {"name": "username", "type": ["null", "string"], "default": null},
        {"name": "first_name", "type": ["null", "string"], "default": null},
        {"name": "last_name", "type": ["null", "string"], "default": null},
        {"name": "street", "type": ["null", "string"], "default": null},
        {"name": "city", "type": ["null", "string"], "default": null},
        {"name": "state", "type": ["null", "string"], "default": null},
        {"name": "zip_code", "type": ["null", "string"], "default": null},
        {"name": "country", "type": ["null", "string"], "default": null},
        {"name": "latitude", "type": ["null", "double"], "default": null},
        {"name": "longitude", "type": ["null", "double"], "default": null},
        {"name": "phone_number", "type": ["null", "string"], "default": null},
        {"name": "user_type", "type": ["null", "string"], "default": null},
        {"name": "agent_status", "type": ["null", "string"], "default": null},
        {"name": "is_active", "type": ["null", "boolean"], "default": null},
        {"name": "created_at", "type": ["null", "string"], "default": null},
        {"name": "updated_at", "type": ["null", "string"], "default": null}
      ]
    }], "default": null},
    {"name": "after", "type": ["null", "Value"], "default": null},
    {"name": "source", "type": {
      "type": "record",
      "name": "Source",
      "fields": [{"name": "lsn", "type": ["null", "long"], "default": null}]
    }},
    {"name": "op", "type": "string"}
  ]
}"#;

/// A row of `users` as the connector carries it.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct UserRow {
    pub id: Option<String>,
    pub email: Option<String>,
    pub username: Option<String>,
    pub first_name: Option<String>,
    pub last_name: Option<String>,
    pub street: Option<String>,
    pub city: Option<String>,
    pub state: Option<String>,
    pub zip_code: Option<String>,
    pub country: Option<String>,
    pub latitude: Option<f64>,
    pub longitude: Option<f64>,
    pub phone_number: Option<String>,
    pub user_type: Option<String>,
    pub agent_status: Option<String>,
    pub is_active: Option<bool>,
    pub created_at: Option<String>,
    pub updated_at: Option<String>,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Source {
    pub lsn: Option<i64>,
}

/// One row change: `op` is `r` (snapshot), `c`, `u` or `d`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct UserChange {
    pub before: Option<UserRow>,
    pub after: Option<UserRow>,
    pub source: Source,
    pub op: String,
    /// The user id, kept as text so [`Event::key`] can borrow it.
    #[serde(skip)]
    pub key: String,
}

impl Event for UserChange {
    const TOPIC: &'static TopicSpec = &USERS_CHANGES;

    fn schema() -> &'static Schema {
        static SCHEMA: OnceLock<Schema> = OnceLock::new();
        SCHEMA.get_or_init(|| Schema::parse_str(READER_SCHEMA).expect("reader schema parses"))
    }

    fn key(&self) -> &str {
        self.after
            .as_ref()
            .or(self.before.as_ref())
            .and_then(|row| row.id.as_deref())
            .unwrap_or_default()
    }

    /// Change records carry no event id: the change's LSN, unique per row change, stands in.
    fn event_id(&self) -> Uuid {
        Uuid::from_u64_pair(0, self.source.lsn.unwrap_or_default() as u64)
    }
}

/// A timestamp as the read model keeps it: one width, so text order is time order.
fn normalized_time(text: Option<&str>) -> Option<String> {
    let at = DateTime::parse_from_rfc3339(text?).ok()?;
    Some(format_time(&at.to_utc()))
}

/// The document of a row, as `GET /users/{id}` shows the user; `None` when the row lacks a
/// field the table requires (never for rows this service wrote).
pub fn document(row: &UserRow) -> Option<Value> {
    Some(json!({
        "id": row.id.as_deref()?,
        "email": row.email.as_deref()?,
        "username": row.username.as_deref()?,
        "firstName": row.first_name.as_deref()?,
        "lastName": row.last_name.as_deref()?,
        "address": {
            "street": row.street.as_deref()?,
            "city": row.city.as_deref()?,
            "state": row.state.as_deref()?,
            "zipCode": row.zip_code.as_deref()?,
            "country": row.country.as_deref()?,
        },
        "geolocation": { "latitude": row.latitude?, "longitude": row.longitude? },
        "phoneNumber": row.phone_number.as_deref()?,
        "userType": row.user_type.as_deref()?,
        "deliveryAgentStatus": row.agent_status.as_deref(),
        "isActive": row.is_active?,
        "createdAt": normalized_time(row.created_at.as_deref())?,
        "updatedAt": normalized_time(row.updated_at.as_deref())?,
    }))
}

pub struct UsersProjection;

impl Projection for UsersProjection {
    type Event = UserChange;
    type Document = Value;

    fn name(&self) -> &str {
        "users"
    }

    fn key(&self, event: &UserChange) -> String {
        event.key().to_owned()
    }

    fn fold(&self, state: Option<&Value>, event: &UserChange) -> Option<Value> {
        match (event.op.as_str(), &event.after) {
            ("d", _) | (_, None) => None,
            (_, Some(row)) => match document(row) {
                Some(document) => Some(document),
                None => {
                    tracing::error!(key = event.key(), op = %event.op, "user change without a required field; the document keeps its state");
                    state.cloned()
                }
            },
        }
    }

    fn reads_state(&self) -> bool {
        true
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_row_becomes_the_users_document() {
        let row = UserRow {
            id: Some("0b0e4f4e-1b9c-4a52-9a51-6a0f5f0b1c11".to_owned()),
            email: Some("ann@example.com".to_owned()),
            username: Some("ann".to_owned()),
            first_name: Some("Ann".to_owned()),
            last_name: Some("Smit".to_owned()),
            street: Some("Markt 1".to_owned()),
            city: Some("Gouda".to_owned()),
            state: Some("ZH".to_owned()),
            zip_code: Some("2801".to_owned()),
            country: Some("NL".to_owned()),
            latitude: Some(52.0),
            longitude: Some(4.7),
            phone_number: Some("+31 182 000000".to_owned()),
            user_type: Some("DELIVERY_AGENT".to_owned()),
            agent_status: Some("FREE".to_owned()),
            is_active: Some(true),
            created_at: Some("2026-12-01T12:00:00.1Z".to_owned()),
            updated_at: Some("2026-12-01T12:00:00.123456Z".to_owned()),
        };
        let change = UserChange {
            before: None,
            after: Some(row.clone()),
            source: Source { lsn: Some(7) },
            op: "c".to_owned(),
            key: String::new(),
        };
        let folded = UsersProjection.fold(None, &change).unwrap();
        assert_eq!(folded["address"]["city"], "Gouda");
        assert_eq!(folded["createdAt"], "2026-12-01T12:00:00.100000Z");
        assert_eq!(folded["deliveryAgentStatus"], "FREE");
        let deleted = UserChange {
            op: "d".to_owned(),
            before: Some(row),
            after: None,
            ..change
        };
        assert_eq!(UsersProjection.fold(Some(&folded), &deleted), None);
    }
}
