//! Loyalty points: each PLACED order awards its customer `points_per_item × quantity`,
//! exactly once under redelivery, rebalances and any number of concurrent instances, because
//! the ledger row (keyed by the order id) and the points change in one transaction, committed
//! before the offsets. [`Mode::Naive`] (demo and benchmark only) reads the points, adds and
//! writes them back with no ledger check and no lock, as the reference's lock-free job did:
//! every redelivery counts again.

use std::str::FromStr;

use sqlx::migrate::Migrator;
use sqlx::PgPool;
use tokio::sync::watch;
use topics::commerce::OrderEventKind;
use topics::settings::KafkaSettings;

use crate::consumer::{self, ConsumerConfig, Delivered};
use crate::error::Result;
use crate::telemetry::names::{LOYALTY_ORDERS, LOYALTY_POINTS};

pub static MIGRATOR: Migrator = sqlx::migrate!("./src/loyalty/migrations");

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    ExactlyOnce,
    Naive,
}

impl FromStr for Mode {
    type Err = String;

    fn from_str(text: &str) -> Result<Self, String> {
        match text.trim() {
            "exactly-once" => Ok(Mode::ExactlyOnce),
            "naive" => Ok(Mode::Naive),
            other => Err(format!(
                "loyalty_mode must be exactly-once or naive, not {other:?}"
            )),
        }
    }
}

#[derive(Clone)]
pub struct Loyalty {
    pub pool: PgPool,
    pub mode: Mode,
    pub points_per_item: i64,
}

impl Loyalty {
    /// Awards the PLACED orders of a batch.
    pub async fn award(&self, batch: &[Delivered]) -> Result<()> {
        let mut placed: Vec<_> = batch
            .iter()
            .filter(|d| d.event.kind == OrderEventKind::Placed)
            .map(|d| &d.event)
            .collect();
        if placed.is_empty() {
            return Ok(());
        }
        match self.mode {
            Mode::ExactlyOnce => {
                // One lock order for every instance: fewer deadlocks (a deadlock is retried).
                placed.sort_by_key(|e| (e.customer_id, e.order_id));
                let mut tx = self.pool.begin().await?;
                let (mut orders, mut awarded) = (0u64, 0u64);
                for event in placed {
                    let points = self.points_per_item * i64::from(event.quantity);
                    let new = sqlx::query(
                        "INSERT INTO loyalty_ledger (order_id, customer_id, points, event_id)
                         VALUES ($1, $2, $3, $4) ON CONFLICT (order_id) DO NOTHING",
                    )
                    .bind(event.order_id)
                    .bind(event.customer_id)
                    .bind(points)
                    .bind(event.event_id)
                    .execute(&mut *tx)
                    .await?
                    .rows_affected()
                        == 1;
                    if new {
                        sqlx::query(
                            "INSERT INTO loyalty_accounts (customer_id, points, orders) VALUES ($1, $2, 1)
                             ON CONFLICT (customer_id) DO UPDATE
                             SET points = loyalty_accounts.points + EXCLUDED.points,
                                 orders = loyalty_accounts.orders + 1, updated_at = now()",
                        )
                        .bind(event.customer_id)
                        .bind(points)
                        .execute(&mut *tx)
                        .await?;
                        orders += 1;
                        awarded += points.max(0) as u64;
                    }
                }
                tx.commit().await?;
                telemetry::metrics::counter!(LOYALTY_ORDERS, "mode" => "exactly-once")
                    .increment(orders);
                telemetry::metrics::counter!(LOYALTY_POINTS, "mode" => "exactly-once")
                    .increment(awarded);
            }
            Mode::Naive => {
                for event in placed {
                    let points = self.points_per_item * i64::from(event.quantity);
                    let current: Option<i64> = sqlx::query_scalar(
                        "SELECT points FROM loyalty_naive_accounts WHERE customer_id = $1",
                    )
                    .bind(event.customer_id)
                    .fetch_optional(&self.pool)
                    .await?;
                    sqlx::query(
                        "INSERT INTO loyalty_naive_accounts (customer_id, points) VALUES ($1, $2)
                         ON CONFLICT (customer_id) DO UPDATE SET points = EXCLUDED.points",
                    )
                    .bind(event.customer_id)
                    .bind(current.unwrap_or(0) + points)
                    .execute(&self.pool)
                    .await?;
                    sqlx::query(
                        "INSERT INTO loyalty_naive_ledger (order_id, customer_id, points) VALUES ($1, $2, $3)",
                    )
                    .bind(event.order_id)
                    .bind(event.customer_id)
                    .bind(points)
                    .execute(&self.pool)
                    .await?;
                    telemetry::metrics::counter!(LOYALTY_ORDERS, "mode" => "naive").increment(1);
                    telemetry::metrics::counter!(LOYALTY_POINTS, "mode" => "naive")
                        .increment(points.max(0) as u64);
                }
            }
        }
        Ok(())
    }

    pub async fn run(
        self,
        kafka: &KafkaSettings,
        config: ConsumerConfig,
        shutdown: watch::Receiver<bool>,
    ) -> Result<()> {
        consumer::run(kafka, config, shutdown, |batch| {
            let loyalty = self.clone();
            async move { loyalty.award(&batch).await }
        })
        .await
    }
}
