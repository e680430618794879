//! Topic specs as data: the one place that says which topics exist and what they carry.

use std::fmt;
use std::time::Duration;

/// How the broker discards old records of a topic.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CleanupPolicy {
    Delete,
    Compact,
    CompactDelete,
}

impl CleanupPolicy {
    /// The value of the topic config `cleanup.policy`.
    pub fn as_config(self) -> &'static str {
        match self {
            CleanupPolicy::Delete => "delete",
            CleanupPolicy::Compact => "compact",
            CleanupPolicy::CompactDelete => "compact,delete",
        }
    }

    pub fn from_config(value: &str) -> Option<Self> {
        let mut parts: Vec<&str> = value.split(',').map(str::trim).collect();
        parts.sort_unstable();
        match parts.as_slice() {
            ["delete"] => Some(CleanupPolicy::Delete),
            ["compact"] => Some(CleanupPolicy::Compact),
            ["compact", "delete"] => Some(CleanupPolicy::CompactDelete),
            _ => None,
        }
    }
}

impl fmt::Display for CleanupPolicy {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_config())
    }
}

/// How long records are kept.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Retention {
    Forever,
    For(Duration),
}

impl Retention {
    /// The value of the topic config `retention.ms`.
    pub fn as_config(self) -> String {
        match self {
            Retention::Forever => "-1".to_owned(),
            Retention::For(d) => d.as_millis().to_string(),
        }
    }
}

/// How record keys are serialized.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum KeyFormat {
    /// The key is a UTF-8 string (an entity id), so partitioning is stable across languages.
    Utf8String,
}

/// Everything the platform promises about one topic.
#[derive(Debug, Clone, Copy)]
pub struct TopicSpec {
    pub name: &'static str,
    pub partitions: i32,
    /// Wanted replication factor; `apply` lowers it to the broker count on smaller clusters.
    pub replication_factor: i32,
    pub cleanup_policy: CleanupPolicy,
    pub retention: Retention,
    pub key: KeyFormat,
    /// The Avro schema of record values, registered under subject `<name>-value`; `None` for
    /// topics whose values are opaque bytes, like dead-letter topics that keep records as
    /// they came.
    pub value_schema: Option<&'static str>,
}

impl TopicSpec {
    /// The registry subject of the value schema (Confluent's TopicNameStrategy).
    pub fn value_subject(&self) -> String {
        value_subject(self.name)
    }
}

/// The registry subject of a topic's value schema (Confluent's TopicNameStrategy).
pub fn value_subject(topic: &str) -> String {
    format!("{topic}-value")
}

pub const CONNECTION_MANDATES: TopicSpec = TopicSpec {
    name: "connection-mandates",
    partitions: 4,
    replication_factor: 2,
    // Compaction keeps the newest mandate per connection forever, so a read model can always
    // be rebuilt from the topic without keeping every historical change.
    cleanup_policy: CleanupPolicy::Compact,
    retention: Retention::Forever,
    key: KeyFormat::Utf8String,
    value_schema: Some(include_str!("../schemas/connection-mandate-changed.avsc")),
};

/// Events the IoT platform's projector can never apply, with headers saying why and where
/// they came from.
pub const IOT_PLATFORM_DEAD_LETTERS: TopicSpec = TopicSpec {
    name: "iot-platform.dead-letter",
    partitions: 1,
    replication_factor: 2,
    cleanup_policy: CleanupPolicy::Delete,
    retention: Retention::For(Duration::from_secs(30 * 24 * 3600)),
    key: KeyFormat::Utf8String,
    value_schema: None,
};

/// What happens to orders in the commerce domain: placed (stock reserved) and status changes,
/// keyed by order id. Kept for a year; the orders database stays the source of truth.
pub const COMMERCE_ORDER_EVENTS: TopicSpec = TopicSpec {
    name: "commerce.order-events",
    partitions: 4,
    replication_factor: 2,
    cleanup_policy: CleanupPolicy::Delete,
    retention: Retention::For(Duration::from_secs(365 * 24 * 3600)),
    key: KeyFormat::Utf8String,
    value_schema: Some(include_str!("../schemas/commerce-order-event.avsc")),
};

/// Stock movements of the commerce domain's products (reserved, released, adjusted), keyed
/// by product id, each carrying the stock after it.
pub const COMMERCE_STOCK_EVENTS: TopicSpec = TopicSpec {
    name: "commerce.stock-events",
    partitions: 4,
    replication_factor: 2,
    cleanup_policy: CleanupPolicy::Delete,
    retention: Retention::For(Duration::from_secs(365 * 24 * 3600)),
    key: KeyFormat::Utf8String,
    value_schema: Some(include_str!("../schemas/commerce-stock-event.avsc")),
};

