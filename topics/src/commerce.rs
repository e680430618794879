//! The commerce domain's events: orders (placed, status changed) on `commerce.order-events`,
//! keyed by order id, and stock (reserved, released, adjusted) on `commerce.stock-events`,
//! keyed by product id. Both are written to the owning service's outbox in the transaction
//! that makes the change, so an event exists exactly when its change committed.

use std::sync::OnceLock;

use apache_avro::Schema;
use serde::{Deserialize, Serialize};
use uuid::Uuid;

use crate::events::Event;
use crate::spec::{self, TopicSpec};

fn parse_once(cell: &'static OnceLock<Schema>, spec: &TopicSpec) -> &'static Schema {
    // Compiled-in catalogue schemas are checked by `spec::tests`: a failure is a build defect.
    cell.get_or_init(|| {
        let text = spec.value_schema.expect("event topics have a value schema");
        Schema::parse_str(text).expect("catalogue schema parses")
    })
}

/// Where an order is in its life. `Pending` while its stock is being reserved; `Failed` when
/// that did not succeed (not enough stock, unknown product, or it stayed pending too long).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum OrderStatus {
    Pending,
    Processing,
    Shipped,
    Delivered,
    Cancelled,
    Failed,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum OrderEventKind {
    Placed,
    StatusChanged,
}

/// An order was placed (its stock reserved) or changed status.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct OrderEvent {
    pub event_id: Uuid,
    pub kind: OrderEventKind,
    pub order_id: Uuid,
    /// The key, kept as text so [`Event::key`] can borrow it.
    #[serde(skip)]
    pub key: String,
    pub customer_id: i64,
    pub product_id: i64,
    pub quantity: i32,
    pub status: OrderStatus,
    pub previous_status: Option<OrderStatus>,
    /// Milliseconds since the Unix epoch.
    pub occurred_at: i64,
}

impl OrderEvent {
    /// Fills the key from the order id (after deserializing, where it is skipped).
    pub fn with_key(mut self) -> Self {
        self.key = self.order_id.to_string();
        self
    }
}

impl Event for OrderEvent {
    const TOPIC: &'static TopicSpec = &spec::COMMERCE_ORDER_EVENTS;

    fn schema() -> &'static Schema {
        static SCHEMA: OnceLock<Schema> = OnceLock::new();
        parse_once(&SCHEMA, Self::TOPIC)
    }

    fn key(&self) -> &str {
        &self.key
    }

    fn event_id(&self) -> Uuid {
        self.event_id
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum StockEventKind {
    Reserved,
    Released,
    Adjusted,
}

/// A product's stock changed.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct StockEvent {
    pub event_id: Uuid,
    pub kind: StockEventKind,
    pub product_id: i64,
    #[serde(skip)]
    pub key: String,
    pub order_id: Option<Uuid>,
    /// Negative when stock was taken, positive when it was given back.
    pub quantity_change: i32,
    pub stock_after: i32,
    /// Milliseconds since the Unix epoch.
    pub occurred_at: i64,
}

impl StockEvent {
    /// Fills the key from the product id (after deserializing, where it is skipped).
    pub fn with_key(mut self) -> Self {
        self.key = self.product_id.to_string();
        self
    }
}

impl Event for StockEvent {
    const TOPIC: &'static TopicSpec = &spec::COMMERCE_STOCK_EVENTS;

    fn schema() -> &'static Schema {
        static SCHEMA: OnceLock<Schema> = OnceLock::new();
        parse_once(&SCHEMA, Self::TOPIC)
    }

    fn key(&self) -> &str {
        &self.key
    }

    fn event_id(&self) -> Uuid {
        self.event_id
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::codec::Encoder;

    #[test]
    fn order_and_stock_events_encode_with_their_schemas() {
        let order = OrderEvent {
            event_id: Uuid::new_v4(),
            kind: OrderEventKind::StatusChanged,
            order_id: Uuid::new_v4(),
            key: String::new(),
            customer_id: 3,
            product_id: 7,
            quantity: 2,
            status: OrderStatus::Cancelled,
            previous_status: Some(OrderStatus::Processing),
            occurred_at: 1_764_000_000_000,
        }
        .with_key();
        let bytes = Encoder::<OrderEvent>::with_schema_id(1)
            .unwrap()
            .encode(&order)
            .unwrap();
        assert!(bytes.len() > 5);
        let stock = StockEvent {
            event_id: Uuid::new_v4(),
            kind: StockEventKind::Reserved,
            product_id: 7,
            key: String::new(),
            order_id: Some(order.order_id),
            quantity_change: -2,
            stock_after: 5,
            occurred_at: 1_764_000_000_000,
        }
        .with_key();
        Encoder::<StockEvent>::with_schema_id(2)
            .unwrap()
            .encode(&stock)
            .unwrap();
        let adjusted = StockEvent {
            kind: StockEventKind::Adjusted,
            order_id: None,
            ..stock
        };
        Encoder::<StockEvent>::with_schema_id(2)
            .unwrap()
            .encode(&adjusted)
            .unwrap();
    }
}
