//! The dispatcher: assigns queued packages to free agents, and tells the orders service which
//! orders were delivered. It runs a round when woken (a package queued, an agent added or
//! freed) and once per interval anyway; every instance of the service runs one, and their
//! rounds never assign one agent twice because the store locks and re-checks both rows.

use std::sync::Arc;
use std::time::Duration;

use serde_json::{json, Value};
use sqlx::PgPool;
use tokio::sync::{watch, Notify};
use uuid::Uuid;

use super::store;
use crate::http::ApiError;

/// Assignments and order updates attempted per round; the rest wait for the next.
const PER_ROUND: usize = 1000;

pub struct Dispatcher {
    pub pool: PgPool,
    pub orders: OrdersClient,
    pub interval: Duration,
    pub wake: Arc<Notify>,
}

impl Dispatcher {
    pub async fn run(self: Arc<Self>, mut shutdown: watch::Receiver<bool>) {
        loop {
            if let Err(e) = self.round().await {
                tracing::warn!(error = %e, "dispatch round failed; trying again next round");
            }
            tokio::select! {
                _ = shutdown.wait_for(|stop| *stop) => break,
                () = self.wake.notified() => {}
                _ = tokio::time::sleep(self.interval) => {}
            }
        }
        tracing::info!("delivery dispatcher stopped");
    }

    async fn round(&self) -> Result<(), ApiError> {
        for _ in 0..PER_ROUND {
            match store::assign_next(&self.pool).await? {
                Some(package) => tracing::info!(
                    package = %package.id,
                    agent = ?package.agent_id,
                    "package assigned"
                ),
                None => break,
            }
        }
        for (package, order) in store::owed_order_updates(&self.pool, PER_ROUND as i64).await? {
            match self.orders.mark_delivered(order).await {
                Ok(()) => store::order_updated(&self.pool, package).await?,
                Err(OrderUpdate::Refused(reason)) => {
                    tracing::error!(%order, %reason, "the orders service refused Delivered; not asking again");
                    store::order_updated(&self.pool, package).await?;
                }
                Err(OrderUpdate::Unavailable(reason)) => {
                    tracing::warn!(%order, %reason, "orders service unavailable; next round");
                    break;
                }
            }
        }
        Ok(())
    }
}

#[derive(Debug)]
pub enum OrderUpdate {
    /// The order can never become Delivered (unknown, or in another state).
    Refused(String),
    /// No usable answer; asking again may succeed.
    Unavailable(String),
}

#[derive(Clone)]
pub struct OrdersClient {
    http: reqwest::Client,
    base_url: String,
}

impl OrdersClient {
    pub fn new(base_url: &str) -> Result<Self, reqwest::Error> {
        Ok(Self {
            http: reqwest::Client::builder()
                .timeout(Duration::from_secs(5))
                .build()?,
            base_url: base_url.trim_end_matches('/').to_owned(),
        })
    }

    /// `PUT /orders/{id}/status` Delivered; an order that is Delivered already counts as done.
    pub async fn mark_delivered(&self, order: Uuid) -> Result<(), OrderUpdate> {
        let unavailable = |e: reqwest::Error| OrderUpdate::Unavailable(e.to_string());
        let response = self
            .http
            .put(format!("{}/orders/{order}/status", self.base_url))
            .json(&json!({ "status": "Delivered" }))
            .send()
            .await
            .map_err(unavailable)?;
        match response.status().as_u16() {
            200 => Ok(()),
            404 => Err(OrderUpdate::Refused(format!("no order {order}"))),
            409 => {
                let current: Value = self
                    .http
                    .get(format!("{}/orders/{order}", self.base_url))
                    .send()
                    .await
                    .map_err(unavailable)?
                    .json()
                    .await
                    .map_err(unavailable)?;
                match current["status"].as_str() {
                    Some("Delivered") => Ok(()),
                    Some(status) => Err(OrderUpdate::Refused(format!("order is {status}"))),
                    None => Err(OrderUpdate::Unavailable(
                        "orders service answered without a status".to_owned(),
                    )),
                }
            }
            status => Err(OrderUpdate::Unavailable(format!(
                "orders service answered {status}"
            ))),
        }
    }
}
