//! The products database: the catalogue, and reservations that take stock with one
//! conditional UPDATE, each change written with its stock event in one transaction (a
//! reservation: in one statement).

use std::sync::LazyLock;
use std::time::Duration;

use outbox::NewEvent;
use sqlx::{PgPool, Row};
use topics::commerce::{StockEvent, StockEventKind};
use topics::events::Event;
use uuid::Uuid;

use super::domain::{
    Price, Product, ProductDetails, Reservation, ReservationRequest, ReservationStatus, Unsettled,
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

/// Reserves stock for an order, at most once per order id, in one statement (so the
/// product's row lock is held for that statement and its commit only):
///
/// 1. `existing`: the order's reservation row, if it has one (held, or released before the
///    reservation arrived).
/// 2. `taken`: `UPDATE products SET stock = stock - q WHERE id = $1 AND stock >= q`, only if
///    the order has no row. The row lock serialises concurrent reservations of one product,
///    and each re-checks `stock >= q` on the latest row, so none oversells; `CHECK (stock >=
///    0)` refuses anything that would slip past.
/// 3. `held`: the reservation row, only if stock was taken. A concurrent request for the same
///    order that got past step 1 fails here on the primary key (it waits for the first one's
///    commit), and its whole statement rolls back: the order reserves once.
/// 4. The `RESERVED` stock event into the outbox, with the stock left.
pub async fn reserve(pool: &PgPool, request: ReservationRequest) -> Result<Reserved, ApiError> {
    static RESERVE: LazyLock<String> = LazyLock::new(|| {
        PRODUCTS_OUTBOX.statement(
            "existing AS (
                 SELECT product_id, quantity, status FROM reservations WHERE order_id = $2::uuid
             ),
             taken AS (
                 UPDATE products SET stock = stock - $3::int, updated_at = now()
                 WHERE id = $1::bigint AND stock >= $3::int AND NOT EXISTS (SELECT 1 FROM existing)
                 RETURNING stock
             ),
             held AS (
                 INSERT INTO reservations (order_id, product_id, quantity, status, customer_id)
                 SELECT $2::uuid, $1::bigint, $3::int, 'held', $10::bigint FROM taken
             )",
            "SELECT $4::text AS topic, $5::text AS key, $6::uuid AS event_id,
                    jsonb_set($7::jsonb, '{stock_after}', to_jsonb(stock)) AS payload,
                    $8::text AS traceparent, $9::text AS tracestate
             FROM taken",
            // One row whichever CTE has one; the product is looked up only when neither has.
            "SELECT taken.stock AS stock_after, existing.status AS existing_status,
                    existing.product_id AS existing_product,
                    existing.quantity AS existing_quantity,
                    taken.stock IS NOT NULL OR existing.status IS NOT NULL
                        OR EXISTS (SELECT 1 FROM products WHERE id = $1::bigint)
                        AS product_exists
             FROM (SELECT) AS one LEFT JOIN taken ON true LEFT JOIN existing ON true",
        )
    });
    // `stock_after` is filled in by the statement.
    let event = NewEvent::from_event(&stock_event(
        StockEventKind::Reserved,
        request.product_id,
        Some(request.order_id),
        -request.quantity,
        0,
    ))?;
    let (traceparent, tracestate) = outbox::write::trace_context();
    let row = sqlx::query(&RESERVE)
        .bind(request.product_id)
        .bind(request.order_id)
        .bind(request.quantity)
        .bind(&event.topic)
        .bind(&event.key)
        .bind(event.event_id)
        .bind(&event.payload)
        .bind(traceparent)
        .bind(tracestate)
        .bind(request.customer_id)
        .fetch_one(pool)
        .await;
    let row = match row {
        Ok(row) => row,
        // A concurrent request for the same order reserved first.
        Err(sqlx::Error::Database(e)) if e.code().as_deref() == Some("23505") => {
            let mut conn = pool.acquire().await?;
            let existing = fetch_reservation(&mut conn, request.order_id)
                .await?
                .ok_or_else(|| ApiError::Conflict("reservation vanished; retry".to_owned()))?;
            return existing_reservation(&request, existing);
        }
        Err(e) => return Err(e.into()),
    };
    if let Some(stock_after) = row.try_get::<Option<i32>, _>("stock_after")? {
        return Ok(Reserved::New(
            Reservation {
                order_id: request.order_id,
                product_id: Some(request.product_id),
                quantity: request.quantity,
                status: ReservationStatus::Held,
            },
            stock_after,
        ));
    }
    if let Some(status) = row.try_get::<Option<String>, _>("existing_status")? {
        let existing = Reservation {
            order_id: request.order_id,
            product_id: row.try_get("existing_product")?,
            quantity: row.try_get("existing_quantity")?,
            status: reservation_status(&status),
        };
        return existing_reservation(&request, existing);
    }
    if !row.try_get::<bool, _>("product_exists")? {
        return Err(no_product(request.product_id));
    }
    Err(ApiError::Conflict(format!(
        "insufficient stock of product {} for {} more",
        request.product_id, request.quantity
    )))
}

