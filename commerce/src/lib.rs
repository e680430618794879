//! The commerce domain: four services, each its own process with its own PostgreSQL database,
//! whose changes the rest of the platform observes through Kafka (domain events from a
//! transactional outbox, and the connector's change topics) without calling them.
//!
//! - [`products`]: the catalogue and its stock; reservations that never oversell.
//! - [`customers`]: customers and their tier.
//! - [`orders`]: orders, placed by reserving stock at the products service (concurrent
//!   placements in one batch) and then recorded, and their status life cycle; the sweeper
//!   that gives up orders whose placement stopped in between and releases what they held.
//! - [`reviews`]: product reviews.
//! - [`users`]: customers, admins and delivery agents (soft delete), and the state query over
//!   their read model.
//! - [`delivery`]: shipped orders become packages, assigned to free delivery agents.
//! - [`inbox`]: following another service's events (users and delivery follow each other).
//! - [`http`]: the glue every service shares: JSON bodies, errors as JSON, path ids.
//! - [`events`]: writing domain events to a service's outbox inside its transaction.
//! - [`seed`]: the shipped seed data, loaded once into each empty database.
//! - [`startup`]: building and running one service.
//! - [`watch`]: `commerce watch`, printing a domain event once it is on its topic.
//! - [`configuration`], [`telemetry`]: settings (defaults → `COMMERCE_CONFIG` → env), tracing.
//!
//! How an order crosses the orders and products databases is described in `README.md`.

pub mod configuration;
pub mod customers;
pub mod delivery;
pub mod events;
pub mod http;
pub mod inbox;
pub mod orders;
pub mod products;
pub mod reviews;
pub mod seed;
pub mod startup;
pub mod telemetry;
pub mod users;
pub mod watch;

/// One of the four services.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, clap::ValueEnum)]
pub enum Service {
    Products,
    Customers,
    Orders,
    Reviews,
    Users,
    Delivery,
}

impl Service {
    pub fn name(self) -> &'static str {
        match self {
            Service::Products => "products",
            Service::Customers => "customers",
            Service::Orders => "orders",
            Service::Reviews => "reviews",
            Service::Users => "users",
            Service::Delivery => "delivery",
        }
    }
}
