//! `/products` (list, read, create, replace) and `/reservations` (reserve for an order,
//! release, read), the API the orders service calls.

use axum::extract::{Path, State};
use axum::http::{header, StatusCode};
use axum::response::IntoResponse;
use axum::Json;
use serde_json::json;
use sqlx::PgPool;
use uuid::Uuid;

use super::domain::{Product, ProductBody, ReservationBody};
use super::store::{self, no_product, Reserved};
use crate::http::{numeric_id, ApiError, ApiJson};

pub async fn list(State(pool): State<PgPool>) -> Result<Json<Vec<Product>>, ApiError> {
    Ok(Json(store::list(&pool).await?))
}

pub async fn get(
    State(pool): State<PgPool>,
    Path(id): Path<String>,
) -> Result<Json<Product>, ApiError> {
    let id = numeric_id("product", &id)?;
    store::get(&pool, id)
        .await?
        .map(Json)
        .ok_or_else(|| no_product(id))
}

pub async fn create(
    State(pool): State<PgPool>,
    ApiJson(body): ApiJson<ProductBody>,
) -> Result<impl IntoResponse, ApiError> {
    let details = body.validate().map_err(ApiError::BadRequest)?;
    let product = store::create(&pool, details).await?;
    tracing::info!(id = product.id, "product created");
    let location = format!("/products/{}", product.id);
    Ok((
        StatusCode::CREATED,
        [(header::LOCATION, location)],
        Json(product),
    ))
}

pub async fn replace(
    State(pool): State<PgPool>,
    Path(id): Path<String>,
    ApiJson(body): ApiJson<ProductBody>,
) -> Result<Json<Product>, ApiError> {
    let id = numeric_id("product", &id)?;
    let details = body.validate().map_err(ApiError::BadRequest)?;
    store::replace(&pool, id, details)
        .await?
        .map(Json)
        .ok_or_else(|| no_product(id))
}

/// `POST /reservations`: 201 when stock was taken now, 200 when the order already held it,
/// 409 when the stock is short or the order's reservation was released, 404 for an unknown
/// product.
pub async fn reserve(
    State(pool): State<PgPool>,
    ApiJson(body): ApiJson<ReservationBody>,
) -> Result<impl IntoResponse, ApiError> {
    let request = body.validate().map_err(ApiError::BadRequest)?;
    Ok(match store::reserve(&pool, request).await? {
        Reserved::New(reservation, stock_after) => (
            StatusCode::CREATED,
            Json(json!({ "reservation": reservation, "stockAfter": stock_after })),
        ),
        Reserved::Existing(reservation) => {
            (StatusCode::OK, Json(json!({ "reservation": reservation })))
        }
    })
}

/// `POST /reservations/{orderId}/release`: always 200 once the order holds nothing.
pub async fn release(
    State(pool): State<PgPool>,
    Path(order_id): Path<String>,
) -> Result<Json<serde_json::Value>, ApiError> {
    let order_id = order_id_param(&order_id)?;
    let released = store::release(&pool, order_id).await?;
    if released {
        tracing::info!(%order_id, "reservation released");
    }
    Ok(Json(json!({ "orderId": order_id, "released": released })))
}

pub async fn reservation(
    State(pool): State<PgPool>,
    Path(order_id): Path<String>,
) -> Result<Json<serde_json::Value>, ApiError> {
    let order_id = order_id_param(&order_id)?;
    let reservation = store::reservation(&pool, order_id)
        .await?
        .ok_or_else(|| ApiError::NotFound(format!("no reservation for order {order_id}")))?;
    Ok(Json(json!(reservation)))
}

pub fn order_id_param(text: &str) -> Result<Uuid, ApiError> {
    text.trim()
        .parse()
        .map_err(|_| ApiError::BadRequest(format!("order id must be a UUID, not {text:?}")))
}