/// Reserves stock for many orders in one statement, for the common case only: an order with
/// no reservation row, whose quantity fits in what is left of its product after the orders
/// before it in `requests`. Returns, per request, the stock left after it when it reserved
/// here, or `None` when it did not: ask [`reserve`] about those one by one (it gives the exact
/// answer: a retry, a released order, an unknown product, short stock, or stock that a
/// refused order before it did not take after all).
///
/// The products' rows are locked in id order before anything is taken, so concurrent
/// batches cannot deadlock, and each request's stock is checked against the locked, latest
/// row. A conflict with a concurrent reservation of the same order id fails the whole
/// statement (then `None` for all); `CHECK (stock >= 0)` guards as in [`reserve`]. Entries
/// answered by [`reserve`] write their events with the batch request's trace context.
pub async fn reserve_batch(
    pool: &PgPool,
    requests: &[(ReservationRequest, Option<String>, Option<String>)],
) -> Result<Vec<Option<i32>>, ApiError> {
    static RESERVE_BATCH: LazyLock<String> = LazyLock::new(|| {
        PRODUCTS_OUTBOX.statement(
            "request AS (
                 SELECT * FROM unnest($1::uuid[], $2::bigint[], $3::bigint[], $4::int[],
                                      $5::uuid[], $6::jsonb[], $7::text[], $8::text[])
                     WITH ORDINALITY
                     AS r (order_id, customer_id, product_id, quantity, event_id, payload,
                           traceparent, tracestate, seq)
             ),
             fresh AS (
                 SELECT DISTINCT ON (order_id) * FROM request r
                 WHERE NOT EXISTS (SELECT 1 FROM reservations WHERE order_id = r.order_id)
                 ORDER BY order_id, seq
             ),
             locked AS MATERIALIZED (
                 SELECT id, stock FROM products
                 WHERE id IN (SELECT product_id FROM fresh) ORDER BY id FOR UPDATE
             ),
             granted AS MATERIALIZED (
                 SELECT * FROM (
                     SELECT f.*, l.stock - sum(f.quantity) OVER (
                                PARTITION BY f.product_id ORDER BY f.seq) AS stock_after
                     FROM fresh f JOIN locked l ON l.id = f.product_id
                 ) running
                 WHERE stock_after >= 0
             ),
             taken AS (
                 UPDATE products p SET stock = p.stock - g.total, updated_at = now()
                 FROM (SELECT product_id, sum(quantity) AS total FROM granted GROUP BY product_id) g
                 WHERE p.id = g.product_id
             ),
             held AS (
                 INSERT INTO reservations (order_id, product_id, quantity, status, customer_id)
                 SELECT order_id, product_id, quantity, 'held', customer_id FROM granted
             )",
            "SELECT $9::text AS topic, product_id::text AS key, event_id,
                    jsonb_set(payload, '{stock_after}', to_jsonb(stock_after)) AS payload,
                    traceparent, tracestate
             FROM granted ORDER BY seq",
            "SELECT r.seq, g.stock_after::int AS stock_after
             FROM request r LEFT JOIN granted g ON g.seq = r.seq ORDER BY r.seq",
        )
    });
    let mut events = Vec::with_capacity(requests.len());
    for (request, _, _) in requests {
        // `stock_after` is filled in by the statement.
        events.push(NewEvent::from_event(&stock_event(
            StockEventKind::Reserved,
            request.product_id,
            Some(request.order_id),
            -request.quantity,
            0,
        ))?);
    }
    let column = |f: fn(&ReservationRequest) -> i64| {
        requests.iter().map(|(r, _, _)| f(r)).collect::<Vec<_>>()
    };
    let rows = sqlx::query(&RESERVE_BATCH)
        .bind(
            requests
                .iter()
                .map(|(r, _, _)| r.order_id)
                .collect::<Vec<_>>(),
        )
        .bind(
            requests
                .iter()
                .map(|(r, _, _)| r.customer_id)
                .collect::<Vec<_>>(),
        )
        .bind(column(|r| r.product_id))
        .bind(column(|r| i64::from(r.quantity)))
        .bind(events.iter().map(|e| e.event_id).collect::<Vec<_>>())
        .bind(events.iter().map(|e| e.payload.clone()).collect::<Vec<_>>())
        .bind(
            requests
                .iter()
                .map(|(_, p, _)| p.clone())
                .collect::<Vec<_>>(),
        )
        .bind(
            requests
                .iter()
                .map(|(_, _, s)| s.clone())
                .collect::<Vec<_>>(),
        )
        .bind(StockEvent::TOPIC.name)
        .fetch_all(pool)
        .await;
    match rows {
        Ok(rows) => rows
            .iter()
            .map(|row| row.try_get::<Option<i32>, _>("stock_after"))
            .collect::<Result<_, _>>()
            .map_err(Into::into),
        // A concurrent reservation of one of these orders (a unique violation, or a deadlock
        // between two batches inserting the same order ids in opposite orders): the statement
        // took nothing, and each one is asked on its own.
        Err(sqlx::Error::Database(e))
            if matches!(e.code().as_deref(), Some("23505") | Some("40P01")) =>
        {
            Ok(vec![None; requests.len()])
        }
        Err(e) => Err(e.into()),
    }
}

