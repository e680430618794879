//! Users and the rules a user body must satisfy: parsed here, at the edge, into types that
//! only hold valid values.

use chrono::{DateTime, SecondsFormat, Utc};
use serde::{Deserialize, Serialize};
use topics::commerce::{AgentStatus, UserType};
use uuid::Uuid;

use crate::customers::domain::Email;
use crate::http::bounded_text;

pub const MAX_TEXT_LEN: usize = 200;
pub const MAX_PHONE_LEN: usize = 32;

/// The API and database spelling of a user type.
pub fn user_type_str(user_type: UserType) -> &'static str {
    match user_type {
        UserType::Customer => "CUSTOMER",
        UserType::Admin => "ADMIN",
        UserType::DeliveryAgent => "DELIVERY_AGENT",
    }
}

pub fn parse_user_type(text: &str) -> Result<UserType, String> {
    [UserType::Customer, UserType::Admin, UserType::DeliveryAgent]
        .into_iter()
        .find(|t| user_type_str(*t) == text)
        .ok_or_else(|| format!("userType must be CUSTOMER, ADMIN or DELIVERY_AGENT, not {text:?}"))
}

/// The API and database spelling of an agent status.
pub fn agent_status_str(status: AgentStatus) -> &'static str {
    match status {
        AgentStatus::Free => "FREE",
        AgentStatus::Occupied => "OCCUPIED",
    }
}

pub fn parse_agent_status(text: &str) -> Result<AgentStatus, String> {
    [AgentStatus::Free, AgentStatus::Occupied]
        .into_iter()
        .find(|s| agent_status_str(*s) == text)
        .ok_or_else(|| format!("deliveryAgentStatus must be FREE or OCCUPIED, not {text:?}"))
}

