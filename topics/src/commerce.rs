//! The commerce domain's events: orders (placed, status changed) on `commerce.order-events`,
//! keyed by order id, and stock (reserved, released, adjusted) on `commerce.stock-events`,
//! keyed by product id; users (delivery agent created, user deleted, agent status changed) on
//! `commerce.user-events`, and package deliveries on `commerce.delivery-events`. Each is
//! written to the owning service's outbox in the transaction that makes the change, so an
//! event exists exactly when its change committed.

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

impl OrderStatus {
    /// The status as the orders database and the services' JSON write it (`Processing`).
    pub fn as_str(self) -> &'static str {
        match self {
            OrderStatus::Pending => "Pending",
            OrderStatus::Processing => "Processing",
            OrderStatus::Shipped => "Shipped",
            OrderStatus::Delivered => "Delivered",
            OrderStatus::Cancelled => "Cancelled",
            OrderStatus::Failed => "Failed",
        }
    }
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

/// A user account's type.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum UserType {
    Customer,
    Admin,
    DeliveryAgent,
}

/// Whether a delivery agent carries a package.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum AgentStatus {
    Free,
    Occupied,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum UserEventKind {
    DeliveryAgentCreated,
    UserDeleted,
    AgentStatusChanged,
}

/// A delivery agent's account was created, a user was deleted (deactivated), or an agent's
/// status changed, on `commerce.user-events` keyed by user id.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct UserEvent {
    pub event_id: Uuid,
    pub kind: UserEventKind,
    pub user_id: Uuid,
    #[serde(skip)]
    pub key: String,
    pub user_type: UserType,
    pub agent_status: Option<AgentStatus>,
    pub previous_agent_status: Option<AgentStatus>,
    /// Milliseconds since the Unix epoch.
    pub occurred_at: i64,
}

impl UserEvent {
    /// Fills the key from the user id (after deserializing, where it is skipped).
    pub fn with_key(mut self) -> Self {
        self.key = self.user_id.to_string();
        self
    }
}

impl Event for UserEvent {
    const TOPIC: &'static TopicSpec = &spec::COMMERCE_USER_EVENTS;

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
pub enum DeliveryEventKind {
    PackageCreated,
    PackageAssigned,
    PackageDelivered,
}

/// Where a package is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum PackageStatus {
    Queued,
    Assigned,
    Delivered,
}

/// A step of a package's delivery, on `commerce.delivery-events` keyed by package id.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DeliveryEvent {
    pub event_id: Uuid,
    pub kind: DeliveryEventKind,
    pub package_id: Uuid,
    #[serde(skip)]
    pub key: String,
    pub order_id: Uuid,
    pub customer_id: i64,
    pub agent_id: Option<Uuid>,
    pub status: PackageStatus,
    /// Milliseconds since the Unix epoch.
    pub occurred_at: i64,
}

impl DeliveryEvent {
    /// Fills the key from the package id (after deserializing, where it is skipped).
    pub fn with_key(mut self) -> Self {
        self.key = self.package_id.to_string();
        self
    }
}

impl Event for DeliveryEvent {
    const TOPIC: &'static TopicSpec = &spec::COMMERCE_DELIVERY_EVENTS;

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
    fn user_and_delivery_events_encode_with_their_schemas() {
        let user = UserEvent {
            event_id: Uuid::new_v4(),
            kind: UserEventKind::AgentStatusChanged,
            user_id: Uuid::new_v4(),
            key: String::new(),
            user_type: UserType::DeliveryAgent,
            agent_status: Some(AgentStatus::Occupied),
            previous_agent_status: Some(AgentStatus::Free),
            occurred_at: 1_764_000_000_000,
        }
        .with_key();
        Encoder::<UserEvent>::with_schema_id(3)
            .unwrap()
            .encode(&user)
            .unwrap();
        let delivery = DeliveryEvent {
            event_id: Uuid::new_v4(),
            kind: DeliveryEventKind::PackageAssigned,
            package_id: Uuid::new_v4(),
            key: String::new(),
            order_id: Uuid::new_v4(),
            customer_id: 4,
            agent_id: Some(user.user_id),
            status: PackageStatus::Assigned,
            occurred_at: 1_764_000_000_000,
        }
        .with_key();
        Encoder::<DeliveryEvent>::with_schema_id(4)
            .unwrap()
            .encode(&delivery)
            .unwrap();
    }

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
