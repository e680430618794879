//! `/products` (list, read, create, replace) and `/reservations` (reserve for an order,
//! release, read, list the unsettled and settle them), the API the orders service calls.

use axum::extract::rejection::QueryRejection;
use axum::extract::{Path, Query, State};
use axum::http::{header, StatusCode};
use axum::response::IntoResponse;
use axum::Json;
use serde_json::json;
use sqlx::PgPool;
use uuid::Uuid;

use super::domain::{
    BatchAnswer, BatchBody, BatchResult, Product, ProductBody, ReservationBody, SettledBody,
    Unsettled, MAX_BATCH,
};
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

/// Most reservations `GET /reservations/unsettled` lists at once.
pub const MAX_UNSETTLED: i64 = 5_000;

#[derive(Debug, serde::Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct UnsettledQuery {
    older_than_ms: u64,
    #[serde(default = "default_unsettled_limit")]
    limit: i64,
}

fn default_unsettled_limit() -> i64 {
    1_000
}

/// `GET /reservations/unsettled?olderThanMs=30000&limit=1000`: held reservations held for
/// longer than `olderThanMs` whose order the orders service has not confirmed, oldest first.
pub async fn unsettled(
    State(pool): State<PgPool>,
    query: Result<Query<UnsettledQuery>, QueryRejection>,
) -> Result<Json<Vec<Unsettled>>, ApiError> {
    let Query(query) = query.map_err(|e| ApiError::BadRequest(e.body_text()))?;
    if !(1..=MAX_UNSETTLED).contains(&query.limit) {
        return Err(ApiError::BadRequest(format!(
            "limit must be from 1 to {MAX_UNSETTLED}, not {}",
            query.limit
        )));
    }
    let older_than = std::time::Duration::from_millis(query.older_than_ms);
    Ok(Json(
        store::unsettled(&pool, older_than, query.limit).await?,
    ))
}

/// `POST /reservations/settled` with `{"orderIds": [...]}`: these orders exist, so their
/// reservations are theirs; answers how many reservations it marked.
pub async fn settled(
    State(pool): State<PgPool>,
    ApiJson(body): ApiJson<SettledBody>,
) -> Result<Json<serde_json::Value>, ApiError> {
    if body.order_ids.len() > MAX_UNSETTLED as usize {
        return Err(ApiError::BadRequest(format!(
            "at most {MAX_UNSETTLED} orderIds at once, not {}",
            body.order_ids.len()
        )));
    }
    let settled = store::settle(&pool, &body.order_ids).await?;
    Ok(Json(json!({ "settled": settled })))
}

/// `POST /reservations/batch`: many orders' reservations in one call (the orders service
/// sends what its concurrent placements have queued), answered per entry as
/// `POST /reservations` would. Most take their stock in one statement; the rest are asked
/// one by one ([`store::reserve_batch`]). A bad entry is a 400 for the whole batch.
pub async fn reserve_batch(
    State(pool): State<PgPool>,
    ApiJson(body): ApiJson<BatchBody>,
) -> Result<Json<BatchAnswer>, ApiError> {
    if body.reservations.len() > MAX_BATCH {
        return Err(ApiError::BadRequest(format!(
            "at most {MAX_BATCH} reservations at once, not {}",
            body.reservations.len()
        )));
    }
    let mut requests = Vec::with_capacity(body.reservations.len());
    for (i, entry) in body.reservations.into_iter().enumerate() {
        let request = ReservationBody {
            order_id: entry.order_id,
            customer_id: entry.customer_id,
            product_id: entry.product_id,
            quantity: entry.quantity,
        }
        .validate()
        .map_err(|e| ApiError::BadRequest(format!("reservations[{i}]: {e}")))?;
        requests.push((request, entry.traceparent, entry.tracestate));
    }
    let taken = store::reserve_batch(&pool, &requests).await?;
    let mut results = Vec::with_capacity(requests.len());
    for ((request, _, _), stock_after) in requests.iter().zip(taken) {
        let (status, error) = match stock_after {
            Some(_) => (StatusCode::CREATED, None),
            None => match store::reserve(&pool, *request).await {
                Ok(Reserved::New(..)) => (StatusCode::CREATED, None),
                Ok(Reserved::Existing(_)) => (StatusCode::OK, None),
                Err(ApiError::Conflict(message)) => (StatusCode::CONFLICT, Some(message)),
                Err(ApiError::NotFound(message)) => (StatusCode::NOT_FOUND, Some(message)),
                // This entry's outcome is unknown to its placement (as a single call's 503
                // would be); the entries reserved before it keep their answers.
                Err(e) => {
                    tracing::warn!(order_id = %request.order_id, error = %e, "batch entry failed");
                    (StatusCode::SERVICE_UNAVAILABLE, Some(e.to_string()))
                }
            },
        };
        results.push(BatchResult {
            order_id: request.order_id,
            status: status.as_u16(),
            error,
        });
    }
    Ok(Json(BatchAnswer { results }))
}
