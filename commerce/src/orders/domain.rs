//! Orders, their statuses and the transitions between them.

use std::fmt;
use std::str::FromStr;

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use uuid::Uuid;

use crate::products::domain::MAX_QUANTITY;

/// An order's status as the API and the database write it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum OrderStatus {
    /// Written only by the earlier placement design (insert first, then reserve); a migration
    /// failed what it left. Kept because the event contract names it.
    Pending,
    Processing,
    Shipped,
    Delivered,
    Cancelled,
    /// Given up during placement: the products service gave no answer, or the order was not
    /// recorded in time after its stock was reserved. Whatever it may hold is released.
    Failed,
}

impl OrderStatus {
    pub const ALL: [OrderStatus; 6] = [
        OrderStatus::Pending,
        OrderStatus::Processing,
        OrderStatus::Shipped,
        OrderStatus::Delivered,
        OrderStatus::Cancelled,
        OrderStatus::Failed,
    ];

    /// The name the database and the JSON use: the event contract's ([`topics::commerce`]).
    pub fn as_str(self) -> &'static str {
        topics::commerce::OrderStatus::from(self).as_str()
    }

    /// The transitions a client may ask for: Processing → Shipped → Delivered, and
    /// Processing → Cancelled. Pending and Failed belong to the reservation alone.
    pub fn can_become(self, next: OrderStatus) -> bool {
        matches!(
            (self, next),
            (OrderStatus::Processing, OrderStatus::Shipped)
                | (OrderStatus::Shipped, OrderStatus::Delivered)
                | (OrderStatus::Processing, OrderStatus::Cancelled)
        )
    }

    /// Whether the order still holds its reserved stock.
    pub fn holds_stock(self) -> bool {
        matches!(
            self,
            OrderStatus::Processing | OrderStatus::Shipped | OrderStatus::Delivered
        )
    }
}

impl fmt::Display for OrderStatus {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for OrderStatus {
    type Err = String;

    fn from_str(text: &str) -> Result<Self, String> {
        OrderStatus::ALL
            .into_iter()
            .find(|s| s.as_str().eq_ignore_ascii_case(text.trim()))
            .ok_or_else(|| {
                format!(
                    "status must be one of Processing, Shipped, Delivered, Cancelled, not {text:?}"
                )
            })
    }
}

impl From<OrderStatus> for topics::commerce::OrderStatus {
    fn from(status: OrderStatus) -> Self {
        use topics::commerce::OrderStatus as Event;
        match status {
            OrderStatus::Pending => Event::Pending,
            OrderStatus::Processing => Event::Processing,
            OrderStatus::Shipped => Event::Shipped,
            OrderStatus::Delivered => Event::Delivered,
            OrderStatus::Cancelled => Event::Cancelled,
            OrderStatus::Failed => Event::Failed,
        }
    }
}

/// A stored order.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Order {
    pub id: Uuid,
    pub customer_id: i64,
    pub product_id: i64,
    pub quantity: i32,
    pub status: OrderStatus,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub failure_reason: Option<String>,
    pub created_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
}

/// `POST /orders`.
#[derive(Debug, Clone, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct OrderBody {
    pub customer_id: i64,
    pub product_id: i64,
    pub quantity: i64,
}

/// A validated order request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct NewOrder {
    pub customer_id: i64,
    pub product_id: i64,
    pub quantity: i32,
}

impl OrderBody {
    pub fn validate(self) -> Result<NewOrder, String> {
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
        Ok(NewOrder {
            customer_id: self.customer_id,
            product_id: self.product_id,
            quantity: self.quantity as i32,
        })
    }
}

/// `PUT /orders/{id}/status`.
#[derive(Debug, Clone, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct StatusBody {
    pub status: String,
}

/// The longest idempotency key accepted.
pub const MAX_IDEMPOTENCY_KEY_LEN: usize = 200;

/// The namespace of order ids derived from idempotency keys.
const IDEMPOTENCY_NAMESPACE: Uuid = Uuid::from_u128(0x6f1c_2a4e_93d7_4b0e_8c55_1e7a_d2f0_b914);

/// The id of an order placed with an idempotency key, derived from the key (UUID v5): retries
/// with one key, even concurrent ones, reserve under one order id, which the products service
/// reserves for at most once. Without a key an order gets a random id.
pub fn order_id_for(idempotency_key: Option<&str>) -> Uuid {
    match idempotency_key {
        Some(key) => Uuid::new_v5(&IDEMPOTENCY_NAMESPACE, key.as_bytes()),
        None => Uuid::new_v4(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_the_documented_transitions_are_allowed() {
        let allowed: Vec<_> = OrderStatus::ALL
            .into_iter()
            .flat_map(|from| OrderStatus::ALL.into_iter().map(move |to| (from, to)))
            .filter(|(from, to)| from.can_become(*to))
            .collect();
        assert_eq!(
            allowed,
            [
                (OrderStatus::Processing, OrderStatus::Shipped),
                (OrderStatus::Processing, OrderStatus::Cancelled),
                (OrderStatus::Shipped, OrderStatus::Delivered),
            ]
        );
    }

    #[test]
    fn keyed_orders_get_one_id_per_key() {
        assert_eq!(order_id_for(Some("a")), order_id_for(Some("a")));
        assert_ne!(order_id_for(Some("a")), order_id_for(Some("b")));
        assert_ne!(order_id_for(None), order_id_for(None));
    }

    #[test]
    fn statuses_parse_case_insensitively() {
        assert_eq!("shipped".parse::<OrderStatus>(), Ok(OrderStatus::Shipped));
        assert!("Lost".parse::<OrderStatus>().is_err());
    }
}
