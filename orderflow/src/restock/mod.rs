//! The restock timer: when a sale leaves a product at stock 0, the product is restocked
//! `restock_delay_ms` after its last sale. Durable without a timer service:
//!
//! - [`record_sale`], in the saga's `sold` step transaction: the sale row, and the product's
//!   timer upserted to `now + delay` when the stock is 0, or pushed back when one is pending.
//! - [`fire_due`]: the poller takes due timers with `FOR UPDATE SKIP LOCKED` and, in one
//!   transaction, deletes each and writes its restock (a fresh restock id).
//! - [`execute_pending`]: adds each pending restock's quantity at the products service,
//!   keyed by the restock id (at most once there), then marks it done.
//!
//! Everything is in the saga's database, so a restart of any process (or all of them) loses
//! no timer: it fires when the next poller sees it due.

use std::time::Duration;

use sqlx::{PgPool, Postgres, Transaction};
use tokio::sync::watch;
use uuid::Uuid;

use crate::clients::Clients;
use crate::error::Result;
use crate::telemetry::names::RESTOCKS;

/// Records a sale once per order and arms or pushes back the product's restock timer.
/// `stock` is the product's stock as the products service reported it at the sale (`None`:
/// unknown product, no timer). Returns whether the sale was new.
pub async fn record_sale(
    tx: &mut Transaction<'_, Postgres>,
    order_id: Uuid,
    product_id: i64,
    quantity: i32,
    stock: Option<i64>,
    delay: Duration,
) -> Result<bool> {
    let sold = sqlx::query(
        "INSERT INTO sales (order_id, product_id, quantity) VALUES ($1, $2, $3)
         ON CONFLICT (order_id) DO NOTHING",
    )
    .bind(order_id)
    .bind(product_id)
    .bind(quantity)
    .execute(&mut **tx)
    .await?
    .rows_affected()
        == 1;
    if !sold {
        return Ok(false);
    }
    let delay_ms = delay.as_millis() as f64;
    if stock == Some(0) {
        sqlx::query(
            "INSERT INTO restock_timers (product_id, due_at, last_order_id)
             VALUES ($1, now() + make_interval(secs => $2::float8 / 1000), $3)
             ON CONFLICT (product_id) DO UPDATE
             SET due_at = EXCLUDED.due_at, last_order_id = EXCLUDED.last_order_id, armed_at = now()",
        )
        .bind(product_id)
        .bind(delay_ms)
        .bind(order_id)
        .execute(&mut **tx)
        .await?;
    } else {
        sqlx::query(
            "UPDATE restock_timers SET due_at = now() + make_interval(secs => $2::float8 / 1000),
                    last_order_id = $3, armed_at = now()
             WHERE product_id = $1",
        )
        .bind(product_id)
        .bind(delay_ms)
        .bind(order_id)
        .execute(&mut **tx)
        .await?;
    }
    Ok(true)
}

/// Fires every due timer: deletes it and writes its restock, in one transaction.
pub async fn fire_due(pool: &PgPool, quantity: i32) -> Result<usize> {
    let mut tx = pool.begin().await?;
    let due: Vec<(i64,)> = sqlx::query_as(
        "SELECT product_id FROM restock_timers WHERE due_at <= now()
         ORDER BY due_at LIMIT 100 FOR UPDATE SKIP LOCKED",
    )
    .fetch_all(&mut *tx)
    .await?;
    for (product_id,) in &due {
        sqlx::query("DELETE FROM restock_timers WHERE product_id = $1")
            .bind(product_id)
            .execute(&mut *tx)
            .await?;
        sqlx::query("INSERT INTO restocks (restock_id, product_id, quantity) VALUES ($1, $2, $3)")
            .bind(Uuid::new_v4())
            .bind(product_id)
            .bind(quantity.max(1))
            .execute(&mut *tx)
            .await?;
        tracing::info!(product_id, quantity, "restock timer fired");
    }
    tx.commit().await?;
    telemetry::metrics::counter!(RESTOCKS, "stage" => "fired").increment(due.len() as u64);
    Ok(due.len())
}

/// Carries out pending restocks at the products service; returns how many were done.
pub async fn execute_pending(pool: &PgPool, clients: &Clients) -> Result<usize> {
    let mut done = 0;
    loop {
        let mut tx = pool.begin().await?;
        let pending: Option<(Uuid, i64, i32)> = sqlx::query_as(
            "SELECT restock_id, product_id, quantity FROM restocks
             WHERE done_at IS NULL ORDER BY fired_at LIMIT 1 FOR UPDATE SKIP LOCKED",
        )
        .fetch_optional(&mut *tx)
        .await?;
        let Some((restock_id, product_id, quantity)) = pending else {
            tx.commit().await?;
            return Ok(done);
        };
        match clients.restock(product_id, restock_id, quantity).await {
            Ok(()) => {
                sqlx::query("UPDATE restocks SET done_at = now() WHERE restock_id = $1")
                    .bind(restock_id)
                    .execute(&mut *tx)
                    .await?;
                tx.commit().await?;
                telemetry::metrics::counter!(RESTOCKS, "stage" => "done").increment(1);
                tracing::info!(product_id, quantity, %restock_id, "restocked");
                done += 1;
            }
            Err(e) => {
                sqlx::query(
                    "UPDATE restocks SET attempts = attempts + 1, last_error = $2 WHERE restock_id = $1",
                )
                .bind(restock_id)
                .bind(e.to_string())
                .execute(&mut *tx)
                .await?;
                tx.commit().await?;
                return Err(e);
            }
        }
    }
}

/// The poller and executor, every `poll`, until `shutdown` turns true.
pub async fn run(
    pool: PgPool,
    clients: Clients,
    quantity: i32,
    poll: Duration,
    mut shutdown: watch::Receiver<bool>,
) {
    loop {
        if let Err(e) = fire_due(&pool, quantity).await {
            tracing::warn!(error = %e, "restock poll failed; next round");
        }
        if let Err(e) = execute_pending(&pool, &clients).await {
            tracing::warn!(error = %e, "restock not done; next round");
        }
        tokio::select! {
            _ = tokio::time::sleep(poll) => {}
            _ = shutdown.wait_for(|stop| *stop) => break,
        }
    }
    tracing::info!("restock stopped");
}
