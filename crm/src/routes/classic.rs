//! The classic service's lookup, `GET /?customerId=N`, kept so its clients work unchanged.

use std::collections::HashMap;

use axum::extract::{Query, State};
use axum::Json;
use sqlx::PgPool;

use super::customer_id;
use super::customers::find;
use crate::domain::Customer;
use crate::error::ApiError;

pub async fn customer_by_query(
    State(pool): State<PgPool>,
    Query(params): Query<HashMap<String, String>>,
) -> Result<Json<Customer>, ApiError> {
    let text = params
        .get("customerId")
        .ok_or_else(|| ApiError::BadRequest("query parameter customerId is missing".to_owned()))?;
    find(&pool, customer_id(text)?).await.map(Json)
}
