//! The delivery database: agents and packages, each step written with its delivery event in
//! one transaction.

use chrono::{DateTime, Utc};
use sqlx::postgres::PgRow;
use sqlx::{PgPool, Row};
use topics::commerce::{DeliveryEvent, DeliveryEventKind, PackageStatus};
use uuid::Uuid;

use super::domain::{package_status_str, parse_package_status, Package};
use super::DELIVERY_OUTBOX;
use crate::events::record;
use crate::http::ApiError;

const COLUMNS: &str =
    "id, order_id, customer_id, status, agent_id, created_at, assigned_at, delivered_at";

fn package(row: &PgRow) -> Result<Package, sqlx::Error> {
    let status: String = row.try_get("status")?;
    Ok(Package {
        id: row.try_get("id")?,
        order_id: row.try_get("order_id")?,
        customer_id: row.try_get("customer_id")?,
        status: parse_package_status(&status).map_err(|e| sqlx::Error::Decode(e.into()))?,
        agent_id: row.try_get("agent_id")?,
        created_at: row.try_get("created_at")?,
        assigned_at: row.try_get("assigned_at")?,
        delivered_at: row.try_get("delivered_at")?,
    })
}

fn event(package: &Package, kind: DeliveryEventKind, at: DateTime<Utc>) -> DeliveryEvent {
    DeliveryEvent {
        event_id: Uuid::new_v4(),
        kind,
        package_id: package.id,
        key: String::new(),
        order_id: package.order_id,
        customer_id: package.customer_id,
        agent_id: package.agent_id,
        status: package.status,
        occurred_at: at.timestamp_millis(),
    }
    .with_key()
}

pub fn no_package(id: Uuid) -> ApiError {
    ApiError::NotFound(format!("no package with id {id}"))
}

/// A delivery agent the users service announced; starts FREE. Announced twice, once.
pub async fn add_agent(pool: &PgPool, id: Uuid) -> Result<(), sqlx::Error> {
    sqlx::query("INSERT INTO agents (id) VALUES ($1) ON CONFLICT (id) DO NOTHING")
        .bind(id)
        .execute(pool)
        .await?;
    Ok(())
}

/// A deleted user: if an agent, it gets no new package (the one it carries it delivers).
pub async fn retire_agent(pool: &PgPool, id: Uuid) -> Result<(), sqlx::Error> {
    sqlx::query("UPDATE agents SET is_active = false, updated_at = now() WHERE id = $1")
        .bind(id)
        .execute(pool)
        .await?;
    Ok(())
}

/// A shipped order becomes a queued package, with `PACKAGE_CREATED`; the same order again
/// changes nothing. Returns whether a package was created.
pub async fn create_package(
    pool: &PgPool,
    order_id: Uuid,
    customer_id: i64,
) -> Result<bool, ApiError> {
    let mut tx = pool.begin().await?;
    let row = sqlx::query(&format!(
        "INSERT INTO packages (id, order_id, customer_id, status) VALUES ($1, $2, $3, 'QUEUED')
         ON CONFLICT (order_id) DO NOTHING RETURNING {COLUMNS}"
    ))
    .bind(Uuid::new_v4())
    .bind(order_id)
    .bind(customer_id)
    .fetch_optional(&mut *tx)
    .await?;
    let Some(row) = row else {
        return Ok(false);
    };
    let created = package(&row)?;
    let at = created.created_at;
    record(
        &DELIVERY_OUTBOX,
        &mut tx,
        &[event(&created, DeliveryEventKind::PackageCreated, at)],
    )
    .await?;
    tx.commit().await?;
    Ok(true)
}

