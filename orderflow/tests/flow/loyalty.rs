//! Loyalty points: two exactly-once instances in one group, every batch delivered twice (the
//! redelivery hook) and one instance killed with SIGKILL midway (a rebalance), award each
//! order once; the naive mode under the same redelivery over-counts.

use std::collections::HashMap;

use sqlx::PgPool;
use uuid::Uuid;

use crate::helpers::*;

const ORDERS: usize = 60;
const POINTS_PER_ITEM: i64 = 10;

async fn loyalty_pool(settings: &orderflow::configuration::Settings, database: &str) -> PgPool {
    outbox::database::prepare(
        &settings.server_options().unwrap(),
        database,
        &orderflow::loyalty::MIGRATOR,
        4,
    )
    .await
    .expect("loyalty database")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_instances_under_redelivery_count_each_order_once_and_naive_mode_over_counts() {
    let shop = Shop::start().await;
    let settings = flow_settings(&shop).await;
    let mut naive = settings.clone();
    naive.loyalty_database = testkit::unique("orderflow_test_naive");
    naive.loyalty_group = testkit::unique("orderflow_test_naive");
    naive.loyalty_mode = "naive".to_owned();
    start_at_end(&naive, &naive.loyalty_group).await;
    let exact_pool = loyalty_pool(&settings, &settings.loyalty_database).await;
    let naive_pool = loyalty_pool(&naive, &naive.loyalty_database).await;

    let redeliver = [("ORDERFLOW_REDELIVER", "true")];
    let exact_a = Component::start("loyalty", &settings, &redeliver);
    let exact_b = Component::start("loyalty", &settings, &redeliver);
    let naive_a = Component::start("loyalty", &naive, &redeliver);

    // Customers of this test alone: the topic carries every test's orders.
    let base = 2_000_000_000 + (Uuid::new_v4().as_u128() % 1_000_000_000) as i64;
    let product = shop.product(100_000).await;
    let mut expected: HashMap<i64, i64> = HashMap::new();
    let mut exact_b = Some(exact_b);
    for i in 0..ORDERS {
        let customer = base + (i % 7) as i64;
        let quantity = 1 + (i % 3) as i64;
        shop.order(customer, product, quantity).await;
        *expected.entry(customer).or_default() += quantity * POINTS_PER_ITEM;
        if i == ORDERS / 2 {
            // SIGKILL of one instance: its partitions move to the other.
            exact_b.take().unwrap().kill().await;
        }
    }
    let exact_c = Component::start("loyalty", &settings, &redeliver);

    let customers: Vec<i64> = expected.keys().copied().collect();
    let ledger = |pool: PgPool, table: &'static str| {
        let customers = customers.clone();
        async move {
            sqlx::query_scalar::<_, i64>(&format!(
                "SELECT count(*) FROM {table} WHERE customer_id = ANY($1)"
            ))
            .bind(&customers)
            .fetch_one(&pool)
            .await
            .unwrap()
        }
    };
    testkit::eventually("every order reached the ledger", WAIT, || async {
        ledger(exact_pool.clone(), "loyalty_ledger").await >= ORDERS as i64
    })
    .await;
    // Quiescence: both groups committed everything (each batch was delivered twice first).
    for (s, group) in [
        (&settings, &settings.loyalty_group),
        (&naive, &naive.loyalty_group),
    ] {
        testkit::eventually(&format!("{group} has no lag"), WAIT, || async {
            lag(s, group).await == Some(0)
        })
        .await;
    }

    assert_eq!(
        ledger(exact_pool.clone(), "loyalty_ledger").await,
        ORDERS as i64
    );
    let points: Vec<(i64, i64)> = sqlx::query_as(
        "SELECT customer_id, points FROM loyalty_accounts WHERE customer_id = ANY($1)",
    )
    .bind(&customers)
    .fetch_all(&exact_pool)
    .await
    .unwrap();
    assert_eq!(
        points.into_iter().collect::<HashMap<_, _>>(),
        expected,
        "points exactly once"
    );

    let naive_entries = ledger(naive_pool.clone(), "loyalty_naive_ledger").await;
    let naive_points: i64 = sqlx::query_scalar(
        "SELECT COALESCE(sum(points), 0)::bigint FROM loyalty_naive_accounts WHERE customer_id = ANY($1)",
    )
    .bind(&customers)
    .fetch_one(&naive_pool)
    .await
    .unwrap();
    let total: i64 = expected.values().sum();
    println!(
        "loyalty: exactly-once {ORDERS} entries, {total} points; naive {naive_entries} entries, {naive_points} points"
    );
    assert!(
        naive_entries > ORDERS as i64,
        "naive mode counts redeliveries again"
    );
    assert!(naive_points > total, "naive mode over-counts points");

    for c in [exact_a, exact_c, naive_a] {
        c.kill().await;
    }
    shop.stop().await;
    drop_databases(&[naive.loyalty_database.clone()]).await;
    cleanup(&settings).await;
}
