//! `POST /products/{id}/restock`: stock added from outside (the order flow's restock timer),
//! once per restock id, with an ADJUSTED stock event in the same transaction.

use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::response::IntoResponse;
use axum::Json;
use serde_json::json;
use sqlx::PgPool;
use topics::commerce::{StockEvent, StockEventKind};
use uuid::Uuid;

use super::domain::MAX_QUANTITY;
use super::store::no_product;
use crate::events::{record, PRODUCTS_OUTBOX};
use crate::http::{numeric_id, ApiError, ApiJson};

/// `POST /products/{id}/restock` with `{"restockId", "quantity"}`: 201 when the stock was
/// added now, 200 when this restock id was applied before, 404 for an unknown product.
pub async fn restock(
    State(pool): State<PgPool>,
    Path(id): Path<String>,
    ApiJson(body): ApiJson<RestockBody>,
) -> Result<impl IntoResponse, ApiError> {
    let id = numeric_id("product", &id)?;
    if !(1..=MAX_QUANTITY).contains(&body.quantity) {
        return Err(ApiError::BadRequest(format!(
            "quantity must be from 1 to {}, not {}",
            MAX_QUANTITY, body.quantity
        )));
    }
    let (stock_after, added) = add_stock(&pool, id, body.restock_id, body.quantity as i32)
        .await?
        .ok_or_else(|| no_product(id))?;
    let status = if added {
        tracing::info!(id, quantity = body.quantity, "restocked");
        StatusCode::CREATED
    } else {
        StatusCode::OK
    };
    Ok((
        status,
        Json(json!({ "productId": id, "stockAfter": stock_after })),
    ))
}

/// `POST /products/{id}/restock`.
#[derive(Debug, Clone, serde::Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct RestockBody {
    pub restock_id: Uuid,
    pub quantity: i64,
}

/// Adds `quantity` to a product's stock once per `restock_id` (an ADJUSTED stock event with
/// it). Returns the stock after, and whether this call added it; `None` for an unknown product.
pub async fn add_stock(
    pool: &PgPool,
    product_id: i64,
    restock_id: Uuid,
    quantity: i32,
) -> Result<Option<(i32, bool)>, ApiError> {
    let mut tx = pool.begin().await?;
    let inserted = sqlx::query(
        "INSERT INTO restocks (restock_id, product_id, quantity) VALUES ($1, $2, $3)
         ON CONFLICT (restock_id) DO NOTHING",
    )
    .bind(restock_id)
    .bind(product_id)
    .bind(quantity)
    .execute(&mut *tx)
    .await;
    let inserted = match inserted {
        Ok(done) => done.rows_affected() == 1,
        Err(sqlx::Error::Database(e)) if e.code().as_deref() == Some("23503") => return Ok(None),
        Err(e) => return Err(e.into()),
    };
    if !inserted {
        let stock: Option<i32> = sqlx::query_scalar("SELECT stock FROM products WHERE id = $1")
            .bind(product_id)
            .fetch_optional(&mut *tx)
            .await?;
        tx.rollback().await?;
        return Ok(stock.map(|s| (s, false)));
    }
    let stock_after: i32 = sqlx::query_scalar(
        "UPDATE products SET stock = stock + $2, updated_at = now() WHERE id = $1 RETURNING stock",
    )
    .bind(product_id)
    .bind(quantity)
    .fetch_one(&mut *tx)
    .await?;
    let event = StockEvent {
        event_id: Uuid::new_v4(),
        kind: StockEventKind::Adjusted,
        product_id,
        key: String::new(),
        order_id: None,
        quantity_change: quantity,
        stock_after,
        occurred_at: chrono::Utc::now().timestamp_millis(),
    }
    .with_key();
    record(&PRODUCTS_OUTBOX, &mut tx, &[event]).await?;
    tx.commit().await?;
    Ok(Some((stock_after, true)))
}
