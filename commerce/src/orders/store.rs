//! The orders database: orders and their saga state, each status change written with its
//! order event in one transaction (the confirmation: in one statement).

use std::sync::LazyLock;
use std::time::Duration;

use outbox::NewEvent;

use sqlx::postgres::PgRow;
use sqlx::{PgPool, Row};
use topics::commerce::{OrderEvent, OrderEventKind};
use uuid::Uuid;

use super::domain::{NewOrder, Order, OrderStatus};
use crate::events::{record, ORDERS_OUTBOX};
use crate::http::ApiError;

const COLUMNS: &str =
    "id, customer_id, product_id, quantity, status, failure_reason, created_at, updated_at";

fn order(row: &PgRow) -> Result<Order, sqlx::Error> {
    let status: String = row.try_get("status")?;
    Ok(Order {
        id: row.try_get("id")?,
        customer_id: row.try_get("customer_id")?,
        product_id: row.try_get("product_id")?,
        quantity: row.try_get("quantity")?,
        status: status
            .parse()
            .map_err(|e: String| sqlx::Error::Decode(e.into()))?,
        failure_reason: row.try_get("failure_reason")?,
        created_at: row.try_get("created_at")?,
        updated_at: row.try_get("updated_at")?,
    })
}

pub async fn list(pool: &PgPool) -> Result<Vec<Order>, sqlx::Error> {
    sqlx::query(&format!(
        "SELECT {COLUMNS} FROM orders ORDER BY created_at, id"
    ))
    .fetch_all(pool)
    .await?
    .iter()
    .map(order)
    .collect()
}

pub async fn get(pool: &PgPool, id: Uuid) -> Result<Option<Order>, sqlx::Error> {
    sqlx::query(&format!("SELECT {COLUMNS} FROM orders WHERE id = $1"))
        .bind(id)
        .fetch_optional(pool)
        .await?
        .as_ref()
        .map(order)
        .transpose()
}

pub enum Inserted {
    New(Order),
    /// An order with this idempotency key exists already.
    Existing(Order),
}

/// Records a new order as Pending, before any stock is reserved for it.
pub async fn insert_pending(
    pool: &PgPool,
    idempotency_key: Option<&str>,
    new: NewOrder,
) -> Result<Inserted, sqlx::Error> {
    let row = sqlx::query(&format!(
        "INSERT INTO orders (id, idempotency_key, customer_id, product_id, quantity, status)
         VALUES ($1, $2, $3, $4, $5, 'Pending')
         ON CONFLICT (idempotency_key) DO NOTHING RETURNING {COLUMNS}"
    ))
    .bind(Uuid::new_v4())
    .bind(idempotency_key)
    .bind(new.customer_id)
    .bind(new.product_id)
    .bind(new.quantity)
    .fetch_optional(pool)
    .await?;
    if let Some(row) = row {
        return Ok(Inserted::New(order(&row)?));
    }
    let row = sqlx::query(&format!(
        "SELECT {COLUMNS} FROM orders WHERE idempotency_key = $1"
    ))
    .bind(idempotency_key)
    .fetch_one(pool)
    .await?;
    Ok(Inserted::Existing(order(&row)?))
}

fn order_event(order: &Order, kind: OrderEventKind, previous: Option<OrderStatus>) -> OrderEvent {
    OrderEvent {
        event_id: Uuid::new_v4(),
        kind,
        order_id: order.id,
        key: String::new(),
        customer_id: order.customer_id,
        product_id: order.product_id,
        quantity: order.quantity,
        status: order.status.into(),
        previous_status: previous.map(Into::into),
        occurred_at: order.updated_at.timestamp_millis(),
    }
    .with_key()
}

