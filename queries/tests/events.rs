//! Business events on the real stack: a product's stock going 25 → 15 → 12 → 25 → 3 gives
//! exactly one low-stock event per entry and a deleted result per exit, and a critical-stock
//! event on entry; a Gold customer's order becomes delayed when the (shortened) delay passes
//! with no data change, and leaves when it ships. The engine's log never reports the end of a
//! partition (what its start-up read-back waits for) as an error. Source changes it can never
//! read (not Avro; a status the queries do not know) go to its dead-letter topic with the
//! reason, once each also across a restart, and the engine goes on.

mod common;

use std::time::Duration;

use common::Stack;
use queries::declared::{CRITICAL_STOCK, DELAYED_GOLD_ORDERS, LOW_STOCK, PRODUCT_CATALOGUE};
use queries::results::Op;
use queries::row::Cell;
use sqlx::Row as _;

const DELAY_MS: u64 = 4000;

/// Waits until the catalogue shows the product with this stock: the engine applied the change
/// (every query's changes of a step are published in one transaction).
async fn await_stock(stack: &Stack, product: i64, stock: i64) {
    testkit::eventually(
        &format!("the catalogue shows stock {stock}"),
        Duration::from_secs(60),
        || async move {
            stack
                .published(&PRODUCT_CATALOGUE)
                .await
                .get(&product.to_string())
                .is_some_and(|row| row[3] == Cell::Long(stock))
        },
    )
    .await;
}

