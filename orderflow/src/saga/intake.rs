//! The saga's intake: each PLACED order event inserts the order's saga at its first step
//! (`ON CONFLICT DO NOTHING`: a redelivered event starts nothing new), committed before the
//! event's offset is.

use std::sync::Arc;

use sqlx::PgPool;
use tokio::sync::{watch, Notify};
use topics::commerce::OrderEventKind;
use topics::settings::KafkaSettings;

use crate::consumer::{self, ConsumerConfig, Delivered};
use crate::error::Result;

pub async fn run(
    kafka: &KafkaSettings,
    config: ConsumerConfig,
    pool: PgPool,
    wake: Arc<Notify>,
    shutdown: watch::Receiver<bool>,
) -> Result<()> {
    consumer::run(kafka, config, shutdown, |batch: Vec<Delivered>| {
        let pool = pool.clone();
        let wake = wake.clone();
        async move {
            let placed: Vec<_> = batch
                .iter()
                .filter(|d| d.event.kind == OrderEventKind::Placed)
                .collect();
            if placed.is_empty() {
                return Ok(());
            }
            let mut tx = pool.begin().await?;
            for delivered in placed {
                let event = &delivered.event;
                sqlx::query(
                    "INSERT INTO sagas (order_id, customer_id, product_id, quantity, status, step)
                     VALUES ($1, $2, $3, $4, 'running', 'order') ON CONFLICT (order_id) DO NOTHING",
                )
                .bind(event.order_id)
                .bind(event.customer_id)
                .bind(event.product_id)
                .bind(event.quantity)
                .execute(&mut *tx)
                .await?;
            }
            tx.commit().await?;
            wake.notify_waiters();
            Ok(())
        }
    })
    .await
}
