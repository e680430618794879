//! The order flow's settings, one file for every component (`ORDERFLOW_CONFIG=orderflow.toml`),
//! then the environment, over the defaults. Field names are flat because env names map onto
//! them one to one (`SAGA_CONCURRENCY` sets `saga_concurrency`); see [`topics::settings`].

use std::path::PathBuf;
use std::time::Duration;

use serde::{Deserialize, Serialize};
use sqlx::postgres::PgConnectOptions;
use topics::settings::KafkaSettings;

use crate::resilience::{Call, Policy};

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default)]
pub struct Settings {
    #[serde(flatten)]
    pub kafka: KafkaSettings,
    /// A server and an account allowed to create databases.
    pub postgres_url: String,
    /// The saga's database: saga state, the local effects (shipments, purchase history,
    /// sales), the restock timers and the fired restocks.
    pub orderflow_database: String,
    /// The payment provider's own database.
    pub payments_database: String,
    /// The loyalty consumer's database: accounts and the ledger of processed orders.
    pub loyalty_database: String,
    pub orderflow_pool_size: u32,

    pub customers_url: String,
    pub products_url: String,
    pub orders_url: String,
    pub payments_url: String,

    /// Consumer group of the saga's intake (PLACED events start a saga).
    pub saga_group: String,
    /// Sagas worked on at once per instance.
    pub saga_concurrency: usize,
    /// How often an idle saga worker looks for due sagas.
    pub saga_poll_ms: u64,
    /// The confirmation emails, one JSON line each.
    pub mail_log: PathBuf,
    /// Test hook: the saga process aborts (as `kill -9` would) right after the effect of this
    /// step, before the step's advance commits. Empty: never.
    pub saga_crash_at: String,
    /// With `saga_crash_at`: abort only at this order's step (tests share the order events
    /// topic, so another test's order could reach the step first). Empty: any order.
    pub saga_crash_order: String,

    pub payments_listen_addr: String,
    /// Simulated provider latency per charge.
    pub payments_latency_ms: u64,
    /// Share of new charges declined (a permanent answer, stored with its idempotency key).
    pub payments_decline_rate: f64,
    /// Share of calls answered 503 without charging (transient; the caller retries).
    pub payments_error_rate: f64,

    /// A sale that leaves a product at stock 0 (or finds a restock pending) (re)arms its
    /// timer this long after the sale.
    pub restock_delay_ms: u64,
    pub restock_quantity: i32,
    pub restock_poll_ms: u64,

    pub loyalty_group: String,
    /// `exactly-once` (the ledger row and the points in one transaction) or `naive` (demo
    /// and benchmark only: read-modify-write without a ledger check; over-counts).
    pub loyalty_mode: String,
    pub loyalty_points_per_item: i64,

    pub audit_group: String,
    pub audit_dir: PathBuf,

    /// The tracking read model's MySQL server (platform-wide `MYSQL_URL`).
    pub mysql_url: String,
    pub tracking_listen_addr: String,
    /// The tracking projector's consumer group (its offsets live in the store).
    pub tracking_group: String,
    /// The read model's namespace in the MySQL store (its tables' prefix).
    pub tracking_namespace: String,
    /// Where order events the read model can never apply go.
    pub tracking_dead_letter_topic: String,
    /// Test hook: `offset-first` records each batch's offset before its documents are
    /// written (broken on purpose, for the chaos run to catch). Empty: never.
    pub tracking_break: String,

    /// Consumers without an HTTP server of their own (saga, restock, loyalty, audit) serve
    /// `GET /metrics` here; empty: no listener. `127.0.0.1:0` picks a free port (logged).
    pub metrics_listen_addr: String,

    /// The customers calls' policy: per-attempt timeout, retries after the first attempt, and the
    /// circuit breaker (opens after this many consecutive failures, for this long).
    pub customers_timeout_ms: u64,
    pub customers_retries: usize,
    pub customers_breaker_failures: u32,
    pub customers_breaker_open_ms: u64,
    /// The products calls' policy: per-attempt timeout, retries after the first attempt, and the
    /// circuit breaker (opens after this many consecutive failures, for this long).
    pub products_timeout_ms: u64,
    pub products_retries: usize,
    pub products_breaker_failures: u32,
    pub products_breaker_open_ms: u64,
    /// The orders calls' policy: per-attempt timeout, retries after the first attempt, and the
    /// circuit breaker (opens after this many consecutive failures, for this long).
    pub orders_timeout_ms: u64,
    pub orders_retries: usize,
    pub orders_breaker_failures: u32,
    pub orders_breaker_open_ms: u64,
    /// The payments calls' policy: per-attempt timeout, retries after the first attempt, and the
    /// circuit breaker (opens after this many consecutive failures, for this long).
    pub payments_timeout_ms: u64,
    pub payments_retries: usize,
    pub payments_breaker_failures: u32,
    pub payments_breaker_open_ms: u64,
    /// Backoff between retries of any call: exponential from the min to the max, with jitter.
    pub retry_min_backoff_ms: u64,
    pub retry_max_backoff_ms: u64,
}

