//! The orders service (default port 3012), in database `commerce_orders`. It reserves stock
//! at the products service for every order and never reads the products database.
//!
//! - [`domain`]: orders, statuses and the allowed transitions.
//! - [`store`]: the queries; status changes written with their order events.
//! - [`placement`]: the cross-database placement and the sweeper.
//! - [`products_client`]: the products service's reservation API.
//! - [`routes`]: the HTTP handlers.

pub mod domain;
pub mod placement;
pub mod products_client;
pub mod routes;
pub mod store;

use axum::routing::{get, put};
use axum::Router;
use sqlx::migrate::Migrator;

use placement::Orders;

pub static MIGRATOR: Migrator = sqlx::migrate!("./src/orders/migrations");

pub fn router(orders: Orders) -> Router {
    Router::new()
        .route("/orders", get(routes::list).post(routes::place))
        .route("/orders/{id}", get(routes::get))
        .route("/orders/{id}/status", put(routes::change_status))
        .with_state(orders)
}