/// The users service's events, keyed by user id: a delivery agent's account created, a user
/// deleted (deactivated), a delivery agent's status changed. Kept for a year; the users
/// database stays the source of truth.
pub const COMMERCE_USER_EVENTS: TopicSpec = TopicSpec {
    name: "commerce.user-events",
    partitions: 4,
    replication_factor: 2,
    cleanup_policy: CleanupPolicy::Delete,
    retention: Retention::For(Duration::from_secs(365 * 24 * 3600)),
    key: KeyFormat::Utf8String,
    value_schema: Some(include_str!("../schemas/commerce-user-event.avsc")),
};

/// The delivery service's events, keyed by package id: created (queued), assigned to an
/// agent, delivered.
pub const COMMERCE_DELIVERY_EVENTS: TopicSpec = TopicSpec {
    name: "commerce.delivery-events",
    partitions: 4,
    replication_factor: 2,
    cleanup_policy: CleanupPolicy::Delete,
    retention: Retention::For(Duration::from_secs(365 * 24 * 3600)),
    key: KeyFormat::Utf8String,
    value_schema: Some(include_str!("../schemas/commerce-delivery-event.avsc")),
};

/// Result changes of the `product-catalogue` continuous query (`queries` crate): Every product with name, price, stock, review count and average rating.
/// Compacted (the newest change per result key is the current result) and one partition, so
/// the query's sequence numbers are in offset order.
pub const QUERIES_PRODUCT_CATALOGUE: TopicSpec = TopicSpec {
    name: "queries.product-catalogue",
    partitions: 1,
    replication_factor: 2,
    cleanup_policy: CleanupPolicy::Compact,
    retention: Retention::Forever,
    key: KeyFormat::Utf8String,
    value_schema: Some(include_str!("../schemas/queries-product-catalogue.avsc")),
};

/// Result changes of the `low-stock` continuous query (`queries` crate): Products entering (added) and leaving (deleted) 0 < stock < 20.
/// Compacted (the newest change per result key is the current result) and one partition, so
/// the query's sequence numbers are in offset order.
pub const QUERIES_LOW_STOCK: TopicSpec = TopicSpec {
    name: "queries.low-stock",
    partitions: 1,
    replication_factor: 2,
    cleanup_policy: CleanupPolicy::Compact,
    retention: Retention::Forever,
    key: KeyFormat::Utf8String,
    value_schema: Some(include_str!("../schemas/queries-low-stock.avsc")),
};

/// Result changes of the `critical-stock` continuous query (`queries` crate): Products entering (added) and leaving (deleted) stock < 5.
/// Compacted (the newest change per result key is the current result) and one partition, so
/// the query's sequence numbers are in offset order.
pub const QUERIES_CRITICAL_STOCK: TopicSpec = TopicSpec {
    name: "queries.critical-stock",
    partitions: 1,
    replication_factor: 2,
    cleanup_policy: CleanupPolicy::Compact,
    retention: Retention::Forever,
    key: KeyFormat::Utf8String,
    value_schema: Some(include_str!("../schemas/queries-critical-stock.avsc")),
};

/// Result changes of the `at-risk-orders` continuous query (`queries` crate): Processing orders whose product's stock is below the ordered quantity.
/// Compacted (the newest change per result key is the current result) and one partition, so
/// the query's sequence numbers are in offset order.
pub const QUERIES_AT_RISK_ORDERS: TopicSpec = TopicSpec {
    name: "queries.at-risk-orders",
    partitions: 1,
    replication_factor: 2,
    cleanup_policy: CleanupPolicy::Compact,
    retention: Retention::Forever,
    key: KeyFormat::Utf8String,
    value_schema: Some(include_str!("../schemas/queries-at-risk-orders.avsc")),
};

/// Result changes of the `delayed-gold-orders` continuous query (`queries` crate): Gold customers' orders still Processing the configured delay after creation.
/// Compacted (the newest change per result key is the current result) and one partition, so
/// the query's sequence numbers are in offset order.
pub const QUERIES_DELAYED_GOLD_ORDERS: TopicSpec = TopicSpec {
    name: "queries.delayed-gold-orders",
    partitions: 1,
    replication_factor: 2,
    cleanup_policy: CleanupPolicy::Compact,
    retention: Retention::Forever,
    key: KeyFormat::Utf8String,
    value_schema: Some(include_str!("../schemas/queries-delayed-gold-orders.avsc")),
};

