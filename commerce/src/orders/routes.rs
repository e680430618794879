//! `/orders`: list, read, place, and change an order's status.

use axum::extract::{Path, State};
use axum::http::{header, HeaderMap};
use axum::response::IntoResponse;
use axum::Json;
use uuid::Uuid;

use super::domain::{Order, OrderBody, OrderStatus, StatusBody, MAX_IDEMPOTENCY_KEY_LEN};
use super::placement::Orders;
use super::store::{self, no_order};
use crate::http::{bounded_text, ApiError, ApiJson};

pub const IDEMPOTENCY_KEY: &str = "idempotency-key";

pub async fn list(State(orders): State<Orders>) -> Result<Json<Vec<Order>>, ApiError> {
    Ok(Json(store::list(&orders.pool).await?))
}

pub async fn get(
    State(orders): State<Orders>,
    Path(id): Path<String>,
) -> Result<Json<Order>, ApiError> {
    let id = order_id(&id)?;
    store::get(&orders.pool, id)
        .await?
        .map(Json)
        .ok_or_else(|| no_order(id))
}

/// `POST /orders`, optionally with an `Idempotency-Key` header: a retry with the same key
/// gets the same order instead of a second one.
pub async fn place(
    State(orders): State<Orders>,
    headers: HeaderMap,
    ApiJson(body): ApiJson<OrderBody>,
) -> Result<impl IntoResponse, ApiError> {
    let new = body.validate().map_err(ApiError::BadRequest)?;
    let key = match headers.get(IDEMPOTENCY_KEY) {
        None => None,
        Some(value) => {
            let text = value
                .to_str()
                .map_err(|_| ApiError::BadRequest("Idempotency-Key must be ASCII".to_owned()))?;
            Some(
                bounded_text("Idempotency-Key", text, MAX_IDEMPOTENCY_KEY_LEN)
                    .map_err(ApiError::BadRequest)?,
            )
        }
    };
    let (status, order) = orders.place(key.as_deref(), new).await?;
    let location = format!("/orders/{}", order.id);
    Ok((status, [(header::LOCATION, location)], Json(order)))
}

/// `PUT /orders/{id}/status` with `{"status": "Shipped"}`: 409 for a transition the life
/// cycle does not allow.
pub async fn change_status(
    State(orders): State<Orders>,
    Path(id): Path<String>,
    ApiJson(body): ApiJson<StatusBody>,
) -> Result<Json<Order>, ApiError> {
    let id = order_id(&id)?;
    let next: OrderStatus = body.status.parse().map_err(ApiError::BadRequest)?;
    if matches!(next, OrderStatus::Pending | OrderStatus::Failed) {
        return Err(ApiError::BadRequest(format!(
            "status must be one of Processing, Shipped, Delivered, Cancelled, not {next}"
        )));
    }
    let order = orders.change_status(id, next).await?;
    tracing::info!(%id, status = %order.status, "order status changed");
    Ok(Json(order))
}

fn order_id(text: &str) -> Result<Uuid, ApiError> {
    text.trim()
        .parse()
        .map_err(|_| ApiError::BadRequest(format!("order id must be a UUID, not {text:?}")))
}
