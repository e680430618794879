//! The checkout saga: after an order is placed, its steps run in order, each exactly once in
//! effect, across crashes of any process:
//!
//! `order` (still live?) → `profile` (customer profile and product price) → `shipment` →
//! `payment` → `email` → `history` → `sold`; a declined payment (or an unknown customer or
//! product) compensates with `release` (the stock) → `cancel` (the order).
//!
//! - [`intake`]: PLACED events from `commerce.order-events` insert a saga row (once per
//!   order id) before their offset is committed.
//! - [`Saga::work_one`]: a worker takes one due saga with `FOR UPDATE SKIP LOCKED`, performs
//!   its current step and advances it in the same transaction. Local effects (shipment,
//!   purchase history, sale, restock timer) are written in that transaction; external ones
//!   (the charge, the email) are keyed by the order id, so repeating a step whose advance did
//!   not commit changes nothing. Transient failures leave the step in place with a backoff.
//! - [`mail`]: the mail log, deduplicated by order id under a file lock.
//!
//! Test hook: `saga_crash_at = <step>` aborts the process right after that step's effect and
//! before its advance commits (of one order only, with `saga_crash_order = <id>`).

pub mod intake;
pub mod mail;

use std::str::FromStr;
use std::sync::Arc;
use std::time::Duration;

use serde_json::json;
use sqlx::migrate::Migrator;
use sqlx::{PgPool, Postgres, Transaction};
use tokio::sync::{watch, Notify};
use uuid::Uuid;

use crate::clients::{Charge, Clients, Profile};
use crate::error::{Error, Result};
use crate::telemetry::names::{SAGAS_FINISHED, SAGA_STEPS};
use mail::{Mail, MailLog};

pub static MIGRATOR: Migrator = sqlx::migrate!("./src/saga/migrations");

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Step {
    Order,
    Profile,
    Shipment,
    Payment,
    Email,
    History,
    Sold,
    Release,
    Cancel,
    Done,
}

impl Step {
    pub const ALL: [Step; 10] = [
        Step::Order,
        Step::Profile,
        Step::Shipment,
        Step::Payment,
        Step::Email,
        Step::History,
        Step::Sold,
        Step::Release,
        Step::Cancel,
        Step::Done,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Step::Order => "order",
            Step::Profile => "profile",
            Step::Shipment => "shipment",
            Step::Payment => "payment",
            Step::Email => "email",
            Step::History => "history",
            Step::Sold => "sold",
            Step::Release => "release",
            Step::Cancel => "cancel",
            Step::Done => "done",
        }
    }
}

impl FromStr for Step {
    type Err = String;

    fn from_str(text: &str) -> Result<Self, String> {
        Step::ALL
            .into_iter()
            .find(|s| s.as_str() == text.trim())
            .ok_or_else(|| format!("unknown saga step {text:?}"))
    }
}

/// What a step came to.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Outcome {
    Advance(Step),
    /// A permanent failure: undo what was done.
    Compensate(String),
    /// Nothing to do for this order (unknown, or no longer live).
    Skip(String),
    /// The last step: `completed` or `compensated`.
    Finish(&'static str),
}

#[derive(Debug, sqlx::FromRow)]
struct SagaRow {
    order_id: Uuid,
    customer_id: i64,
    product_id: i64,
    quantity: i32,
    step: String,
    profile: Option<serde_json::Value>,
    amount_cents: Option<i64>,
    attempts: i32,
}

/// What the workers share.
#[derive(Clone)]
pub struct Saga {
    pub pool: PgPool,
    pub clients: Clients,
    pub mail: MailLog,
    pub restock_delay: Duration,
    pub crash_at: Option<Step>,
    /// Only this order's step crashes; `None`: any order's.
    pub crash_order: Option<Uuid>,
    pub wake: Arc<Notify>,
}

/// Longest wait before a failing step is tried again.
const MAX_RETRY_DELAY_MS: i64 = 10_000;

