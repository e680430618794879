//! Each query's published answer equals an oracle computed with SQL over the source databases,
//! after thousands of random inserts, updates and deletes across the four databases, and again
//! after the engine was killed (-9) and restarted while the changes kept flowing; the result
//! changes never contradict each other and their sequence numbers continue across the restart.

mod common;

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use common::{await_oracle, Stack};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use sqlx::PgPool;

const DELAY_MS: i64 = 30 * 60 * 1000;
const ROUNDS: usize = 2000;

/// The rows the workload knows of, per table.
#[derive(Default)]
struct Known {
    products: Vec<i64>,
    customers: Vec<i64>,
    orders: Vec<uuid::Uuid>,
    reviews: Vec<i64>,
}

struct Workload {
    products: PgPool,
    customers: PgPool,
    orders: PgPool,
    reviews: PgPool,
    known: Known,
    rng: StdRng,
}

impl Workload {
    fn new(stack: &Stack, seed: u64) -> Self {
        Self {
            products: stack.pool("products").clone(),
            customers: stack.pool("customers").clone(),
            orders: stack.pool("orders").clone(),
            reviews: stack.pool("reviews").clone(),
            known: Known::default(),
            rng: StdRng::seed_from_u64(seed),
        }
    }

    fn pick<T: Copy>(rng: &mut StdRng, items: &[T]) -> Option<T> {
        (!items.is_empty()).then(|| items[rng.random_range(0..items.len())])
    }

    /// Minutes before now for an order's creation: either well inside the delay or well past
    /// it, so no order crosses the line while the test runs.
    fn age_minutes(&mut self) -> i64 {
        if self.rng.random_bool(0.5) {
            self.rng.random_range(0..15)
        } else {
            self.rng.random_range(45..120)
        }
    }

    async fn step(&mut self) {
        let rng = &mut self.rng;
        match rng.random_range(0..100) {
            // products
            0..=9 => {
                let id: i64 = sqlx::query_scalar(
                    "INSERT INTO products (name, price, stock) VALUES ($1, $2::numeric / 100, $3) RETURNING id",
                )
                .bind(format!("product {}", rng.random_range(0..1000)))
                .bind(rng.random_range(100..100_000i64))
                .bind(rng.random_range(0..40i32))
                .fetch_one(&self.products)
                .await
                .unwrap();
                self.known.products.push(id);
            }
            10..=29 => {
                if let Some(id) = Self::pick(rng, &self.known.products) {
                    sqlx::query("UPDATE products SET stock = $2, updated_at = now() WHERE id = $1")
                        .bind(id)
                        .bind(rng.random_range(0..40i32))
                        .execute(&self.products)
                        .await
                        .unwrap();
                }
            }
            30..=32 => {
                if let Some(id) = Self::pick(rng, &self.known.products) {
                    sqlx::query("UPDATE products SET name = $2, price = price + 1 WHERE id = $1")
                        .bind(id)
                        .bind(format!("renamed {}", rng.random_range(0..1000)))
                        .execute(&self.products)
                        .await
                        .unwrap();
                }
            }
            33..=34 => {
                if let Some(id) = Self::pick(rng, &self.known.products) {
                    // Seeded products hold reservations (a foreign key); those stay.
                    sqlx::query(
                        "DELETE FROM products WHERE id = $1
                           AND NOT EXISTS (SELECT 1 FROM reservations WHERE product_id = $1)",
                    )
                    .bind(id)
                    .execute(&self.products)
                    .await
                    .unwrap();
                    self.known.products.retain(|p| *p != id);
                }
            }
            // customers
            35..=41 => {
                let tier = ["Gold", "Silver", "Bronze"][rng.random_range(0..3)];
                let id: i64 = sqlx::query_scalar(
                    "INSERT INTO customers (name, email, tier) VALUES ($1, 'c@example.com', $2) RETURNING id",
                )
                .bind(format!("customer {}", rng.random_range(0..1000)))
                .bind(tier)
                .fetch_one(&self.customers)
                .await
                .unwrap();
                self.known.customers.push(id);
            }
            42..=47 => {
                if let Some(id) = Self::pick(rng, &self.known.customers) {
                    let tier = ["Gold", "Silver", "Bronze"][rng.random_range(0..3)];
                    sqlx::query("UPDATE customers SET tier = $2, name = $3 WHERE id = $1")
                        .bind(id)
                        .bind(tier)
                        .bind(format!("customer {}", rng.random_range(0..1000)))
                        .execute(&self.customers)
                        .await
                        .unwrap();
                }
            }
            48..=49 => {
                if let Some(id) = Self::pick(rng, &self.known.customers) {
                    sqlx::query("DELETE FROM customers WHERE id = $1")
                        .bind(id)
                        .execute(&self.customers)
                        .await
                        .unwrap();
                    self.known.customers.retain(|c| *c != id);
                }
            }
            // orders
            50..=64 => {
                let (Some(customer), Some(product)) = (
                    Self::pick(rng, &self.known.customers),
                    Self::pick(rng, &self.known.products),
                ) else {
                    return;
                };
                let status =
                    ["Processing", "Processing", "Pending", "Shipped"][rng.random_range(0..4)];
                let id = uuid::Uuid::new_v4();
                let quantity = rng.random_range(1..30i32);
                let age = self.age_minutes();
                sqlx::query(
                    "INSERT INTO orders (id, customer_id, product_id, quantity, status, created_at)
                     VALUES ($1, $2, $3, $4, $5, now() - make_interval(mins => $6::int))",
                )
                .bind(id)
                .bind(customer)
                .bind(product)
                .bind(quantity)
                .bind(status)
                .bind(age as i32)
                .execute(&self.orders)
                .await
                .unwrap();
                self.known.orders.push(id);
            }
            65..=74 => {
                if let Some(id) = Self::pick(rng, &self.known.orders) {
                    let status =
                        ["Processing", "Shipped", "Delivered", "Cancelled"][rng.random_range(0..4)];
                    sqlx::query(
                        "UPDATE orders SET status = $2, quantity = quantity + $3 WHERE id = $1",
                    )
                    .bind(id)
                    .bind(status)
                    .bind(rng.random_range(0..3i32))
                    .execute(&self.orders)
                    .await
                    .unwrap();
                }
            }
            75..=77 => {
                if let Some(id) = Self::pick(rng, &self.known.orders) {
                    sqlx::query("DELETE FROM orders WHERE id = $1")
                        .bind(id)
                        .execute(&self.orders)
                        .await
                        .unwrap();
                    self.known.orders.retain(|o| *o != id);
                }
            }
            // reviews
            78..=91 => {
                let product = Self::pick(rng, &self.known.products).unwrap_or(1);
                let id: i64 = sqlx::query_scalar(
                    "INSERT INTO reviews (product_id, customer_id, rating, text) VALUES ($1, 1, $2, 'ok') RETURNING id",
                )
                .bind(product)
                .bind(rng.random_range(1..=5i16))
                .fetch_one(&self.reviews)
                .await
                .unwrap();
                self.known.reviews.push(id);
            }
            92..=95 => {
                if let Some(id) = Self::pick(rng, &self.known.reviews) {
                    sqlx::query("UPDATE reviews SET rating = $2 WHERE id = $1")
                        .bind(id)
                        .bind(rng.random_range(1..=5i16))
                        .execute(&self.reviews)
                        .await
                        .unwrap();
                }
            }
            _ => {
                if let Some(id) = Self::pick(rng, &self.known.reviews) {
                    sqlx::query("DELETE FROM reviews WHERE id = $1")
                        .bind(id)
                        .execute(&self.reviews)
                        .await
                        .unwrap();
                    self.known.reviews.retain(|r| *r != id);
                }
            }
        }
    }

