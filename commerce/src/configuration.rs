//! The commerce services' settings, one file for all of them. Field names are flat because env
//! names map onto them one to one (`ORDERS_LISTEN_ADDR` sets `orders_listen_addr`); see
//! [`topics::settings`]. The file is named by `COMMERCE_CONFIG`.

use std::time::Duration;

use serde::{Deserialize, Serialize};
use sqlx::postgres::PgConnectOptions;
use topics::settings::KafkaSettings;

use crate::Service;

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Settings {
    #[serde(flatten)]
    pub kafka: KafkaSettings,
    /// A server and an account allowed to create databases; each service creates its own
    /// database on it at first start.
    pub postgres_url: String,
    pub products_database: String,
    pub products_listen_addr: String,
    pub customers_database: String,
    pub customers_listen_addr: String,
    pub orders_database: String,
    pub orders_listen_addr: String,
    pub reviews_database: String,
    pub reviews_listen_addr: String,
    pub users_database: String,
    pub users_listen_addr: String,
    pub delivery_database: String,
    pub delivery_listen_addr: String,
    /// The MySQL server of the users and delivery read models (platform-wide `MYSQL_URL`).
    pub mysql_url: String,
    /// The connector's change topic of the users database, which the users read model folds.
    pub users_changes_topic: String,
    /// The users read model's namespace in the MySQL store.
    pub users_read_model: String,
    /// The consumer groups of the users service (`<group>.read-model`, `<group>.deliveries`).
    pub users_group: String,
    /// The packages read model's namespace in the MySQL store.
    pub delivery_read_model: String,
    /// The consumer groups of the delivery service (`<group>.read-model`, `.orders`, `.users`).
    pub delivery_group: String,
    /// Where the delivery service marks a delivered package's order Delivered.
    pub delivery_orders_url: String,
    /// How often the delivery service looks for queued packages and free agents, and retries
    /// what it owes the orders service (it also looks at once after every change).
    pub delivery_dispatch_interval_ms: u64,
    /// Where the users and delivery services' consumers put records that can never apply.
    pub commerce_dead_letter_topic: String,
    /// Where the orders service reaches the products service's reservation API.
    pub orders_products_url: String,
    /// How long one call to the products service may take before it counts as failed.
    pub orders_products_timeout_ms: u64,
    /// A reservation held this long with no order recorded for it (the placement stopped
    /// between the two steps) has its order recorded as failed by the sweeper, and the stock
    /// is released.
    pub orders_pending_timeout_ms: u64,
    /// How often the orders sweeper looks for such reservations and for releases still owed.
    pub orders_sweep_interval_ms: u64,
    /// Load the shipped seed data into a service's empty database on its first start.
    pub commerce_seed: bool,
    /// Database connections per service.
    pub commerce_pool_size: u32,
    /// Run the outbox relay inside the products and orders services. Off, events wait in the
    /// outbox tables for a relay run elsewhere (any instance with it on, for that database).
    pub commerce_outbox_relay: bool,
}

impl Default for Settings {
    fn default() -> Self {
        Self {
            kafka: KafkaSettings::default(),
            postgres_url: "postgres://platform:platform@127.0.0.1:5432/platform".to_owned(),
            products_database: "commerce_products".to_owned(),
            products_listen_addr: "127.0.0.1:3010".to_owned(),
            customers_database: "commerce_customers".to_owned(),
            customers_listen_addr: "127.0.0.1:3011".to_owned(),
            orders_database: "commerce_orders".to_owned(),
            orders_listen_addr: "127.0.0.1:3012".to_owned(),
            reviews_database: "commerce_reviews".to_owned(),
            reviews_listen_addr: "127.0.0.1:3013".to_owned(),
            users_database: "commerce_users".to_owned(),
            users_listen_addr: "127.0.0.1:3017".to_owned(),
            delivery_database: "commerce_delivery".to_owned(),
            delivery_listen_addr: "127.0.0.1:3018".to_owned(),
            mysql_url: "mysql://platform:platform@127.0.0.1:3306/platform".to_owned(),
            users_changes_topic: "commerce.users.public.users".to_owned(),
            users_read_model: "commerce:users".to_owned(),
            users_group: "commerce-users".to_owned(),
            delivery_read_model: "commerce:packages".to_owned(),
            delivery_group: "commerce-delivery".to_owned(),
            delivery_orders_url: "http://127.0.0.1:3012".to_owned(),
            delivery_dispatch_interval_ms: 500,
            commerce_dead_letter_topic: topics::spec::COMMERCE_DEAD_LETTERS.name.to_owned(),
            orders_products_url: "http://127.0.0.1:3010".to_owned(),
            orders_products_timeout_ms: 5_000,
            orders_pending_timeout_ms: 30_000,
            orders_sweep_interval_ms: 1_000,
            commerce_seed: true,
            commerce_pool_size: 32,
            commerce_outbox_relay: true,
        }
    }
}

impl Settings {
    /// The server as configured, for creating the services' databases.
    pub fn server_options(&self) -> Result<PgConnectOptions, sqlx::Error> {
        self.postgres_url.parse()
    }

    pub fn database_name(&self, service: Service) -> &str {
        match service {
            Service::Products => &self.products_database,
            Service::Customers => &self.customers_database,
            Service::Orders => &self.orders_database,
            Service::Reviews => &self.reviews_database,
            Service::Users => &self.users_database,
            Service::Delivery => &self.delivery_database,
        }
    }

    pub fn listen_addr(&self, service: Service) -> &str {
        match service {
            Service::Products => &self.products_listen_addr,
            Service::Customers => &self.customers_listen_addr,
            Service::Orders => &self.orders_listen_addr,
            Service::Reviews => &self.reviews_listen_addr,
            Service::Users => &self.users_listen_addr,
            Service::Delivery => &self.delivery_listen_addr,
        }
    }

    /// The service's own database on that server.
    pub fn database_options(&self, service: Service) -> Result<PgConnectOptions, sqlx::Error> {
        Ok(self.server_options()?.database(self.database_name(service)))
    }

    pub fn products_timeout(&self) -> Duration {
        Duration::from_millis(self.orders_products_timeout_ms)
    }

    pub fn pending_timeout(&self) -> Duration {
        Duration::from_millis(self.orders_pending_timeout_ms)
    }

    pub fn dispatch_interval(&self) -> Duration {
        Duration::from_millis(self.delivery_dispatch_interval_ms.max(1))
    }

    pub fn sweep_interval(&self) -> Duration {
        Duration::from_millis(self.orders_sweep_interval_ms.max(1))
    }
}

pub fn load() -> topics::Result<Settings> {
    topics::settings::load("commerce")
}