impl Saga {
    /// Performs the current step of one due saga; `false` when none was due.
    pub async fn work_one(&self) -> Result<bool> {
        let mut tx = self.pool.begin().await?;
        let saga: Option<SagaRow> = sqlx::query_as(
            "SELECT order_id, customer_id, product_id, quantity, step, profile, amount_cents, attempts
             FROM sagas WHERE status IN ('running', 'compensating') AND due_at <= now()
             ORDER BY due_at LIMIT 1 FOR UPDATE SKIP LOCKED",
        )
        .fetch_optional(&mut *tx)
        .await?;
        let Some(saga) = saga else {
            tx.commit().await?;
            return Ok(false);
        };
        let step: Step = saga.step.parse().map_err(Error::Permanent)?;
        match self.perform(&mut tx, &saga, step).await {
            Ok(outcome) => {
                self.advance(&mut tx, &saga, step, &outcome).await?;
                if self.crash_at == Some(step)
                    && self.crash_order.is_none_or(|order| order == saga.order_id)
                {
                    tracing::error!(order = %saga.order_id, step = step.as_str(), "crash hook: aborting before the advance commits");
                    std::process::abort();
                }
                tx.commit().await?;
                telemetry::metrics::counter!(SAGA_STEPS, "step" => step.as_str(), "outcome" => "completed")
                    .increment(1);
                match &outcome {
                    Outcome::Finish(status) => {
                        telemetry::metrics::counter!(SAGAS_FINISHED, "status" => *status)
                            .increment(1)
                    }
                    Outcome::Skip(_) => {
                        telemetry::metrics::counter!(SAGAS_FINISHED, "status" => "skipped")
                            .increment(1)
                    }
                    Outcome::Advance(_) | Outcome::Compensate(_) => {}
                }
                tracing::debug!(order = %saga.order_id, step = step.as_str(), ?outcome, "saga step done");
            }
            Err(e) => {
                tx.rollback().await.ok();
                telemetry::metrics::counter!(SAGA_STEPS, "step" => step.as_str(), "outcome" => "failed")
                    .increment(1);
                self.failed(&saga, step, &e).await?;
            }
        }
        Ok(true)
    }