    /// Starts with what the seed loaded.
    async fn load_known(&mut self) {
        self.known.products = sqlx::query_scalar("SELECT id FROM products")
            .fetch_all(&self.products)
            .await
            .unwrap();
        self.known.customers = sqlx::query_scalar("SELECT id FROM customers")
            .fetch_all(&self.customers)
            .await
            .unwrap();
        self.known.orders = sqlx::query_scalar("SELECT id FROM orders")
            .fetch_all(&self.orders)
            .await
            .unwrap();
        self.known.reviews = sqlx::query_scalar("SELECT id FROM reviews")
            .fetch_all(&self.reviews)
            .await
            .unwrap();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn answers_equal_the_sql_oracle_before_and_after_a_kill_9() {
    let mut stack = Stack::start(&[("QUERIES_GOLD_ORDER_DELAY_MS", &DELAY_MS.to_string())]).await;
    stack.start_engine();
    let mut workload = Workload::new(&stack, 11);
    workload.load_known().await;
    for _ in 0..ROUNDS {
        workload.step().await;
    }
    await_oracle(&stack, DELAY_MS, Duration::from_secs(120)).await;
    let before_kill: u64 = {
        let mut n = 0;
        for q in queries::declared::ALL {
            n += stack.changes(q).await.len() as u64;
        }
        n
    };

    // The same again, with the engine killed (-9) while the changes flow, then restarted.
    let done = Arc::new(AtomicUsize::new(0));
    let background = {
        let done = done.clone();
        tokio::spawn(async move {
            for _ in 0..ROUNDS {
                workload.step().await;
                done.fetch_add(1, Ordering::Relaxed);
            }
        })
    };
    testkit::eventually(
        "a quarter of the second run",
        Duration::from_secs(120),
        || {
            let n = done.load(Ordering::Relaxed);
            async move { n >= ROUNDS / 4 }
        },
    )
    .await;
    stack.kill_engine();
    testkit::eventually("half of the second run", Duration::from_secs(120), || {
        let n = done.load(Ordering::Relaxed);
        async move { n >= ROUNDS / 2 }
    })
    .await;
    stack.start_engine();
    background.await.unwrap();
    await_oracle(&stack, DELAY_MS, Duration::from_secs(120)).await;
    let mut after = 0;
    for q in queries::declared::ALL {
        after += stack.changes(q).await.len() as u64;
    }
    assert!(
        after > before_kill,
        "the restarted engine published nothing"
    );
    stack.cleanup().await;
}
