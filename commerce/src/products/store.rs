//! The products database: the catalogue, and reservations that take stock with one
//! conditional UPDATE, each change written with its stock event in one transaction.

use sqlx::{PgPool, Postgres, Row, Transaction};
use topics::commerce::{StockEvent, StockEventKind};
use uuid::Uuid;

use super::domain::{
    Price, Product, ProductDetails, Reservation, ReservationRequest, ReservationStatus,
};
use crate::events::{record, PRODUCTS_OUTBOX};
use crate::http::ApiError;

const COLUMNS: &str = "id, name, description, price::text AS price, stock";

fn product(row: &sqlx::postgres::PgRow) -> Result<Product, sqlx::Error> {
    let price: String = row.try_get("price")?;
    Ok(Product {
        id: row.try_get("id")?,
        details: ProductDetails {
            name: row.try_get("name")?,
            description: row.try_get("description")?,
            price: Price::parse(&price).map_err(|e| sqlx::Error::Decode(e.into()))?,
            stock: row.try_get("stock")?,
        },
    })
}

pub async fn list(pool: &PgPool) -> Result<Vec<Product>, sqlx::Error> {
    sqlx::query(&format!("SELECT {COLUMNS} FROM products ORDER BY id"))
        .fetch_all(pool)
        .await?
        .iter()
        .map(product)
        .collect()
}

pub async fn get(pool: &PgPool, id: i64) -> Result<Option<Product>, sqlx::Error> {
    sqlx::query(&format!("SELECT {COLUMNS} FROM products WHERE id = $1"))
        .bind(id)
        .fetch_optional(pool)
        .await?
        .as_ref()
        .map(product)
        .transpose()
}

fn stock_event(
    kind: StockEventKind,
    product_id: i64,
    order_id: Option<Uuid>,
    quantity_change: i32,
    stock_after: i32,
) -> StockEvent {
    StockEvent {
        event_id: Uuid::new_v4(),
        kind,
        product_id,
        key: String::new(),
        order_id,
        quantity_change,
        stock_after,
        occurred_at: chrono::Utc::now().timestamp_millis(),
    }
    .with_key()
}

/// Creates a product; its initial stock is an adjustment from nothing.
pub async fn create(pool: &PgPool, details: ProductDetails) -> Result<Product, ApiError> {
    let mut tx = pool.begin().await?;
    let row = sqlx::query(&format!(
        "INSERT INTO products (name, description, price, stock) VALUES ($1, $2, $3::numeric, $4)
         RETURNING {COLUMNS}"
    ))
    .bind(&details.name)
    .bind(&details.description)
    .bind(details.price.to_string())
    .bind(details.stock)
    .fetch_one(&mut *tx)
    .await?;
    let created = product(&row)?;
    let event = stock_event(
        StockEventKind::Adjusted,
        created.id,
        None,
        created.details.stock,
        created.details.stock,
    );
    record(&PRODUCTS_OUTBOX, &mut tx, &[event]).await?;
    tx.commit().await?;
    Ok(created)
}

/// Replaces every field; a changed stock is an adjustment, published with its difference.
/// Stock held by reservations is not part of `stock` and is not touched.
pub async fn replace(
    pool: &PgPool,
    id: i64,
    details: ProductDetails,
) -> Result<Option<Product>, ApiError> {
    let mut tx = pool.begin().await?;
    let before: Option<i32> =
        sqlx::query_scalar("SELECT stock FROM products WHERE id = $1 FOR UPDATE")
            .bind(id)
            .fetch_optional(&mut *tx)
            .await?;
    let Some(before) = before else {
        return Ok(None);
    };
    let row = sqlx::query(&format!(
        "UPDATE products SET name = $2, description = $3, price = $4::numeric, stock = $5,
                updated_at = now()
         WHERE id = $1 RETURNING {COLUMNS}"
    ))
    .bind(id)
    .bind(&details.name)
    .bind(&details.description)
    .bind(details.price.to_string())
    .bind(details.stock)
    .fetch_one(&mut *tx)
    .await?;
    let replaced = product(&row)?;
    if replaced.details.stock != before {
        let event = stock_event(
            StockEventKind::Adjusted,
            id,
            None,
            replaced.details.stock - before,
            replaced.details.stock,
        );
        record(&PRODUCTS_OUTBOX, &mut tx, &[event]).await?;
    }
    tx.commit().await?;
    Ok(Some(replaced))
}

/// What a reservation request came to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Reserved {
    /// Stock was taken now.
    New(Reservation, i32),
    /// The order already holds this reservation (a retry): nothing more was taken.
    Existing(Reservation),
}