async fn ops(stack: &Stack, query: &'static queries::query::Query, key: &str) -> Vec<Op> {
    stack
        .changes(query)
        .await
        .into_iter()
        .filter(|c| c.key == key)
        .map(|c| c.op)
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn stock_thresholds_and_delayed_gold_orders() {
    let delay = DELAY_MS.to_string();
    let mut stack = Stack::start(&[("QUERIES_GOLD_ORDER_DELAY_MS", &delay)]).await;
    stack.start_engine();

    // Threshold events.
    let product: i64 = sqlx::query_scalar(
        "INSERT INTO products (name, price, stock) VALUES ('Lantern', 24.50, 25) RETURNING id",
    )
    .fetch_one(stack.pool("products"))
    .await
    .unwrap();
    let key = product.to_string();
    for stock in [25, 15, 12, 25, 3] {
        sqlx::query("UPDATE products SET stock = $2 WHERE id = $1")
            .bind(product)
            .bind(stock as i32)
            .execute(stack.pool("products"))
            .await
            .unwrap();
        await_stock(&stack, product, stock).await;
    }
    // 25: outside; 15: enters low (one event); 12: inside, nothing; 25: leaves low (deleted);
    // 3: enters low again and enters critical.
    assert_eq!(
        ops(&stack, &LOW_STOCK, &key).await,
        vec![Op::Added, Op::Deleted, Op::Added]
    );
    assert_eq!(ops(&stack, &CRITICAL_STOCK, &key).await, vec![Op::Added]);

    // Delayed Gold orders: an order placed now, then no data change at all.
    let customer: i64 = sqlx::query_scalar(
        "INSERT INTO customers (name, email, tier) VALUES ('Greta', 'g@example.com', 'Gold') RETURNING id",
    )
    .fetch_one(stack.pool("customers"))
    .await
    .unwrap();
    let order = uuid::Uuid::new_v4();
    let created_ms: i64 = sqlx::query(
        "INSERT INTO orders (id, customer_id, product_id, quantity, status)
         VALUES ($1, $2, $3, 1, 'Processing')
         RETURNING floor(extract(epoch FROM created_at) * 1000)::bigint AS created_ms",
    )
    .bind(order)
    .bind(customer)
    .bind(product)
    .fetch_one(stack.pool("orders"))
    .await
    .unwrap()
    .get("created_ms");
    let key = order.to_string();
    testkit::eventually(
        "the Gold order shows as delayed",
        Duration::from_secs(60),
        || {
            let stack = &stack;
            let key = key.clone();
            async move {
                stack
                    .published(&DELAYED_GOLD_ORDERS)
                    .await
                    .contains_key(&key)
            }
        },
    )
    .await;
    // It appeared no earlier than the delay after its creation (as seen by the result's
    // emission time), and with nothing written in between.
    let appeared = stack
        .changes(&DELAYED_GOLD_ORDERS)
        .await
        .into_iter()
        .find(|c| c.key == key)
        .unwrap();
    assert_eq!(appeared.op, Op::Added);
    assert!(
        appeared.emitted_at_ms >= created_ms + DELAY_MS as i64,
        "published at {} for an order created at {created_ms} with a {DELAY_MS} ms delay",
        appeared.emitted_at_ms
    );

    sqlx::query("UPDATE orders SET status = 'Shipped' WHERE id = $1")
        .bind(order)
        .execute(stack.pool("orders"))
        .await
        .unwrap();
    testkit::eventually(
        "the shipped order leaves the delayed orders",
        Duration::from_secs(60),
        || {
            let stack = &stack;
            let key = key.clone();
            async move {
                !stack
                    .published(&DELAYED_GOLD_ORDERS)
                    .await
                    .contains_key(&key)
            }
        },
    )
    .await;
    assert_eq!(
        ops(&stack, &DELAYED_GOLD_ORDERS, &key).await,
        vec![Op::Added, Op::Deleted]
    );
    // Start-up read every result topic back to its end: the end of a partition is the marker
    // the read-back asks for, never logged as an error.
    let log = stack.engine.as_ref().unwrap().log();
    assert!(log.contains("read back what was published"), "{log}");
    assert!(
        !log.contains("No more messages") && !log.contains("Partition EOF"),
        "the engine logged the end of a partition as an error:\n{log}"
    );

    // Bad input: a record on the products change topic that is not Avro at all, and an order
    // whose status the queries do not know (the test drops the table's CHECK to write one).
    let products_topic = format!("{}.products.public.products", stack.prefix);
    let producer: rdkafka::producer::FutureProducer = topics::kafka::producer_config(&stack.kafka)
        .create()
        .unwrap();
    producer
        .send(
            rdkafka::producer::FutureRecord::to(&products_topic)
                .key("{\"id\":999999}")
                .payload("not a change record"),
            Duration::from_secs(10),
        )
        .await
        .map_err(|(e, _)| e)
        .unwrap();
    sqlx::query("ALTER TABLE orders DROP CONSTRAINT orders_status_check")
        .execute(stack.pool("orders"))
        .await
        .unwrap();
    sqlx::query(
        "INSERT INTO orders (id, customer_id, product_id, quantity, status)
         VALUES ($1, $2, $3, 1, 'Teleported')",
    )
    .bind(uuid::Uuid::new_v4())
    .bind(customer)
    .bind(product)
    .execute(stack.pool("orders"))
    .await
    .unwrap();
    // The engine goes on: a later product change still arrives.
    sqlx::query("UPDATE products SET stock = 40 WHERE id = $1")
        .bind(product)
        .execute(stack.pool("products"))
        .await
        .unwrap();
    await_stock(&stack, product, 40).await;
    let expect_two = |dead: &[(String, String, String)]| {
        let keys: std::collections::BTreeSet<&str> = dead.iter().map(|d| d.0.as_str()).collect();
        assert_eq!(keys.len(), 2, "one entry per bad record: {dead:?}");
        assert!(
            dead.iter()
                .any(|(_, reason, topic)| *topic == products_topic
                    && reason.contains("not a readable change record")),
            "{dead:?}"
        );
        assert!(
            dead.iter().any(
                |(_, reason, topic)| topic.ends_with(".orders.public.orders")
                    && reason.contains("cannot read")
                    && reason.contains("Teleported")
            ),
            "{dead:?}"
        );
    };
    testkit::eventually(
        "both bad records dead-lettered",
        Duration::from_secs(30),
        || {
            let stack = &stack;
            async move {
                let dead = stack.dead_letters().await;
                dead.len() >= 2
            }
        },
    )
    .await;
    expect_two(&stack.dead_letters().await);
    testkit::eventually(
        "the engine's metrics count two dead-lettered source changes",
        Duration::from_secs(10),
        || {
            let url = stack.engine_metrics.clone();
            async move {
                let scrape = common::scrape(&url).await;
                scrape.and_then(|s| common::total(&s, "queries_source_dead_lettered_total", &[]))
                    == Some(2.0)
            }
        },
    )
    .await;

    // A restart replays the sources and meets both again: the same two keys, nothing else.
    stack.kill_engine();
    stack.start_engine();
    sqlx::query("UPDATE products SET stock = 41 WHERE id = $1")
        .bind(product)
        .execute(stack.pool("products"))
        .await
        .unwrap();
    await_stock(&stack, product, 41).await;
    expect_two(&stack.dead_letters().await);
    stack.cleanup().await;
}