    async fn perform(
        &self,
        tx: &mut Transaction<'_, Postgres>,
        saga: &SagaRow,
        step: Step,
    ) -> Result<Outcome> {
        let order = saga.order_id;
        Ok(match step {
            Step::Order => match self.clients.order_status(order).await?.as_deref() {
                None => Outcome::Skip("unknown order".to_owned()),
                Some("Processing" | "Shipped" | "Delivered") => Outcome::Advance(Step::Profile),
                Some("Pending") => {
                    return Err(Error::Permanent(format!(
                        "order {order} is still pending; a placed order is not"
                    )))
                }
                Some(other) => Outcome::Skip(format!("order is {other}")),
            },
            Step::Profile => {
                let Some(profile) = self.clients.profile(saga.customer_id).await? else {
                    return Ok(Outcome::Compensate(format!(
                        "unknown customer {}",
                        saga.customer_id
                    )));
                };
                let Some(product) = self.clients.product(saga.product_id).await? else {
                    return Ok(Outcome::Compensate(format!(
                        "unknown product {}",
                        saga.product_id
                    )));
                };
                sqlx::query("UPDATE sagas SET profile = $2, amount_cents = $3 WHERE order_id = $1")
                    .bind(order)
                    .bind(json!(profile))
                    .bind(product.price_cents * i64::from(saga.quantity))
                    .execute(&mut **tx)
                    .await?;
                Outcome::Advance(Step::Shipment)
            }
            Step::Shipment => {
                let profile = profile_of(saga)?;
                sqlx::query(
                    "INSERT INTO shipments (order_id, customer_id, recipient, status)
                     VALUES ($1, $2, $3, 'prepared') ON CONFLICT (order_id) DO NOTHING",
                )
                .bind(order)
                .bind(saga.customer_id)
                .bind(&profile.name)
                .execute(&mut **tx)
                .await?;
                Outcome::Advance(Step::Payment)
            }
            Step::Payment => match self.clients.charge(order, amount_of(saga)?).await? {
                Charge::Approved => Outcome::Advance(Step::Email),
                Charge::Declined(reason) => {
                    Outcome::Compensate(format!("payment declined: {reason}"))
                }
            },
            Step::Email => {
                let profile = profile_of(saga)?;
                self.mail
                    .send(Mail {
                        order_id: order,
                        to: profile.email.clone(),
                        subject: format!("Your order {order}"),
                        body: format!(
                            "Dear {}, we received your payment of {}.{:02} for {} x product {}.",
                            profile.name,
                            amount_of(saga)? / 100,
                            amount_of(saga)? % 100,
                            saga.quantity,
                            saga.product_id
                        ),
                        sent_at: chrono::Utc::now().timestamp_millis(),
                    })
                    .await?;
                Outcome::Advance(Step::History)
            }
            Step::History => {
                sqlx::query(
                    "INSERT INTO purchase_history (order_id, customer_id, product_id, quantity, amount_cents)
                     VALUES ($1, $2, $3, $4, $5) ON CONFLICT (order_id) DO NOTHING",
                )
                .bind(order)
                .bind(saga.customer_id)
                .bind(saga.product_id)
                .bind(saga.quantity)
                .bind(amount_of(saga)?)
                .execute(&mut **tx)
                .await?;
                Outcome::Advance(Step::Sold)
            }
            Step::Sold => {
                let stock = self
                    .clients
                    .product(saga.product_id)
                    .await?
                    .map(|p| p.stock);
                crate::restock::record_sale(
                    tx,
                    order,
                    saga.product_id,
                    saga.quantity,
                    stock,
                    self.restock_delay,
                )
                .await?;
                Outcome::Finish("completed")
            }
            Step::Release => {
                self.clients.release(order).await?;
                Outcome::Advance(Step::Cancel)
            }
            Step::Cancel => {
                self.clients.cancel(order).await?;
                sqlx::query("UPDATE shipments SET status = 'cancelled' WHERE order_id = $1")
                    .bind(order)
                    .execute(&mut **tx)
                    .await?;
                Outcome::Finish("compensated")
            }
            Step::Done => Outcome::Finish("completed"),
        })
    }

    async fn advance(
        &self,
        tx: &mut Transaction<'_, Postgres>,
        saga: &SagaRow,
        step: Step,
        outcome: &Outcome,
    ) -> Result<()> {
        let (status, next, failure): (Option<&str>, Step, Option<&str>) = match outcome {
            Outcome::Advance(next) => (None, *next, None),
            Outcome::Compensate(reason) => (Some("compensating"), Step::Release, Some(reason)),
            Outcome::Skip(reason) => (Some("skipped"), Step::Done, Some(reason)),
            Outcome::Finish(status) => (Some(status), Step::Done, None),
        };
        if let Some(reason) = failure {
            tracing::info!(order = %saga.order_id, step = step.as_str(), reason, "saga {}", status.unwrap_or_default());
        }
        let updated = sqlx::query(
            "UPDATE sagas SET step = $3, status = COALESCE($4, status),
                    failure = COALESCE($5, failure), attempts = 0, last_error = NULL,
                    due_at = now(), updated_at = now()
             WHERE order_id = $1 AND step = $2",
        )
        .bind(saga.order_id)
        .bind(step.as_str())
        .bind(next.as_str())
        .bind(status)
        .bind(failure)
        .execute(&mut **tx)
        .await?;
        if updated.rows_affected() != 1 {
            return Err(Error::Permanent(format!(
                "saga {} moved away from step {} meanwhile",
                saga.order_id,
                step.as_str()
            )));
        }
        sqlx::query(
            "INSERT INTO saga_steps (order_id, step) VALUES ($1, $2) ON CONFLICT DO NOTHING",
        )
        .bind(saga.order_id)
        .bind(step.as_str())
        .execute(&mut **tx)
        .await?;
        Ok(())
    }

