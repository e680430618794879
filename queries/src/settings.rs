//! The engine's settings, layered by [`topics::settings`] (defaults → `QUERIES_CONFIG` file →
//! environment; `QUERIES_GOLD_ORDER_DELAY_MS` sets `queries_gold_order_delay_ms`).

use serde::{Deserialize, Serialize};
use topics::settings::KafkaSettings;

use crate::model::Table;
use crate::query::Query;

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Settings {
    #[serde(flatten)]
    pub kafka: KafkaSettings,
    /// The connector's change topics (Debezium envelopes) of the four commerce tables.
    pub queries_products_topic: String,
    pub queries_customers_topic: String,
    pub queries_orders_topic: String,
    pub queries_reviews_topic: String,
    /// Result topics are `<prefix>.<query name>`; `queries` matches the specs in `topics`.
    pub queries_topic_prefix: String,
    /// The transactional id of the result producer: a restarted engine fences its predecessor.
    pub queries_transactional_id: String,
    /// How long a Gold customer's order may stay Processing before it is delayed (30 min).
    pub queries_gold_order_delay_ms: u64,
    /// How often the clock advances logical time when no data changes.
    pub queries_tick_ms: u64,
    /// At most this many source changes go into one step of the dataflow.
    pub queries_max_batch: usize,
    /// How long start-up waits for the source topics to exist.
    pub queries_source_wait_ms: u64,
    /// Where the engine serves `GET /metrics` (Prometheus text); empty: nowhere.
    pub queries_metrics_addr: String,
    /// Where source changes the queries can never read go, with the reason (compacted, keyed
    /// by their source coordinates).
    pub queries_dead_letter_topic: String,
}

impl Default for Settings {
    fn default() -> Self {
        Self {
            kafka: KafkaSettings::default(),
            queries_products_topic: "commerce.products.public.products".to_owned(),
            queries_customers_topic: "commerce.customers.public.customers".to_owned(),
            queries_orders_topic: "commerce.orders.public.orders".to_owned(),
            queries_reviews_topic: "commerce.reviews.public.reviews".to_owned(),
            queries_topic_prefix: "queries".to_owned(),
            queries_transactional_id: "queries-engine".to_owned(),
            queries_gold_order_delay_ms: 30 * 60 * 1000,
            queries_tick_ms: 1000,
            queries_max_batch: 20_000,
            queries_source_wait_ms: 120_000,
            queries_metrics_addr: "127.0.0.1:3019".to_owned(),
            queries_dead_letter_topic: topics::spec::QUERIES_DEAD_LETTERS.name.to_owned(),
        }
    }
}

impl Settings {
    pub fn source_topic(&self, table: Table) -> &str {
        match table {
            Table::Products => &self.queries_products_topic,
            Table::Customers => &self.queries_customers_topic,
            Table::Orders => &self.queries_orders_topic,
            Table::Reviews => &self.queries_reviews_topic,
        }
    }

    /// The result topic of `query` under the configured prefix.
    pub fn result_topic(&self, query: &Query) -> String {
        result_topic(&self.queries_topic_prefix, query)
    }

    /// The history topic of `query` under the configured prefix, if it has one.
    pub fn history_topic(&self, query: &Query) -> Option<String> {
        history_topic(&self.queries_topic_prefix, query)
    }
}

/// `<prefix>.<query name>.history`, when the query has a history topic.
pub fn history_topic(prefix: &str, query: &Query) -> Option<String> {
    query
        .history
        .map(|_| format!("{}.history", result_topic(prefix, query)))
}

/// `<prefix>.<query name>`.
pub fn result_topic(prefix: &str, query: &Query) -> String {
    format!("{prefix}.{}", query.name)
}
