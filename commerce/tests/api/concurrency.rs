//! No oversell: many orders at once for too little stock.

use std::collections::HashSet;
use std::sync::atomic::{AtomicBool, AtomicI64, Ordering};
use std::sync::Arc;

use futures::future::join_all;
use reqwest::StatusCode;
use uuid::Uuid;

use crate::helpers::Shop;

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn two_hundred_concurrent_orders_for_fifty_in_stock_sell_exactly_fifty() {
    // The 200 reservations queue on one row lock: on a loaded machine the last can wait
    // longer than the default 5 s for the products service, and a timed-out order is a 503,
    // not the 409 counted here (the timeout path has its own test in orders.rs).
    let mut settings = crate::helpers::test_settings();
    settings.orders_products_timeout_ms = 60_000;
    settings.orders_pending_timeout_ms = 120_000;
    let shop = Shop::start_with(settings).await;
    let product = shop.product(50).await;

    // Watches the stock while the orders run: it must never be seen below zero.
    let lowest = Arc::new(AtomicI64::new(i64::MAX));
    let done = Arc::new(AtomicBool::new(false));
    let watcher = {
        let (pool, lowest, done) = (shop.products.pool.clone(), lowest.clone(), done.clone());
        tokio::spawn(async move {
            while !done.load(Ordering::Relaxed) {
                let stock: i32 = sqlx::query_scalar("SELECT stock FROM products WHERE id = $1")
                    .bind(product)
                    .fetch_one(&pool)
                    .await
                    .unwrap();
                lowest.fetch_min(i64::from(stock), Ordering::Relaxed);
                tokio::task::yield_now().await;
            }
        })
    };

    let answers = join_all((0..200).map(|i| shop.order(1 + i % 5, product, 1))).await;
    done.store(true, Ordering::Relaxed);
    watcher.await.unwrap();

    let created: Vec<Uuid> = answers
        .iter()
        .filter(|(status, _)| *status == StatusCode::CREATED)
        .map(|(_, body)| body["id"].as_str().unwrap().parse().unwrap())
        .collect();
    let conflicts = answers
        .iter()
        .filter(|(status, body)| {
            *status == StatusCode::CONFLICT
                && body["error"]
                    .as_str()
                    .unwrap_or_default()
                    .contains("insufficient stock")
        })
        .count();
    assert_eq!(created.len(), 50, "exactly the stock is sold");
    assert_eq!(
        conflicts, 150,
        "every other order is a 409 for insufficient stock"
    );
    assert_eq!(shop.stock(product).await, 0);
    assert!(lowest.load(Ordering::Relaxed) >= 0);

    let held: Vec<(Uuid, i32)> = sqlx::query_as(
        "SELECT order_id, quantity FROM reservations WHERE product_id = $1 AND status = 'held'",
    )
    .bind(product)
    .fetch_all(&shop.products.pool)
    .await
    .unwrap();
    let held_ids: HashSet<Uuid> = held.iter().map(|(id, _)| *id).collect();
    assert_eq!(held.len(), 50, "one reservation per sold unit, no more");
    assert_eq!(
        held_ids,
        created.iter().copied().collect::<HashSet<_>>(),
        "each success holds exactly one reservation"
    );
    assert!(held.iter().all(|(_, quantity)| *quantity == 1));

    let processing: i64 =
        sqlx::query_scalar("SELECT count(*) FROM orders WHERE status = 'Processing'")
            .fetch_one(&shop.orders.pool)
            .await
            .unwrap();
    assert_eq!(processing, 50);
    shop.stop().await;
}