/// A user's id: a UUID, supplied by the client or generated.
pub fn parse_user_id(text: &str) -> Result<Uuid, String> {
    text.trim()
        .parse()
        .map_err(|_| format!("user id must be a UUID, not {text:?}"))
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Address {
    pub street: String,
    pub city: String,
    pub state: String,
    pub zip_code: String,
    pub country: String,
}

impl Address {
    fn validate(self) -> Result<Self, String> {
        Ok(Self {
            street: bounded_text("address.street", &self.street, MAX_TEXT_LEN)?,
            city: bounded_text("address.city", &self.city, MAX_TEXT_LEN)?,
            state: bounded_text("address.state", &self.state, MAX_TEXT_LEN)?,
            zip_code: bounded_text("address.zipCode", &self.zip_code, MAX_TEXT_LEN)?,
            country: bounded_text("address.country", &self.country, MAX_TEXT_LEN)?,
        })
    }
}

/// A point on earth: latitude in [-90, 90], longitude in [-180, 180].
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Geolocation {
    pub latitude: f64,
    pub longitude: f64,
}

impl Geolocation {
    pub fn parse(latitude: f64, longitude: f64) -> Result<Self, String> {
        if !(-90.0..=90.0).contains(&latitude) {
            return Err(format!(
                "geolocation.latitude must be from -90 to 90, not {latitude}"
            ));
        }
        if !(-180.0..=180.0).contains(&longitude) {
            return Err(format!(
                "geolocation.longitude must be from -180 to 180, not {longitude}"
            ));
        }
        Ok(Self {
            latitude,
            longitude,
        })
    }
}

/// A phone number: digits, spaces, dashes, dots, parentheses and a leading `+`, with at
/// least five digits.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(transparent)]
pub struct Phone(String);

impl Phone {
    pub fn parse(text: &str) -> Result<Self, String> {
        let text = bounded_text("phoneNumber", text, MAX_PHONE_LEN)?;
        let body = text.strip_prefix('+').unwrap_or(&text);
        let allowed = body
            .chars()
            .all(|c| c.is_ascii_digit() || matches!(c, ' ' | '-' | '.' | '(' | ')'));
        let digits = body.chars().filter(char::is_ascii_digit).count();
        if allowed && digits >= 5 {
            Ok(Phone(text))
        } else {
            Err(format!(
                "phoneNumber must be digits (with optional + - . ( ) and spaces), not {text:?}"
            ))
        }
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

/// A stored user, as the API answers it.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct User {
    pub id: Uuid,
    pub email: Email,
    pub username: String,
    pub first_name: String,
    pub last_name: String,
    pub address: Address,
    pub geolocation: Geolocation,
    pub phone_number: Phone,
    #[serde(serialize_with = "serialize_user_type")]
    pub user_type: UserType,
    /// Delivery agents only.
    #[serde(serialize_with = "serialize_agent_status")]
    pub delivery_agent_status: Option<AgentStatus>,
    pub is_active: bool,
    #[serde(serialize_with = "serialize_time")]
    pub created_at: DateTime<Utc>,
    #[serde(serialize_with = "serialize_time")]
    pub updated_at: DateTime<Utc>,
}

fn serialize_user_type<S: serde::Serializer>(t: &UserType, s: S) -> Result<S::Ok, S::Error> {
    s.serialize_str(user_type_str(*t))
}

fn serialize_agent_status<S: serde::Serializer>(
    status: &Option<AgentStatus>,
    s: S,
) -> Result<S::Ok, S::Error> {
    match status {
        Some(status) => s.serialize_str(agent_status_str(*status)),
        None => s.serialize_none(),
    }
}

/// Times as RFC 3339 in UTC with microseconds, so every time has the same width and text
/// order is time order (the read model sorts them as text).
pub fn format_time(at: &DateTime<Utc>) -> String {
    at.to_rfc3339_opts(SecondsFormat::Micros, true)
}

fn serialize_time<S: serde::Serializer>(at: &DateTime<Utc>, s: S) -> Result<S::Ok, S::Error> {
    s.serialize_str(&format_time(at))
}

/// `POST /users` and `PUT /users/{id}`. On a POST the client may supply the id.
#[derive(Debug, Clone, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct UserBody {
    #[serde(default)]
    pub id: Option<String>,
    pub email: String,
    pub username: String,
    pub first_name: String,
    pub last_name: String,
    pub address: Address,
    pub geolocation: Geolocation,
    pub phone_number: String,
    pub user_type: String,
    /// Delivery agents only. A new agent starts FREE; afterwards the status follows the
    /// agent's packages (the delivery service), and a body may only repeat it.
    #[serde(default)]
    pub delivery_agent_status: Option<String>,
}

/// A validated user body.
#[derive(Debug, Clone, PartialEq)]
pub struct UserDetails {
    pub id: Option<Uuid>,
    pub email: Email,
    pub username: String,
    pub first_name: String,
    pub last_name: String,
    pub address: Address,
    pub geolocation: Geolocation,
    pub phone_number: Phone,
    pub user_type: UserType,
    /// The status the body names, if it names one (delivery agents only).
    pub agent_status: Option<AgentStatus>,
}

impl UserBody {
    pub fn validate(self) -> Result<UserDetails, String> {
        let user_type = parse_user_type(&self.user_type)?;
        let agent_status = match (user_type, self.delivery_agent_status.as_deref()) {
            (UserType::DeliveryAgent, Some(text)) => Some(parse_agent_status(text)?),
            (_, None) => None,
            (_, Some(_)) => {
                return Err("deliveryAgentStatus is only for userType DELIVERY_AGENT".to_owned())
            }
        };
        Ok(UserDetails {
            id: self.id.as_deref().map(parse_user_id).transpose()?,
            email: Email::parse(&self.email)?,
            username: bounded_text("username", &self.username, MAX_TEXT_LEN)?,
            first_name: bounded_text("firstName", &self.first_name, MAX_TEXT_LEN)?,
            last_name: bounded_text("lastName", &self.last_name, MAX_TEXT_LEN)?,
            address: self.address.validate()?,
            geolocation: Geolocation::parse(self.geolocation.latitude, self.geolocation.longitude)?,
            phone_number: Phone::parse(&self.phone_number)?,
            user_type,
            agent_status,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn geolocations_are_held_to_their_ranges() {
        assert!(Geolocation::parse(52.0, 4.7).is_ok());
        assert!(Geolocation::parse(-90.0, 180.0).is_ok());
        assert!(Geolocation::parse(90.5, 0.0).is_err());
        assert!(Geolocation::parse(0.0, -180.1).is_err());
        assert!(Geolocation::parse(f64::NAN, 0.0).is_err());
    }

    #[test]
    fn phones_need_digits() {
        assert!(Phone::parse("+31 (0)6-1234.5678").is_ok());
        for bad in ["", "1234", "call me", "+31 6 12a45678"] {
            assert!(Phone::parse(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn times_have_one_width() {
        let at = DateTime::from_timestamp_millis(1_764_000_000_000).unwrap();
        assert_eq!(format_time(&at), "2025-11-24T16:00:00.000000Z");
    }
}