/// Every change of the `low-stock` query, as on [`QUERIES_LOW_STOCK`] (same contract, same
/// sequence numbers, written in the same transaction) but **not compacted**: the history of
/// entries into the condition, which the notifications service lists, survives compaction.
pub const QUERIES_LOW_STOCK_HISTORY: TopicSpec = TopicSpec {
    name: "queries.low-stock.history",
    cleanup_policy: CleanupPolicy::Delete,
    ..QUERIES_LOW_STOCK
};

/// Every change of the `critical-stock` query, not compacted (see [`QUERIES_LOW_STOCK_HISTORY`]).
pub const QUERIES_CRITICAL_STOCK_HISTORY: TopicSpec = TopicSpec {
    name: "queries.critical-stock.history",
    cleanup_policy: CleanupPolicy::Delete,
    ..QUERIES_CRITICAL_STOCK
};

/// Records the commerce services' consumers (users, delivery) can never apply, with a header
/// saying why: kept as they came.
pub const COMMERCE_DEAD_LETTERS: TopicSpec = TopicSpec {
    name: "commerce.dead-letter",
    partitions: 1,
    replication_factor: 2,
    cleanup_policy: CleanupPolicy::Delete,
    retention: Retention::For(Duration::from_secs(30 * 24 * 3600)),
    key: KeyFormat::Utf8String,
    value_schema: None,
};

/// Records the catalogue read model (queries) can never apply, with headers saying why.
pub const QUERIES_CATALOGUE_DEAD_LETTERS: TopicSpec = TopicSpec {
    name: "queries.catalogue.dead-letter",
    ..COMMERCE_DEAD_LETTERS
};

/// Source changes the query engine (`queries run`) can never read, as they came, with
/// headers saying why and where they were. Keyed by the source coordinates and compacted:
/// the engine replays its sources on every start and meets the same record again.
pub const QUERIES_DEAD_LETTERS: TopicSpec = TopicSpec {
    name: "queries.dead-letter",
    cleanup_policy: CleanupPolicy::Compact,
    retention: Retention::Forever,
    ..COMMERCE_DEAD_LETTERS
};

/// Every topic of the platform.
pub const CATALOGUE: &[TopicSpec] = &[
    CONNECTION_MANDATES,
    IOT_PLATFORM_DEAD_LETTERS,
    COMMERCE_ORDER_EVENTS,
    COMMERCE_STOCK_EVENTS,
    COMMERCE_USER_EVENTS,
    COMMERCE_DELIVERY_EVENTS,
    COMMERCE_DEAD_LETTERS,
    QUERIES_PRODUCT_CATALOGUE,
    QUERIES_DEAD_LETTERS,
    QUERIES_LOW_STOCK,
    QUERIES_CRITICAL_STOCK,
    QUERIES_AT_RISK_ORDERS,
    QUERIES_DELAYED_GOLD_ORDERS,
    QUERIES_LOW_STOCK_HISTORY,
    QUERIES_CRITICAL_STOCK_HISTORY,
    QUERIES_CATALOGUE_DEAD_LETTERS,
];

/// Looks a topic up by name in the catalogue.
pub fn find(name: &str) -> Option<&'static TopicSpec> {
    CATALOGUE.iter().find(|spec| spec.name == name)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_value_schema_parses() {
        for spec in CATALOGUE.iter().filter(|s| s.value_schema.is_some()) {
            apache_avro::Schema::parse_str(spec.value_schema.unwrap_or_default())
                .unwrap_or_else(|e| panic!("schema of {} does not parse: {e}", spec.name));
        }
    }

    #[test]
    fn cleanup_policy_reads_what_the_broker_reports() {
        assert_eq!(
            CleanupPolicy::from_config("delete,compact"),
            Some(CleanupPolicy::CompactDelete)
        );
        assert_eq!(
            CleanupPolicy::from_config("compact"),
            Some(CleanupPolicy::Compact)
        );
        assert_eq!(CleanupPolicy::from_config("bogus"), None);
    }

    #[test]
    fn topic_names_are_unique() {
        let mut names: Vec<_> = CATALOGUE.iter().map(|s| s.name).collect();
        names.sort_unstable();
        names.dedup();
        assert_eq!(names.len(), CATALOGUE.len());
    }
}
