//! The products service (default port 3010): the catalogue and its stock, in database
//! `commerce_products`.
//!
//! - [`domain`]: products, prices, reservation requests and their validation.
//! - [`store`]: the queries; reservations take stock with one conditional UPDATE under
//!   `CHECK (stock >= 0)`, at most once per order id.
//! - [`routes`]: the HTTP handlers.
//! - [`restock`]: `POST /products/{id}/restock`, stock added once per restock id.

pub mod domain;
pub mod restock;
pub mod routes;
pub mod store;

use axum::routing::{get, post};
use axum::Router;
use sqlx::migrate::Migrator;
use sqlx::PgPool;

pub static MIGRATOR: Migrator = sqlx::migrate!("./src/products/migrations");

pub fn router(pool: PgPool) -> Router {
    Router::new()
        .route("/products", get(routes::list).post(routes::create))
        .route("/products/{id}", get(routes::get).put(routes::replace))
        .route("/products/{id}/restock", post(restock::restock))
        .route("/reservations", post(routes::reserve))
        .route("/reservations/batch", post(routes::reserve_batch))
        .route("/reservations/unsettled", get(routes::unsettled))
        .route("/reservations/settled", post(routes::settled))
        .route("/reservations/{order_id}", get(routes::reservation))
        .route("/reservations/{order_id}/release", post(routes::release))
        .with_state(pool)
}
