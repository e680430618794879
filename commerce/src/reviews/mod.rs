//! The reviews service (default port 3013), in database `commerce_reviews`: `/reviews` and
//! `/reviews/product/{id}`. Product and customer ids are taken as given: checking them would
//! mean calling the services that own them.

use axum::extract::{Path, State};
use axum::http::{header, StatusCode};
use axum::response::IntoResponse;
use axum::routing::get;
use axum::{Json, Router};
use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use sqlx::migrate::Migrator;
use sqlx::PgPool;

use crate::http::{numeric_id, ApiError, ApiJson};

pub static MIGRATOR: Migrator = sqlx::migrate!("./src/reviews/migrations");

pub const MAX_TEXT_LEN: usize = 5_000;

pub fn router(pool: PgPool) -> Router {
    Router::new()
        .route("/reviews", get(list).post(create))
        .route("/reviews/product/{id}", get(for_product))
        .with_state(pool)
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, sqlx::FromRow)]
#[serde(rename_all = "camelCase")]
pub struct Review {
    pub id: i64,
    pub product_id: i64,
    pub customer_id: i64,
    pub rating: i16,
    pub text: String,
    pub created_at: DateTime<Utc>,
}

/// A rating from 1 to 5 stars.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Rating(i16);

impl Rating {
    pub fn new(value: i64) -> Result<Self, String> {
        if (1..=5).contains(&value) {
            Ok(Rating(value as i16))
        } else {
            Err(format!("rating must be from 1 to 5, not {value}"))
        }
    }

    pub fn value(self) -> i16 {
        self.0
    }
}

#[derive(Debug, Clone, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct ReviewBody {
    pub product_id: i64,
    pub customer_id: i64,
    pub rating: i64,
    #[serde(default)]
    pub text: String,
}

/// A validated review.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NewReview {
    pub product_id: i64,
    pub customer_id: i64,
    pub rating: Rating,
    pub text: String,
}

impl ReviewBody {
    pub fn validate(self) -> Result<NewReview, String> {
        if self.product_id <= 0 {
            return Err(format!(
                "productId must be positive, not {}",
                self.product_id
            ));
        }
        if self.customer_id <= 0 {
            return Err(format!(
                "customerId must be positive, not {}",
                self.customer_id
            ));
        }
        let text = self.text.trim().to_owned();
        if text.chars().count() > MAX_TEXT_LEN {
            return Err(format!("text must be at most {MAX_TEXT_LEN} characters"));
        }
        Ok(NewReview {
            product_id: self.product_id,
            customer_id: self.customer_id,
            rating: Rating::new(self.rating)?,
            text,
        })
    }
}

const COLUMNS: &str = "id, product_id, customer_id, rating, text, created_at";

async fn list(State(pool): State<PgPool>) -> Result<Json<Vec<Review>>, ApiError> {
    Ok(Json(
        sqlx::query_as(&format!("SELECT {COLUMNS} FROM reviews ORDER BY id"))
            .fetch_all(&pool)
            .await?,
    ))
}

async fn for_product(
    State(pool): State<PgPool>,
    Path(id): Path<String>,
) -> Result<Json<Vec<Review>>, ApiError> {
    let id = numeric_id("product", &id)?;
    Ok(Json(
        sqlx::query_as(&format!(
            "SELECT {COLUMNS} FROM reviews WHERE product_id = $1 ORDER BY id"
        ))
        .bind(id)
        .fetch_all(&pool)
        .await?,
    ))
}

/// Inserts a review; used by the API and the seed.
pub async fn insert(
    executor: impl sqlx::PgExecutor<'_>,
    review: &NewReview,
) -> Result<Review, sqlx::Error> {
    sqlx::query_as(&format!(
        "INSERT INTO reviews (product_id, customer_id, rating, text) VALUES ($1, $2, $3, $4)
         RETURNING {COLUMNS}"
    ))
    .bind(review.product_id)
    .bind(review.customer_id)
    .bind(review.rating.value())
    .bind(&review.text)
    .fetch_one(executor)
    .await
}

async fn create(
    State(pool): State<PgPool>,
    ApiJson(body): ApiJson<ReviewBody>,
) -> Result<impl IntoResponse, ApiError> {
    let review = body.validate().map_err(ApiError::BadRequest)?;
    let created = insert(&pool, &review).await?;
    let location = format!("/reviews/{}", created.id);
    Ok((
        StatusCode::CREATED,
        [(header::LOCATION, location)],
        Json(created),
    ))
}
