//! Placing an order across the orders and products databases, and the sweeper that cleans
//! up after a crash in between. See `README.md` ("Placing an order") for the whole design.
//!
//! 1. The order is inserted as `Pending` (with the client's idempotency key, if any).
//! 2. The products service reserves the stock, keyed by the order id (at most once).
//! 3. The order becomes `Processing` with its `PLACED` event, only if it is still `Pending`.
//!
//! A refused reservation fails the order (nothing is held). An unknown outcome (timeout,
//! crash of either side) leaves the order `Pending` or `Failed` with a release owed; the
//! [`Sweeper`] fails orders pending past the timeout and releases what they may hold. The
//! release leaves a released row at the products service even when nothing was reserved,
//! so a reservation arriving late for a failed order is refused.

use std::time::Duration;

use axum::http::StatusCode;
use sqlx::PgPool;
use tokio::sync::watch;
use uuid::Uuid;

use super::domain::{NewOrder, Order, OrderStatus};
use super::products_client::{ProductsClient, ReserveOutcome};
use super::store::{self, Inserted};
use crate::http::ApiError;

#[derive(Clone)]
pub struct Orders {
    pub pool: PgPool,
    pub products: ProductsClient,
}

impl Orders {
    /// Places an order: 201 with the order once its stock is reserved, 200 with the existing
    /// order when the idempotency key was seen before, 409 when the stock is short, 404 for
    /// an unknown product, 503 when the products service gave no answer (the order then
    /// fails and whatever it may hold is released).
    pub async fn place(
        &self,
        idempotency_key: Option<&str>,
        new: NewOrder,
    ) -> Result<(StatusCode, Order), ApiError> {
        let order = match store::insert_pending(&self.pool, idempotency_key, new).await? {
            Inserted::New(order) => order,
            Inserted::Existing(order) => {
                if (order.customer_id, order.product_id, order.quantity)
                    != (new.customer_id, new.product_id, new.quantity)
                {
                    return Err(ApiError::Conflict(
                        "this Idempotency-Key was used for another order".to_owned(),
                    ));
                }
                match order.status {
                    // A retry of a request that did not finish: carry it on.
                    OrderStatus::Pending => order,
                    OrderStatus::Failed => {
                        return Err(ApiError::Conflict(format!(
                            "order {} failed: {}",
                            order.id,
                            order.failure_reason.as_deref().unwrap_or("unknown reason")
                        )))
                    }
                    _ => return Ok((StatusCode::OK, order)),
                }
            }
        };
        match self
            .products
            .reserve(order.id, order.product_id, order.quantity)
            .await
        {
            Ok(ReserveOutcome::Reserved) => match store::confirm(&self.pool, &order).await? {
                Some(confirmed) => {
                    tracing::info!(id = %order.id, "order placed");
                    Ok((StatusCode::CREATED, confirmed))
                }
                // No longer pending: a concurrent retry with the same idempotency key confirmed
                // it, or the sweeper failed it meanwhile (and releases the stock).
                None => match store::get(&self.pool, order.id).await? {
                    Some(current) if current.status.holds_stock() => Ok((StatusCode::OK, current)),
                    _ => Err(ApiError::Unavailable(format!(
                        "order {} was not confirmed in time; its stock is released",
                        order.id
                    ))),
                },
            },
            Ok(ReserveOutcome::Refused(message)) => {
                store::fail(&self.pool, order.id, &message, false).await?;
                Err(ApiError::Conflict(message))
            }
            Ok(ReserveOutcome::UnknownProduct(message)) => {
                store::fail(&self.pool, order.id, &message, false).await?;
                Err(ApiError::NotFound(message))
            }
            Err(unavailable) => {
                // The reservation may have happened: fail the order and owe the release.
                store::fail(&self.pool, order.id, "products service unavailable", true).await?;
                Err(ApiError::Unavailable(format!(
                    "{unavailable}; order {} failed, anything it held is released",
                    order.id
                )))
            }
        }
    }

    /// A client's status change; a cancellation releases the stock (now, or by the sweeper
    /// when the products service does not answer).
    pub async fn change_status(&self, id: Uuid, next: OrderStatus) -> Result<Order, ApiError> {
        let order = store::change_status(&self.pool, id, next).await?;
        if next == OrderStatus::Cancelled {
            self.release(id).await?;
        }
        Ok(order)
    }

    /// Releases an order's stock and clears the owed release; on failure the sweeper retries.
    async fn release(&self, id: Uuid) -> Result<(), sqlx::Error> {
        match self.products.release(id).await {
            Ok(_) => store::release_done(&self.pool, id).await,
            Err(e) => {
                tracing::warn!(%id, error = %e, "release not confirmed; the sweeper retries it");
                Ok(())
            }
        }
    }
}

/// Fails orders pending past the timeout and releases the stock of failed and cancelled
/// orders until the products service confirmed it; one round per interval.
pub struct Sweeper {
    pub orders: Orders,
    pub pending_timeout: Duration,
    pub interval: Duration,
    pub shutdown: watch::Receiver<bool>,
}

/// Releases attempted per round; the rest wait for the next.
const RELEASES_PER_ROUND: i64 = 500;

impl Sweeper {
    pub async fn run(mut self) {
        loop {
            tokio::select! {
                _ = tokio::time::sleep(self.interval) => {}
                _ = self.shutdown.wait_for(|stop| *stop) => break,
            }
            if let Err(e) = self.round().await {
                tracing::warn!(error = %e, "sweeper round failed; trying again next round");
            }
        }
        tracing::info!("orders sweeper stopped");
    }

    async fn round(&self) -> Result<(), sqlx::Error> {
        let failed = store::fail_expired(&self.orders.pool, self.pending_timeout).await?;
        if !failed.is_empty() {
            tracing::warn!(
                count = failed.len(),
                "failed orders pending past the timeout"
            );
        }
        for id in store::owed_releases(&self.orders.pool, RELEASES_PER_ROUND).await? {
            match self.orders.products.release(id).await {
                Ok(released) => {
                    store::release_done(&self.orders.pool, id).await?;
                    tracing::info!(%id, released, "owed release done");
                }
                Err(e) => {
                    tracing::warn!(%id, error = %e, "products service did not release; next round");
                    break;
                }
            }
        }
        Ok(())
    }
}
