//! The orders database: orders and their placement state, each change written with its order
//! event in one transaction (a placed order: in one statement).

use std::sync::LazyLock;

use outbox::NewEvent;

use sqlx::postgres::PgRow;
use sqlx::{PgPool, Row};
use topics::commerce::{OrderEvent, OrderEventKind};
use uuid::Uuid;

use super::domain::{order_id_for, NewOrder, Order, OrderStatus};
use crate::events::{record, ORDERS_OUTBOX};
use crate::http::ApiError;
use crate::products::domain::Unsettled;

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

/// The order placed with this idempotency key, if any: recorded with the key, or under the
/// id derived from it (an order the sweeper gave up is recorded without the key).
pub async fn by_key(pool: &PgPool, idempotency_key: &str) -> Result<Option<Order>, sqlx::Error> {
    sqlx::query(&format!(
        "SELECT {COLUMNS} FROM orders WHERE idempotency_key = $1 OR id = $2
         ORDER BY idempotency_key IS NULL LIMIT 1"
    ))
    .bind(idempotency_key)
    .bind(order_id_for(Some(idempotency_key)))
    .fetch_optional(pool)
    .await?
    .as_ref()
    .map(order)
    .transpose()
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

/// Records an order whose stock is reserved, as `Processing` with its `PLACED` event, in one
/// statement. `None` when an order with this id or idempotency key exists already: a
/// concurrent retry with the same key recorded it, or the sweeper gave the order up because
/// it was not recorded in time (its stock is then released).
pub async fn insert_placed(
    pool: &PgPool,
    id: Uuid,
    idempotency_key: Option<&str>,
    new: NewOrder,
) -> Result<Option<Order>, ApiError> {
    static INSERT: LazyLock<String> = LazyLock::new(|| {
        ORDERS_OUTBOX.statement(
            &format!(
                "placed AS (
                     INSERT INTO orders (id, idempotency_key, customer_id, product_id, quantity,
                                         status)
                     VALUES ($1, $2, $3, $4, $5, 'Processing')
                     ON CONFLICT DO NOTHING RETURNING {COLUMNS}
                 )"
            ),
            "SELECT $6::text AS topic, $7::text AS key, $8::uuid AS event_id,
                    jsonb_set($9::jsonb, '{occurred_at}',
                              to_jsonb(floor(extract(epoch FROM updated_at) * 1000)::bigint))
                        AS payload,
                    $10::text AS traceparent, $11::text AS tracestate
             FROM placed",
            &format!("SELECT {COLUMNS} FROM placed"),
        )
    });
    let now = chrono::Utc::now();
    let placed = Order {
        id,
        customer_id: new.customer_id,
        product_id: new.product_id,
        quantity: new.quantity,
        status: OrderStatus::Processing,
        failure_reason: None,
        created_at: now,
        updated_at: now,
    };
    // `occurred_at` is filled in by the statement, from the inserted row's `updated_at`.
    let event = NewEvent::from_event(&order_event(&placed, OrderEventKind::Placed, None))?;
    let (traceparent, tracestate) = outbox::write::trace_context();
    sqlx::query(&INSERT)
        .bind(id)
        .bind(idempotency_key)
        .bind(new.customer_id)
        .bind(new.product_id)
        .bind(new.quantity)
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

/// Records an order that was given up during placement as `Failed`, with its release owed
/// (its stock may be held at the products service), unless an order with this id or key
/// exists already. Returns whether it recorded it.
pub async fn insert_failed(
    pool: &PgPool,
    id: Uuid,
    idempotency_key: Option<&str>,
    new: NewOrder,
    reason: &str,
) -> Result<bool, sqlx::Error> {
    let inserted = sqlx::query(
        "INSERT INTO orders (id, idempotency_key, customer_id, product_id, quantity, status,
                             failure_reason, release_pending)
         VALUES ($1, $2, $3, $4, $5, 'Failed', $6, true)
         ON CONFLICT DO NOTHING",
    )
    .bind(id)
    .bind(idempotency_key)
    .bind(new.customer_id)
    .bind(new.product_id)
    .bind(new.quantity)
    .bind(reason)
    .execute(pool)
    .await?;
    Ok(inserted.rows_affected() == 1)
}

/// Settles reservations held past the placement timeout, in one statement. An order that
/// was never recorded is recorded now as `Failed` with its release owed (the primary key
/// decides between this and a placement finishing late: whichever inserts first wins, the
/// other waits for it and then does nothing). A recorded order that is not live (failed,
/// cancelled, or left `Pending` by an instance of the earlier design) gets its release owed
/// (and a `Pending` one fails), so every listed reservation is either settled or released.
/// Returns the ids among `held` whose orders are live: their reservations are theirs.
pub async fn settle(pool: &PgPool, held: &[Unsettled]) -> Result<Vec<Uuid>, sqlx::Error> {
    let column = |f: fn(&Unsettled) -> i64| held.iter().map(f).collect::<Vec<_>>();
    let ids: Vec<Uuid> = held.iter().map(|r| r.order_id).collect();
    sqlx::query_scalar(
        "WITH held AS (
             SELECT * FROM unnest($1::uuid[], $2::bigint[], $3::bigint[], $4::bigint[])
                 AS h (id, customer_id, product_id, quantity)
         ),
         abandoned AS (
             INSERT INTO orders (id, customer_id, product_id, quantity, status, failure_reason,
                                 release_pending)
             SELECT id, customer_id, product_id, quantity, 'Failed',
                    'not recorded in time after its stock was reserved', true
             FROM held
             ON CONFLICT DO NOTHING
         ),
         owed AS (
             UPDATE orders SET release_pending = true, updated_at = now(),
                    status = CASE WHEN status = 'Pending' THEN 'Failed' ELSE status END,
                    failure_reason = CASE WHEN status = 'Pending' THEN 'not confirmed in time'
                                          ELSE failure_reason END
             WHERE id = ANY($1) AND NOT release_pending
               AND status NOT IN ('Processing', 'Shipped', 'Delivered')
         )
         SELECT id FROM orders
         WHERE id = ANY($1) AND status IN ('Processing', 'Shipped', 'Delivered')",
    )
    .bind(&ids)
    .bind(column(|r| r.customer_id))
    .bind(column(|r| r.product_id))
    .bind(column(|r| i64::from(r.quantity)))
    .fetch_all(pool)
    .await
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