impl Default for Settings {
    fn default() -> Self {
        Self {
            kafka: KafkaSettings::default(),
            postgres_url: "postgres://platform:platform@127.0.0.1:5432/platform".to_owned(),
            orderflow_database: "orderflow".to_owned(),
            payments_database: "orderflow_payments".to_owned(),
            loyalty_database: "orderflow_loyalty".to_owned(),
            orderflow_pool_size: 16,
            customers_url: "http://127.0.0.1:3011".to_owned(),
            products_url: "http://127.0.0.1:3010".to_owned(),
            orders_url: "http://127.0.0.1:3012".to_owned(),
            payments_url: "http://127.0.0.1:3020".to_owned(),
            saga_group: "orderflow-saga".to_owned(),
            saga_concurrency: 8,
            saga_poll_ms: 200,
            mail_log: PathBuf::from("orderflow-data/mail.log"),
            saga_crash_at: String::new(),
            saga_crash_order: String::new(),
            payments_listen_addr: "127.0.0.1:3020".to_owned(),
            payments_latency_ms: 20,
            payments_decline_rate: 0.05,
            payments_error_rate: 0.05,
            restock_delay_ms: 15_000,
            restock_quantity: 10,
            restock_poll_ms: 250,
            loyalty_group: "orderflow-loyalty".to_owned(),
            loyalty_mode: "exactly-once".to_owned(),
            loyalty_points_per_item: 10,
            audit_group: "orderflow-audit".to_owned(),
            audit_dir: PathBuf::from("orderflow-data/audit"),
            mysql_url: "mysql://platform:platform@127.0.0.1:3306/platform".to_owned(),
            tracking_listen_addr: "127.0.0.1:3021".to_owned(),
            tracking_group: "orderflow-tracking".to_owned(),
            tracking_namespace: "orderflow:tracking".to_owned(),
            tracking_dead_letter_topic: topics::spec::COMMERCE_DEAD_LETTERS.name.to_owned(),
            tracking_break: String::new(),
            metrics_listen_addr: String::new(),
            customers_timeout_ms: 3_000,
            customers_retries: 4,
            customers_breaker_failures: 10,
            customers_breaker_open_ms: 2_000,
            products_timeout_ms: 3_000,
            products_retries: 4,
            products_breaker_failures: 10,
            products_breaker_open_ms: 2_000,
            orders_timeout_ms: 3_000,
            orders_retries: 4,
            orders_breaker_failures: 10,
            orders_breaker_open_ms: 2_000,
            payments_timeout_ms: 3_000,
            payments_retries: 4,
            payments_breaker_failures: 10,
            payments_breaker_open_ms: 2_000,
            retry_min_backoff_ms: 50,
            retry_max_backoff_ms: 2_000,
        }
    }
}

impl Settings {
    pub fn server_options(&self) -> Result<PgConnectOptions, sqlx::Error> {
        self.postgres_url.parse()
    }

    /// The resilience policy of calls to `call` (`customers`, `products`, `orders`, `payments`).
    pub fn policy(&self, call: Call) -> Policy {
        let (timeout, retries, failures, open) = match call {
            Call::Customers => (
                self.customers_timeout_ms,
                self.customers_retries,
                self.customers_breaker_failures,
                self.customers_breaker_open_ms,
            ),
            Call::Products => (
                self.products_timeout_ms,
                self.products_retries,
                self.products_breaker_failures,
                self.products_breaker_open_ms,
            ),
            Call::Orders => (
                self.orders_timeout_ms,
                self.orders_retries,
                self.orders_breaker_failures,
                self.orders_breaker_open_ms,
            ),
            Call::Payments => (
                self.payments_timeout_ms,
                self.payments_retries,
                self.payments_breaker_failures,
                self.payments_breaker_open_ms,
            ),
        };
        Policy {
            name: call.name(),
            timeout: Duration::from_millis(timeout.max(1)),
            retries,
            min_backoff: Duration::from_millis(self.retry_min_backoff_ms.max(1)),
            max_backoff: Duration::from_millis(
                self.retry_max_backoff_ms
                    .max(self.retry_min_backoff_ms)
                    .max(1),
            ),
            breaker_failures: failures.max(1),
            breaker_open: Duration::from_millis(open.max(1)),
        }
    }

    pub fn saga_poll(&self) -> Duration {
        Duration::from_millis(self.saga_poll_ms.max(10))
    }

    pub fn restock_delay(&self) -> Duration {
        Duration::from_millis(self.restock_delay_ms)
    }

    pub fn restock_poll(&self) -> Duration {
        Duration::from_millis(self.restock_poll_ms.max(10))
    }
}

impl Settings {
    /// The settings as environment variables, for a child process that loads them back.
    pub fn environment(&self) -> Vec<(String, String)> {
        let Ok(serde_json::Value::Object(fields)) = serde_json::to_value(self) else {
            return Vec::new();
        };
        fields
            .into_iter()
            .map(|(name, value)| {
                let text = match value {
                    serde_json::Value::String(s) => s,
                    other => other.to_string(),
                };
                (name.to_uppercase(), text)
            })
            .collect()
    }
}

pub fn load() -> topics::Result<Settings> {
    topics::settings::load("orderflow")
}