/// Pending → Processing once its stock is reserved, with the `PLACED` event, in one
/// statement. `None` when the order is no longer pending (the sweeper failed it meanwhile).
/// `pending` is the order as inserted: the event carries its fields.
pub async fn confirm(pool: &PgPool, pending: &Order) -> Result<Option<Order>, ApiError> {
    static CONFIRM: LazyLock<String> = LazyLock::new(|| {
        ORDERS_OUTBOX.statement(
            &format!(
                "confirmed AS (
                     UPDATE orders SET status = 'Processing', updated_at = now()
                     WHERE id = $1 AND status = 'Pending' RETURNING {COLUMNS}
                 )"
            ),
            "SELECT $2::text AS topic, $3::text AS key, $4::uuid AS event_id,
                    jsonb_set($5::jsonb, '{occurred_at}',
                              to_jsonb(floor(extract(epoch FROM updated_at) * 1000)::bigint))
                        AS payload,
                    $6::text AS traceparent, $7::text AS tracestate
             FROM confirmed",
            &format!("SELECT {COLUMNS} FROM confirmed"),
        )
    });
    let placed = Order {
        status: OrderStatus::Processing,
        ..pending.clone()
    };
    // `occurred_at` is filled in by the statement, from the confirmed row's `updated_at`.
    let event = NewEvent::from_event(&order_event(&placed, OrderEventKind::Placed, None))?;
    let (traceparent, tracestate) = outbox::write::trace_context();
    sqlx::query(&CONFIRM)
        .bind(pending.id)
        .bind(&event.topic)
        .bind(&event.key)
        .bind(event.event_id)
        .bind(&event.payload)
        .bind(traceparent)
        .bind(tracestate)
        .fetch_optional(pool)
        .await?
        .as_ref()
        .map(order)
        .transpose()
        .map_err(Into::into)
}

/// Pending → Failed. `release_owed` says whether stock may be held for it at the products
/// service (the reservation's outcome is unknown), so the sweeper must release it.
pub async fn fail(
    pool: &PgPool,
    id: Uuid,
    reason: &str,
    release_owed: bool,
) -> Result<Option<Order>, sqlx::Error> {
    sqlx::query(&format!(
        "UPDATE orders SET status = 'Failed', failure_reason = $2, release_pending = $3,
                updated_at = now()
         WHERE id = $1 AND status = 'Pending' RETURNING {COLUMNS}"
    ))
    .bind(id)
    .bind(reason)
    .bind(release_owed)
    .fetch_optional(pool)
    .await?
    .as_ref()
    .map(order)
    .transpose()
}

/// A client's status change, checked against the allowed transitions under the row lock,
/// with its `STATUS_CHANGED` event. A cancellation owes the products service a release.
pub async fn change_status(pool: &PgPool, id: Uuid, next: OrderStatus) -> Result<Order, ApiError> {
    let mut tx = pool.begin().await?;
    let current: Option<String> =
        sqlx::query_scalar("SELECT status FROM orders WHERE id = $1 FOR UPDATE")
            .bind(id)
            .fetch_optional(&mut *tx)
            .await?;
    let current: OrderStatus = current
        .ok_or_else(|| no_order(id))?
        .parse()
        .map_err(|e: String| sqlx::Error::Decode(e.into()))?;
    if !current.can_become(next) {
        return Err(ApiError::Conflict(format!(
            "order {id} is {current} and cannot become {next}"
        )));
    }
    let row = sqlx::query(&format!(
        "UPDATE orders SET status = $2, release_pending = $3, updated_at = now()
         WHERE id = $1 RETURNING {COLUMNS}"
    ))
    .bind(id)
    .bind(next.as_str())
    .bind(next == OrderStatus::Cancelled)
    .fetch_one(&mut *tx)
    .await?;
    let changed = order(&row)?;
    record(
        &ORDERS_OUTBOX,
        &mut tx,
        &[order_event(
            &changed,
            OrderEventKind::StatusChanged,
            Some(current),
        )],
    )
    .await?;
    tx.commit().await?;
    Ok(changed)
}

/// Fails every order pending for longer than `timeout` (by the database's clock) and marks
/// its release owed. Returns their ids.
pub async fn fail_expired(pool: &PgPool, timeout: Duration) -> Result<Vec<Uuid>, sqlx::Error> {
    sqlx::query_scalar(
        "UPDATE orders SET status = 'Failed', failure_reason = 'not confirmed in time',
                release_pending = true, updated_at = now()
         WHERE status = 'Pending' AND created_at < now() - make_interval(secs => $1)
         RETURNING id",
    )
    .bind(timeout.as_secs_f64())
    .fetch_all(pool)
    .await
}

/// Orders whose stock the products service may still hold, oldest first.
pub async fn owed_releases(pool: &PgPool, limit: i64) -> Result<Vec<Uuid>, sqlx::Error> {
    sqlx::query_scalar("SELECT id FROM orders WHERE release_pending ORDER BY updated_at LIMIT $1")
        .bind(limit)
        .fetch_all(pool)
        .await
}

/// The products service confirmed the order holds nothing any more.
pub async fn release_done(pool: &PgPool, id: Uuid) -> Result<(), sqlx::Error> {
    sqlx::query("UPDATE orders SET release_pending = false WHERE id = $1")
        .bind(id)
        .execute(pool)
        .await?;
    Ok(())
}

pub fn no_order(id: Uuid) -> ApiError {
    ApiError::NotFound(format!("no order with id {id}"))
}
