//! Products as the API shows them, and the rules a product body must satisfy.

use std::fmt;

use serde::{Deserialize, Serialize, Serializer};
use uuid::Uuid;

use crate::http::bounded_text;

pub const MAX_NAME_LEN: usize = 200;
pub const MAX_DESCRIPTION_LEN: usize = 2_000;
/// Larger stock figures are typing mistakes, not warehouses.
pub const MAX_STOCK: i64 = 1_000_000_000;
/// The largest price NUMERIC(12, 2) holds, in cents.
pub const MAX_PRICE_CENTS: i64 = 999_999_999_999;
/// The most one order may reserve of one product.
pub const MAX_QUANTITY: i64 = 10_000;

/// A price in cents, written as a decimal number with at most two decimals (`19.99`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Price(i64);

impl Price {
    pub fn cents(self) -> i64 {
        self.0
    }

    pub fn from_cents(cents: i64) -> Self {
        Price(cents)
    }

    /// Parses `12`, `12.5` or `12.50` (as JSON writes a number, or PostgreSQL a NUMERIC).
    pub fn parse(text: &str) -> Result<Self, String> {
        let refuse = || format!("price must be a number ≥ 0 with at most two decimals, not {text}");
        let (whole, fraction) = text.split_once('.').unwrap_or((text, ""));
        if whole.is_empty()
            || !whole.bytes().all(|b| b.is_ascii_digit())
            || fraction.len() > 2
            || !fraction.bytes().all(|b| b.is_ascii_digit())
        {
            return Err(refuse());
        }
        let whole: i64 = whole.parse().map_err(|_| refuse())?;
        let fraction: i64 = format!("{fraction:0<2}").parse().map_err(|_| refuse())?;
        let cents = whole
            .checked_mul(100)
            .and_then(|c| c.checked_add(fraction))
            .filter(|c| *c <= MAX_PRICE_CENTS)
            .ok_or_else(refuse)?;
        Ok(Price(cents))
    }
}

impl fmt::Display for Price {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}.{:02}", self.0 / 100, self.0 % 100)
    }
}

impl Serialize for Price {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        // JSON numbers are doubles to most clients; two decimals survive that exactly enough
        // to print back as written.
        serializer.serialize_f64(self.0 as f64 / 100.0)
    }
}

/// A stored product.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Product {
    pub id: i64,
    #[serde(flatten)]
    pub details: ProductDetails,
}

/// What POST creates and PUT replaces.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct ProductDetails {
    pub name: String,
    pub description: String,
    pub price: Price,
    pub stock: i32,
}

/// A POST or PUT body; valid JSON of this shape may still be refused by [`ProductBody::validate`].
#[derive(Debug, Clone, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct ProductBody {
    pub name: String,
    #[serde(default)]
    pub description: String,
    pub price: serde_json::Number,
    pub stock: i64,
}

impl ProductBody {
    pub fn validate(self) -> Result<ProductDetails, String> {
        let name = bounded_text("name", &self.name, MAX_NAME_LEN)?;
        let description = self.description.trim().to_owned();
        if description.chars().count() > MAX_DESCRIPTION_LEN {
            return Err(format!(
                "description must be at most {MAX_DESCRIPTION_LEN} characters"
            ));
        }
        let price = Price::parse(&self.price.to_string())?;
        if !(0..=MAX_STOCK).contains(&self.stock) {
            return Err(format!(
                "stock must be from 0 to {MAX_STOCK}, not {}",
                self.stock
            ));
        }
        Ok(ProductDetails {
            name,
            description,
            price,
            stock: self.stock as i32,
        })
    }
}

/// `POST /reservations`: reserve `quantity` of `product_id` for the order `order_id` of the
/// customer `customer_id` (named so the orders service can record an order it never got to
/// write as given up).
#[derive(Debug, Clone, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct ReservationBody {
    pub order_id: Uuid,
    pub customer_id: i64,
    pub product_id: i64,
    pub quantity: i64,
}

/// A validated reservation request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ReservationRequest {
    pub order_id: Uuid,
    pub customer_id: i64,
    pub product_id: i64,
    pub quantity: i32,
}

impl ReservationBody {
    pub fn validate(self) -> Result<ReservationRequest, String> {
        if self.customer_id <= 0 {
            return Err(format!(
                "customerId must be positive, not {}",
                self.customer_id
            ));
        }
        if self.product_id <= 0 {
            return Err(format!(
                "productId must be positive, not {}",
                self.product_id
            ));
        }
        if !(1..=MAX_QUANTITY).contains(&self.quantity) {
            return Err(format!(
                "quantity must be from 1 to {MAX_QUANTITY}, not {}",
                self.quantity
            ));
        }
        Ok(ReservationRequest {
            order_id: self.order_id,
            customer_id: self.customer_id,
            product_id: self.product_id,
            quantity: self.quantity as i32,
        })
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ReservationStatus {
    Held,
    Released,
}

/// A reservation as the products service reports it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Reservation {
    pub order_id: Uuid,
    pub product_id: Option<i64>,
    pub quantity: i32,
    pub status: ReservationStatus,
}

/// `POST /reservations/batch`: many reservations in one call, each with the W3C trace context
/// of the order it is for (its stock event continues that trace).
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct BatchBody {
    pub reservations: Vec<BatchEntry>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct BatchEntry {
    pub order_id: Uuid,
    pub customer_id: i64,
    pub product_id: i64,
    pub quantity: i64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub traceparent: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tracestate: Option<String>,
}

/// One entry's answer in a batch: the status a single `POST /reservations` would have
/// answered (201 reserved now, 200 held already, 409, 404), with its error message.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct BatchResult {
    pub order_id: Uuid,
    pub status: u16,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}

/// The answer to `POST /reservations/batch`: one result per entry, in the entries' order.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct BatchAnswer {
    pub results: Vec<BatchResult>,
}

/// The most reservations one batch may carry: a full batch with trace contexts stays well
/// inside the request body limit (64 KiB).
pub const MAX_BATCH: usize = 256;

/// A held reservation the orders service has not yet confirmed an order for
/// (`GET /reservations/unsettled`): what the orders sweeper needs to settle it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Unsettled {
    pub order_id: Uuid,
    pub customer_id: i64,
    pub product_id: i64,
    pub quantity: i32,
}

/// `POST /reservations/settled`: the orders whose reservations are confirmed to be theirs.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct SettledBody {
    pub order_ids: Vec<Uuid>,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn prices_parse_with_up_to_two_decimals() {
        for (text, cents) in [("0", 0), ("12", 1200), ("12.5", 1250), ("12.05", 1205)] {
            assert_eq!(Price::parse(text).unwrap().cents(), cents, "{text}");
        }
        for text in ["-1", "1.234", "1e3", "", ".5", "abc"] {
            assert!(Price::parse(text).is_err(), "{text}");
        }
        assert_eq!(Price::from_cents(1205).to_string(), "12.05");
    }
}
