//! The restock timer: a sale that leaves a product at stock 0 arms it, a later sale pushes it
//! back, and it fires the configured delay after the last sale although the restock process
//! was killed with SIGKILL between the arming and the firing.

use chrono::{DateTime, Utc};
use sqlx::PgPool;
use uuid::Uuid;

use crate::helpers::*;

const DELAY_MS: i64 = 3_000;
const QUANTITY: i64 = 7;

async fn sold_at(flow: &PgPool, order: Uuid) -> DateTime<Utc> {
    sqlx::query_scalar("SELECT sold_at FROM sales WHERE order_id = $1")
        .bind(order)
        .fetch_one(flow)
        .await
        .unwrap()
}

async fn completed(flow: &PgPool, order: Uuid) -> bool {
    sqlx::query_scalar::<_, String>("SELECT status FROM sagas WHERE order_id = $1")
        .bind(order)
        .fetch_optional(flow)
        .await
        .unwrap()
        .is_some_and(|s| s == "completed")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_restock_fires_the_delay_after_the_last_sale_across_a_restart() {
    let shop = Shop::start().await;
    let mut settings = flow_settings(&shop).await;
    settings.restock_delay_ms = DELAY_MS as u64;
    settings.restock_quantity = QUANTITY as i32;
    settings.restock_poll_ms = 100;
    let provider = Provider::start(&mut settings, flaky(0.0)).await;
    let flow = saga_pool(&settings).await;
    let customer = shop.customer().await;
    let product = shop.product(2).await;
    let saga = Component::start("saga", &settings, &[]);
    let restock = Component::start("restock", &settings, &[]);

    // Stock 2 → 1: no timer.
    let first = shop.order(customer, product, 1).await;
    testkit::eventually("the first sale", WAIT, || completed(&flow, first)).await;
    let timers: i64 = sqlx::query_scalar("SELECT count(*) FROM restock_timers")
        .fetch_one(&flow)
        .await
        .unwrap();
    assert_eq!(timers, 0, "stock left: no timer");

    // Stock 1 → 0: the timer is armed.
    let second = shop.order(customer, product, 1).await;
    testkit::eventually("the second sale", WAIT, || completed(&flow, second)).await;
    let armed: DateTime<Utc> =
        sqlx::query_scalar("SELECT due_at FROM restock_timers WHERE product_id = $1")
            .bind(product)
            .fetch_one(&flow)
            .await
            .unwrap();

    // The restock process dies; one more item comes in and sells out again: pushed back.
    restock.kill().await;
    shop.set_stock(product, 1).await;
    let third = shop.order(customer, product, 1).await;
    testkit::eventually("the third sale", WAIT, || completed(&flow, third)).await;
    let last_sale = sold_at(&flow, third).await;
    let pushed: DateTime<Utc> =
        sqlx::query_scalar("SELECT due_at FROM restock_timers WHERE product_id = $1")
            .bind(product)
            .fetch_one(&flow)
            .await
            .unwrap();
    assert!(pushed > armed, "the later sale pushed the timer back");

    // Started again before the timer is due: it fires the delay after the last sale, not
    // after the sale that armed it, and not at once.
    let restock = Component::start("restock", &settings, &[]);
    testkit::eventually("the product is restocked", WAIT, || async {
        shop.stock(product).await == QUANTITY
    })
    .await;

    let fired: Vec<(DateTime<Utc>, Option<DateTime<Utc>>)> =
        sqlx::query_as("SELECT fired_at, done_at FROM restocks WHERE product_id = $1")
            .bind(product)
            .fetch_all(&flow)
            .await
            .unwrap();
    assert_eq!(fired.len(), 1, "one restock for the sell-out: {fired:?}");
    let (fired_at, done_at) = fired[0];
    assert!(done_at.is_some());
    let after = fired_at - last_sale;
    assert!(
        after >= chrono::Duration::milliseconds(DELAY_MS),
        "fired {after} after the last sale"
    );
    let timers: i64 = sqlx::query_scalar("SELECT count(*) FROM restock_timers")
        .fetch_one(&flow)
        .await
        .unwrap();
    assert_eq!(timers, 0, "the fired timer is gone");

    restock.kill().await;
    saga.kill().await;
    provider.stop();
    shop.stop().await;
    cleanup(&settings).await;
}
