//! `/customers`: list (paged), read, create and replace customers.

use std::collections::HashMap;

use axum::extract::{Path, Query, State};
use axum::http::{header, StatusCode};
use axum::response::IntoResponse;
use axum::Json;
use serde::Serialize;
use sqlx::PgPool;

use super::{customer_id, ApiJson};
use crate::domain::{Customer, CustomerBody};
use crate::error::ApiError;
use crate::store;

pub const DEFAULT_PAGE_SIZE: u32 = 50;
pub const MAX_PAGE_SIZE: u32 = 500;

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Page {
    items: Vec<Customer>,
    page: u32,
    page_size: u32,
    total: i64,
}

/// `GET /customers?page=1&pageSize=50`, pages counted from 1.
pub async fn list(
    State(pool): State<PgPool>,
    Query(params): Query<HashMap<String, String>>,
) -> Result<Json<Page>, ApiError> {
    let page = number_param(&params, "page", 1, u32::MAX)?;
    let page_size = number_param(&params, "pageSize", DEFAULT_PAGE_SIZE, MAX_PAGE_SIZE)?;
    let (items, total) = store::list(&pool, page, page_size).await?;
    Ok(Json(Page {
        items,
        page,
        page_size,
        total,
    }))
}

/// A query parameter between 1 and `max`, `default` when absent.
fn number_param(
    params: &HashMap<String, String>,
    name: &str,
    default: u32,
    max: u32,
) -> Result<u32, ApiError> {
    let Some(text) = params.get(name) else {
        return Ok(default);
    };
    text.trim()
        .parse::<u32>()
        .ok()
        .filter(|n| (1..=max).contains(n))
        .ok_or_else(|| {
            ApiError::BadRequest(format!(
                "{name} must be a number from 1 to {max}, not {text:?}"
            ))
        })
}

pub async fn get(
    State(pool): State<PgPool>,
    Path(id): Path<String>,
) -> Result<Json<Customer>, ApiError> {
    let id = customer_id(&id)?;
    find(&pool, id).await.map(Json)
}

pub(super) async fn find(pool: &PgPool, id: i64) -> Result<Customer, ApiError> {
    store::get(pool, id)
        .await?
        .ok_or_else(|| ApiError::NotFound(format!("no customer with id {id}")))
}

/// `POST /customers`: the server assigns the id.
pub async fn create(
    State(pool): State<PgPool>,
    ApiJson(body): ApiJson<CustomerBody>,
) -> Result<impl IntoResponse, ApiError> {
    let details = body.validate().map_err(ApiError::BadRequest)?;
    let customer = store::create(&pool, details).await?;
    tracing::info!(id = customer.id, "customer created");
    let location = format!("/customers/{}", customer.id);
    Ok((
        StatusCode::CREATED,
        [(header::LOCATION, location)],
        Json(customer),
    ))
}

/// `PUT /customers/{id}`: replaces every field, with the same body as POST.
pub async fn replace(
    State(pool): State<PgPool>,
    Path(id): Path<String>,
    ApiJson(body): ApiJson<CustomerBody>,
) -> Result<Json<Customer>, ApiError> {
    let id = customer_id(&id)?;
    let details = body.validate().map_err(ApiError::BadRequest)?;
    let customer = store::replace(&pool, id, details)
        .await?
        .ok_or_else(|| ApiError::NotFound(format!("no customer with id {id}")))?;
    tracing::info!(id, "customer replaced");
    Ok(Json(customer))
}