/// Reserves stock for an order, at most once per order id.
///
/// The reservation row is inserted first (`ON CONFLICT DO NOTHING`: a concurrent request for
/// the same order waits on the primary key and then finds it), then stock is taken with
/// `stock = stock - q WHERE stock >= q`. When no row was updated the transaction rolls back,
/// so a refused reservation leaves nothing behind.
pub async fn reserve(pool: &PgPool, request: ReservationRequest) -> Result<Reserved, ApiError> {
    let mut tx = pool.begin().await?;
    let inserted = sqlx::query(
        "INSERT INTO reservations (order_id, product_id, quantity, status)
         VALUES ($1, $2, $3, 'held') ON CONFLICT (order_id) DO NOTHING",
    )
    .bind(request.order_id)
    .bind(request.product_id)
    .bind(request.quantity)
    .execute(&mut *tx)
    .await;
    let inserted = match inserted {
        Ok(done) => done.rows_affected() == 1,
        Err(sqlx::Error::Database(e)) if e.code().as_deref() == Some("23503") => {
            return Err(no_product(request.product_id));
        }
        Err(e) => return Err(e.into()),
    };
    if !inserted {
        let existing = find_reservation(&mut tx, request.order_id)
            .await?
            .ok_or_else(|| ApiError::Conflict("reservation vanished; retry".to_owned()))?;
        tx.rollback().await?;
        return match existing.status {
            ReservationStatus::Released => Err(ApiError::Conflict(format!(
                "the reservation of order {} was released; place a new order",
                request.order_id
            ))),
            ReservationStatus::Held
                if existing.product_id == Some(request.product_id)
                    && existing.quantity == request.quantity =>
            {
                Ok(Reserved::Existing(existing))
            }
            ReservationStatus::Held => Err(ApiError::Conflict(format!(
                "order {} already holds a different reservation",
                request.order_id
            ))),
        };
    }
    let stock_after: Option<i32> = sqlx::query_scalar(
        "UPDATE products SET stock = stock - $2, updated_at = now()
         WHERE id = $1 AND stock >= $2 RETURNING stock",
    )
    .bind(request.product_id)
    .bind(request.quantity)
    .fetch_optional(&mut *tx)
    .await?;
    let Some(stock_after) = stock_after else {
        // The product exists (the foreign key checked it), so the stock was short.
        tx.rollback().await?;
        return Err(ApiError::Conflict(format!(
            "insufficient stock of product {} for {} more",
            request.product_id, request.quantity
        )));
    };
    let event = stock_event(
        StockEventKind::Reserved,
        request.product_id,
        Some(request.order_id),
        -request.quantity,
        stock_after,
    );
    record(&PRODUCTS_OUTBOX, &mut tx, &[event]).await?;
    tx.commit().await?;
    Ok(Reserved::New(
        Reservation {
            order_id: request.order_id,
            product_id: Some(request.product_id),
            quantity: request.quantity,
            status: ReservationStatus::Held,
        },
        stock_after,
    ))
}

/// Gives an order's reserved stock back, at most once. An order that reserved nothing (yet)
/// gets a released row anyway, so its reservation, should it still arrive, is refused.
/// Returns whether this call gave stock back.
pub async fn release(pool: &PgPool, order_id: Uuid) -> Result<bool, ApiError> {
    let mut tx = pool.begin().await?;
    // Two rounds at most: a reservation being inserted concurrently is invisible to the first
    // UPDATE, makes the INSERT wait and then conflict, and is visible to the second UPDATE
    // (each statement takes a new snapshot under READ COMMITTED).
    for _ in 0..2 {
        let held: Option<(i64, i32)> = sqlx::query_as(
            "UPDATE reservations SET status = 'released', released_at = now()
             WHERE order_id = $1 AND status = 'held' RETURNING product_id, quantity",
        )
        .bind(order_id)
        .fetch_optional(&mut *tx)
        .await?;
        if let Some((product_id, quantity)) = held {
            let stock_after: i32 = sqlx::query_scalar(
                "UPDATE products SET stock = stock + $2, updated_at = now()
                 WHERE id = $1 RETURNING stock",
            )
            .bind(product_id)
            .bind(quantity)
            .fetch_one(&mut *tx)
            .await?;
            let event = stock_event(
                StockEventKind::Released,
                product_id,
                Some(order_id),
                quantity,
                stock_after,
            );
            record(&PRODUCTS_OUTBOX, &mut tx, &[event]).await?;
            tx.commit().await?;
            return Ok(true);
        }
        let tombstone = sqlx::query(
            "INSERT INTO reservations (order_id, product_id, quantity, status, released_at)
             VALUES ($1, NULL, 0, 'released', now()) ON CONFLICT (order_id) DO NOTHING",
        )
        .bind(order_id)
        .execute(&mut *tx)
        .await?;
        if tombstone.rows_affected() == 1 {
            tx.commit().await?;
            return Ok(false);
        }
        let status: Option<String> =
            sqlx::query_scalar("SELECT status FROM reservations WHERE order_id = $1")
                .bind(order_id)
                .fetch_optional(&mut *tx)
                .await?;
        if status.as_deref() == Some("released") {
            tx.rollback().await?;
            return Ok(false);
        }
    }
    Err(ApiError::Conflict(format!(
        "the reservation of order {order_id} changed while being released; retry"
    )))
}

pub async fn reservation(
    pool: &PgPool,
    order_id: Uuid,
) -> Result<Option<Reservation>, sqlx::Error> {
    let mut conn = pool.acquire().await?;
    fetch_reservation(&mut conn, order_id).await
}

async fn find_reservation(
    tx: &mut Transaction<'_, Postgres>,
    order_id: Uuid,
) -> Result<Option<Reservation>, sqlx::Error> {
    fetch_reservation(tx, order_id).await
}

async fn fetch_reservation(
    conn: &mut sqlx::PgConnection,
    order_id: Uuid,
) -> Result<Option<Reservation>, sqlx::Error> {
    let row: Option<(Uuid, Option<i64>, i32, String)> = sqlx::query_as(
        "SELECT order_id, product_id, quantity, status FROM reservations WHERE order_id = $1",
    )
    .bind(order_id)
    .fetch_optional(conn)
    .await?;
    Ok(
        row.map(|(order_id, product_id, quantity, status)| Reservation {
            order_id,
            product_id,
            quantity,
            status: if status == "held" {
                ReservationStatus::Held
            } else {
                ReservationStatus::Released
            },
        }),
    )
}

pub fn no_product(id: i64) -> ApiError {
    ApiError::NotFound(format!("no product with id {id}"))
}