/// Times of assignment and delivery are the statement's clock, not the transaction's start:
/// an agent's packages then have intervals that never overlap, which is what one package per
/// agent means, and what the tests check.
///
/// Assigns the longest-queued package to a free agent, if there are both, with
/// `PACKAGE_ASSIGNED`: the agent becomes OCCUPIED in the same transaction. Both rows are
/// locked (`SKIP LOCKED`: concurrent dispatchers take different ones), and the agent is
/// only taken while still FREE. Returns the package assigned.
pub async fn assign_next(pool: &PgPool) -> Result<Option<Package>, ApiError> {
    let mut tx = pool.begin().await?;
    let package_id: Option<Uuid> = sqlx::query_scalar(
        "SELECT id FROM packages WHERE status = 'QUEUED' ORDER BY created_at, id
         LIMIT 1 FOR UPDATE SKIP LOCKED",
    )
    .fetch_optional(&mut *tx)
    .await?;
    let Some(package_id) = package_id else {
        return Ok(None);
    };
    let agent_id: Option<Uuid> = sqlx::query_scalar(
        "SELECT id FROM agents WHERE status = 'FREE' AND is_active ORDER BY updated_at, id
         LIMIT 1 FOR UPDATE SKIP LOCKED",
    )
    .fetch_optional(&mut *tx)
    .await?;
    let Some(agent_id) = agent_id else {
        return Ok(None);
    };
    let taken = sqlx::query(
        "UPDATE agents SET status = 'OCCUPIED', package_id = $2, updated_at = now()
         WHERE id = $1 AND status = 'FREE'",
    )
    .bind(agent_id)
    .bind(package_id)
    .execute(&mut *tx)
    .await?
    .rows_affected();
    if taken != 1 {
        return Ok(None);
    }
    let row = sqlx::query(&format!(
        "UPDATE packages SET status = 'ASSIGNED', agent_id = $2, assigned_at = clock_timestamp()
         WHERE id = $1 RETURNING {COLUMNS}"
    ))
    .bind(package_id)
    .bind(agent_id)
    .fetch_one(&mut *tx)
    .await?;
    let assigned = package(&row)?;
    let at = assigned.assigned_at.unwrap_or_else(Utc::now);
    record(
        &DELIVERY_OUTBOX,
        &mut tx,
        &[event(&assigned, DeliveryEventKind::PackageAssigned, at)],
    )
    .await?;
    tx.commit().await?;
    Ok(Some(assigned))
}

/// The agent delivered the package: it becomes DELIVERED (owing the orders service the
/// order's Delivered), the agent FREE, with `PACKAGE_DELIVERED`. Delivering a delivered
/// package again answers it unchanged; a queued one is a conflict.
pub async fn deliver(pool: &PgPool, id: Uuid) -> Result<Package, ApiError> {
    let mut tx = pool.begin().await?;
    let row = sqlx::query(&format!(
        "SELECT {COLUMNS} FROM packages WHERE id = $1 FOR UPDATE"
    ))
    .bind(id)
    .fetch_optional(&mut *tx)
    .await?;
    let current = package(&row.ok_or_else(|| no_package(id))?)?;
    match current.status {
        PackageStatus::Delivered => return Ok(current),
        PackageStatus::Queued => {
            return Err(ApiError::Conflict(format!(
                "package {id} is {} and has no agent yet",
                package_status_str(current.status)
            )))
        }
        PackageStatus::Assigned => {}
    }
    let row = sqlx::query(&format!(
        "UPDATE packages SET status = 'DELIVERED', delivered_at = clock_timestamp(),
                order_update_owed = true
         WHERE id = $1 RETURNING {COLUMNS}"
    ))
    .bind(id)
    .fetch_one(&mut *tx)
    .await?;
    let delivered = package(&row)?;
    sqlx::query(
        "UPDATE agents SET status = 'FREE', package_id = NULL, updated_at = now()
         WHERE id = $1 AND package_id = $2",
    )
    .bind(delivered.agent_id)
    .bind(id)
    .execute(&mut *tx)
    .await?;
    let at = delivered.delivered_at.unwrap_or_else(Utc::now);
    record(
        &DELIVERY_OUTBOX,
        &mut tx,
        &[event(&delivered, DeliveryEventKind::PackageDelivered, at)],
    )
    .await?;
    tx.commit().await?;
    Ok(delivered)
}

/// Delivered packages whose order the orders service has not confirmed Delivered yet.
pub async fn owed_order_updates(
    pool: &PgPool,
    limit: i64,
) -> Result<Vec<(Uuid, Uuid)>, sqlx::Error> {
    sqlx::query_as(
        "SELECT id, order_id FROM packages WHERE order_update_owed ORDER BY delivered_at
         LIMIT $1",
    )
    .bind(limit)
    .fetch_all(pool)
    .await
}

pub async fn order_updated(pool: &PgPool, id: Uuid) -> Result<(), sqlx::Error> {
    sqlx::query("UPDATE packages SET order_update_owed = false WHERE id = $1")
        .bind(id)
        .execute(pool)
        .await?;
    Ok(())
}