/// The answer to a reservation request for an order that already has a reservation row.
fn existing_reservation(
    request: &ReservationRequest,
    existing: Reservation,
) -> Result<Reserved, ApiError> {
    match existing.status {
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
    }
}

fn reservation_status(status: &str) -> ReservationStatus {
    if status == "held" {
        ReservationStatus::Held
    } else {
        ReservationStatus::Released
    }
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

/// Held reservations no order has been confirmed for, held for longer than `older_than` (by
/// the database's clock), oldest first: the orders whose placement may have stopped between
/// the reservation and the order's insert.
pub async fn unsettled(
    pool: &PgPool,
    older_than: Duration,
    limit: i64,
) -> Result<Vec<Unsettled>, sqlx::Error> {
    // Without a customer: made before reservations named one (the earlier placement design
    // recorded every order before reserving), never by a placement of this version.
    let rows: Vec<(Uuid, i64, i64, i32)> = sqlx::query_as(
        "SELECT order_id, customer_id, product_id, quantity FROM reservations
         WHERE status = 'held' AND NOT settled AND customer_id IS NOT NULL
           AND created_at < now() - make_interval(secs => $1)
         ORDER BY created_at LIMIT $2",
    )
    .bind(older_than.as_secs_f64())
    .bind(limit)
    .fetch_all(pool)
    .await?;
    Ok(rows
        .into_iter()
        .map(|(order_id, customer_id, product_id, quantity)| Unsettled {
            order_id,
            customer_id,
            product_id,
            quantity,
        })
        .collect())
}

/// Marks the reservations of these orders as confirmed by the orders service (their orders
/// exist), so the sweeper does not ask about them again. Returns how many it marked.
pub async fn settle(pool: &PgPool, order_ids: &[Uuid]) -> Result<u64, sqlx::Error> {
    Ok(sqlx::query(
        "UPDATE reservations SET settled = true
         WHERE order_id = ANY($1) AND status = 'held' AND NOT settled",
    )
    .bind(order_ids)
    .execute(pool)
    .await?
    .rows_affected())
}

pub async fn reservation(
    pool: &PgPool,
    order_id: Uuid,
) -> Result<Option<Reservation>, sqlx::Error> {
    let mut conn = pool.acquire().await?;
    fetch_reservation(&mut conn, order_id).await
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
            status: reservation_status(&status),
        }),
    )
}

pub fn no_product(id: i64) -> ApiError {
    ApiError::NotFound(format!("no product with id {id}"))
}
