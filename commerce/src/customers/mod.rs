//! The customers service (default port 3011), in database `commerce_customers`.
//!
//! - [`domain`]: customers, tiers, emails and their validation.
//! - this module: the queries and the HTTP handlers (`/customers`).

pub mod domain;

use axum::extract::{Path, State};
use axum::http::{header, StatusCode};
use axum::response::IntoResponse;
use axum::routing::get;
use axum::{Json, Router};
use sqlx::migrate::Migrator;
use sqlx::PgPool;

use domain::{Customer, CustomerBody, CustomerDetails, Email};

use crate::http::{numeric_id, ApiError, ApiJson};

pub static MIGRATOR: Migrator = sqlx::migrate!("./src/customers/migrations");

pub fn router(pool: PgPool) -> Router {
    Router::new()
        .route("/customers", get(list).post(create))
        .route("/customers/{id}", get(read).put(replace))
        .with_state(pool)
}

type Row = (i64, String, String, String);

fn customer((id, name, email, tier): Row) -> Result<Customer, sqlx::Error> {
    Ok(Customer {
        id,
        name,
        email: Email::parse(&email).map_err(|e| sqlx::Error::Decode(e.into()))?,
        tier: tier
            .parse()
            .map_err(|e: String| sqlx::Error::Decode(e.into()))?,
    })
}

fn no_customer(id: i64) -> ApiError {
    ApiError::NotFound(format!("no customer with id {id}"))
}

async fn list(State(pool): State<PgPool>) -> Result<Json<Vec<Customer>>, ApiError> {
    let rows: Vec<Row> = sqlx::query_as("SELECT id, name, email, tier FROM customers ORDER BY id")
        .fetch_all(&pool)
        .await?;
    Ok(Json(
        rows.into_iter().map(customer).collect::<Result<_, _>>()?,
    ))
}

async fn read(
    State(pool): State<PgPool>,
    Path(id): Path<String>,
) -> Result<Json<Customer>, ApiError> {
    let id = numeric_id("customer", &id)?;
    let row: Option<Row> =
        sqlx::query_as("SELECT id, name, email, tier FROM customers WHERE id = $1")
            .bind(id)
            .fetch_optional(&pool)
            .await?;
    Ok(Json(customer(row.ok_or_else(|| no_customer(id))?)?))
}

/// Inserts a customer; used by the API and the seed.
pub async fn insert(
    executor: impl sqlx::PgExecutor<'_>,
    id: Option<i64>,
    details: &CustomerDetails,
) -> Result<Customer, sqlx::Error> {
    let row: Row = sqlx::query_as(
        "INSERT INTO customers (id, name, email, tier)
         VALUES (COALESCE($1, nextval('customers_id_seq')), $2, $3, $4)
         RETURNING id, name, email, tier",
    )
    .bind(id)
    .bind(&details.name)
    .bind(details.email.as_str())
    .bind(details.tier.as_str())
    .fetch_one(executor)
    .await?;
    customer(row)
}

async fn create(
    State(pool): State<PgPool>,
    ApiJson(body): ApiJson<CustomerBody>,
) -> Result<impl IntoResponse, ApiError> {
    let details = body.validate().map_err(ApiError::BadRequest)?;
    let created = insert(&pool, None, &details).await?;
    let location = format!("/customers/{}", created.id);
    Ok((
        StatusCode::CREATED,
        [(header::LOCATION, location)],
        Json(created),
    ))
}

async fn replace(
    State(pool): State<PgPool>,
    Path(id): Path<String>,
    ApiJson(body): ApiJson<CustomerBody>,
) -> Result<Json<Customer>, ApiError> {
    let id = numeric_id("customer", &id)?;
    let details = body.validate().map_err(ApiError::BadRequest)?;
    let row: Option<Row> = sqlx::query_as(
        "UPDATE customers SET name = $2, email = $3, tier = $4, updated_at = now()
         WHERE id = $1 RETURNING id, name, email, tier",
    )
    .bind(id)
    .bind(&details.name)
    .bind(details.email.as_str())
    .bind(details.tier.as_str())
    .fetch_optional(&pool)
    .await?;
    Ok(Json(customer(row.ok_or_else(|| no_customer(id))?)?))
}
