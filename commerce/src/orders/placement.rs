//! Placing an order across the orders and products databases, and the sweeper that cleans
//! up after a crash in between. See `README.md` ("Placing an order") for the whole design.
//!
//! 1. The products service reserves the stock under a new order id (derived from the
//!    idempotency key, if any), at most once per id.
//! 2. The order is inserted as `Processing` with its `PLACED` event, in one statement.
//!
//! A refused reservation records nothing. An unknown outcome (no answer) records the order as
//! `Failed` with its release owed. A crash between the two steps leaves a reservation no
//! order exists for: the [`Sweeper`] asks the products service for reservations held past
//! the timeout and not yet settled, records their orders as `Failed` (an insert that loses to
//! a placement finishing late), releases those, and settles the rest.

use std::time::Duration;

use axum::http::StatusCode;
use sqlx::PgPool;
use tokio::sync::watch;
use uuid::Uuid;

use super::domain::{order_id_for, NewOrder, Order, OrderStatus};
use super::products_client::{ProductsClient, ReserveOutcome};
use super::store;
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
        if let Some(key) = idempotency_key {
            if let Some(existing) = store::by_key(&self.pool, key).await? {
                return same_request(existing, new).map(|order| (StatusCode::OK, order));
            }
        }
        let id = order_id_for(idempotency_key);
        match self.products.reserve(id, &new).await {
            Ok(ReserveOutcome::Reserved) => {}
            Ok(ReserveOutcome::Refused(message)) => return Err(ApiError::Conflict(message)),
            Ok(ReserveOutcome::UnknownProduct(message)) => return Err(ApiError::NotFound(message)),
            Err(unavailable) => {
                // The reservation may have happened: record the order as given up, with the
                // release owed (a later reservation for this id is then refused too).
                let recorded = store::insert_failed(
                    &self.pool,
                    id,
                    idempotency_key,
                    new,
                    "products service unavailable",
                )
                .await?;
                if !recorded {
                    // A concurrent retry with the same key recorded the order meanwhile.
                    if let Some(order) = store::get(&self.pool, id).await? {
                        if order.status.holds_stock() {
                            return same_request(order, new).map(|order| (StatusCode::OK, order));
                        }
                    }
                }
                return Err(ApiError::Unavailable(format!(
                    "{unavailable}; order {id} failed, anything it held is released"
                )));
            }
        }
        if let Some(placed) = store::insert_placed(&self.pool, id, idempotency_key, new).await? {
            tracing::info!(%id, "order placed");
            return Ok((StatusCode::CREATED, placed));
        }
        // The id or the key is taken: a concurrent retry with the same key recorded this
        // order (the products service reserved once for both), or the sweeper gave it up.
        match store::get(&self.pool, id).await? {
            Some(order) if order.status.holds_stock() => {
                same_request(order, new).map(|order| (StatusCode::OK, order))
            }
            Some(order) => Err(ApiError::Unavailable(format!(
                "order {} was not recorded in time and is {}; its stock is released",
                order.id, order.status
            ))),
            // The key belongs to an order with another id (recorded by the earlier placement
            // design): that one is the key's order, and this reservation is not needed.
            None => {
                self.release(id).await?;
                let key = idempotency_key.unwrap_or_default();
                let existing = store::by_key(&self.pool, key)
                    .await?
                    .ok_or_else(|| ApiError::Conflict("order vanished; retry".to_owned()))?;
                same_request(existing, new).map(|order| (StatusCode::OK, order))
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

/// The answer to a request whose idempotency key (or derived id) names an existing order:
/// that order, unless the request asked for a different one.
fn same_request(existing: Order, new: NewOrder) -> Result<Order, ApiError> {
    if (existing.customer_id, existing.product_id, existing.quantity)
        != (new.customer_id, new.product_id, new.quantity)
    {
        return Err(ApiError::Conflict(
            "this Idempotency-Key was used for another order".to_owned(),
        ));
    }
    match existing.status {
        OrderStatus::Failed => Err(ApiError::Conflict(format!(
            "order {} failed: {}",
            existing.id,
            existing
                .failure_reason
                .as_deref()
                .unwrap_or("unknown reason")
        ))),
        _ => Ok(existing),
    }
}

/// Settles reservations held past the placement timeout (see the module doc) and releases
/// the stock of failed and cancelled orders until the products service confirmed it; one
/// round per interval.
pub struct Sweeper {
    pub orders: Orders,
    pub pending_timeout: Duration,
    pub interval: Duration,
    pub shutdown: watch::Receiver<bool>,
}

/// Releases attempted per round; the rest wait for the next.
const RELEASES_PER_ROUND: i64 = 500;

/// Unsettled reservations asked for per batch, and batches per round: settling keeps up with
/// up to 20 000 placed orders per round.
const SETTLE_BATCH: usize = 1_000;
const SETTLE_BATCHES_PER_ROUND: usize = 20;

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
        self.settle().await?;
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

    /// Asks the products service for reservations held past the timeout whose orders it was
    /// not told exist, records the missing orders as given up (released below, with the
    /// other owed releases), and settles the reservations of live orders.
    async fn settle(&self) -> Result<(), sqlx::Error> {
        let products = &self.orders.products;
        for _ in 0..SETTLE_BATCHES_PER_ROUND {
            let held = match products.unsettled(self.pending_timeout, SETTLE_BATCH).await {
                Ok(held) => held,
                Err(e) => {
                    tracing::warn!(error = %e, "unsettled reservations not listed; next round");
                    return Ok(());
                }
            };
            let live = store::settle(&self.orders.pool, &held).await?;
            let abandoned = held.len() - live.len();
            if abandoned > 0 {
                tracing::warn!(
                    count = abandoned,
                    "reservations held past the timeout without a live order; releasing them"
                );
            }
            if !live.is_empty() {
                if let Err(e) = products.settled(&live).await {
                    tracing::warn!(error = %e, "reservations not settled; next round");
                    return Ok(());
                }
            }
            if held.len() < SETTLE_BATCH || live.is_empty() {
                return Ok(());
            }
        }
        Ok(())
    }
}