    /// A step failed: try again after a backoff (transient), compensate (permanent failure
    /// of a forward step) or stop with the error (permanent failure while compensating).
    async fn failed(&self, saga: &SagaRow, step: Step, error: &Error) -> Result<()> {
        let message = error.to_string();
        let compensating = matches!(step, Step::Release | Step::Cancel);
        if error.is_retryable() {
            let delay = (100i64 << saga.attempts.clamp(0, 7)).min(MAX_RETRY_DELAY_MS);
            tracing::warn!(order = %saga.order_id, step = step.as_str(), attempts = saga.attempts + 1, error = %message, "saga step failed; retrying");
            sqlx::query(
                "UPDATE sagas SET attempts = attempts + 1, last_error = $3,
                        due_at = now() + make_interval(secs => $4::float8 / 1000), updated_at = now()
                 WHERE order_id = $1 AND step = $2",
            )
            .bind(saga.order_id)
            .bind(step.as_str())
            .bind(&message)
            .bind(delay as f64)
            .execute(&self.pool)
            .await?;
        } else if compensating || step == Step::Order {
            tracing::error!(order = %saga.order_id, step = step.as_str(), error = %message, "saga failed permanently");
            sqlx::query(
                "UPDATE sagas SET status = 'failed', last_error = $3, updated_at = now()
                 WHERE order_id = $1 AND step = $2",
            )
            .bind(saga.order_id)
            .bind(step.as_str())
            .bind(&message)
            .execute(&self.pool)
            .await?;
        } else {
            tracing::warn!(order = %saga.order_id, step = step.as_str(), error = %message, "saga step failed permanently; compensating");
            sqlx::query(
                "UPDATE sagas SET status = 'compensating', step = 'release', failure = $3,
                        attempts = 0, due_at = now(), updated_at = now()
                 WHERE order_id = $1 AND step = $2",
            )
            .bind(saga.order_id)
            .bind(step.as_str())
            .bind(&message)
            .execute(&self.pool)
            .await?;
        }
        Ok(())
    }

    /// Runs `workers` workers until `shutdown` turns true.
    pub async fn run_workers(self, workers: usize, shutdown: watch::Receiver<bool>) {
        let mut tasks = Vec::new();
        for _ in 0..workers.max(1) {
            let saga = self.clone();
            let mut shutdown = shutdown.clone();
            let poll = Duration::from_millis(200);
            tasks.push(tokio::spawn(async move {
                loop {
                    if *shutdown.borrow() {
                        break;
                    }
                    match saga.work_one().await {
                        Ok(true) => continue,
                        Ok(false) => {}
                        Err(e) => tracing::warn!(error = %e, "saga worker round failed"),
                    }
                    tokio::select! {
                        _ = tokio::time::sleep(poll) => {}
                        _ = saga.wake.notified() => {}
                        _ = shutdown.wait_for(|stop| *stop) => break,
                    }
                }
            }));
        }
        for task in tasks {
            let _ = task.await;
        }
    }
}

fn profile_of(saga: &SagaRow) -> Result<Profile> {
    let value = saga
        .profile
        .clone()
        .ok_or_else(|| Error::Permanent(format!("saga {} has no profile", saga.order_id)))?;
    serde_json::from_value(value).map_err(|e| Error::Permanent(e.to_string()))
}

fn amount_of(saga: &SagaRow) -> Result<i64> {
    saga.amount_cents
        .ok_or_else(|| Error::Permanent(format!("saga {} has no amount", saga.order_id)))
}

/// The saga's figures, for `GET /health`-like checks and tests.
pub async fn status_counts(pool: &PgPool) -> Result<Vec<(String, i64)>> {
    Ok(
        sqlx::query_as("SELECT status, count(*) FROM sagas GROUP BY status ORDER BY status")
            .fetch_all(pool)
            .await?,
    )
}
