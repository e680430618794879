//! Orders placed through the commerce services (HTTP → orders → reservation at products →
//! confirm, each step with its outbox row) at a fixed concurrency, against a bare loop of the
//! same conditional `UPDATE products SET stock = stock - 1 WHERE id = $1 AND stock >= 1` on
//! the same PostgreSQL, in alternating rounds. Every round sells exactly its stock and checks
//! that nothing was oversold: stock ends at 0 and never below, the held reservations (or
//! successful updates) equal the stock, and the extra attempts are refused. A third side runs
//! the bare UPDATE in a transaction with a `pg_notify`, the part of an outbox write that
//! serialises commits.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Instant;

use anyhow::{bail, ensure, Context};
use commerce::Service;
use futures::stream::{self, StreamExt};
use serde_json::{json, Value};
use sqlx::postgres::PgPoolOptions;
use sqlx::{Connection, PgPool};
use uuid::Uuid;

use crate::service::Running;

#[derive(clap::Args)]
pub struct Options {
    /// Orders that succeed per round (the round's total stock).
    #[arg(long, default_value_t = 10_000)]
    orders: u64,
    /// Concurrent clients (HTTP requests in flight, or bare UPDATE loops).
    #[arg(long, default_value_t = 64)]
    concurrency: usize,
    /// Products the orders are spread over (round-robin), the same for both sides.
    #[arg(long, default_value_t = 10)]
    products: u64,
    /// Rounds of each side, alternating which goes first.
    #[arg(long, default_value_t = 3)]
    rounds: usize,
    /// Database connections of each commerce service and of the bare loop.
    #[arg(long, default_value_t = 32)]
    pool_size: u32,
    /// Run the outbox relays in the services (publishing to Kafka while orders are placed);
    /// `--relay false` measures the API and database path alone.
    #[arg(long, default_value_t = true, action = clap::ArgAction::Set)]
    relay: bool,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Side {
    Service = 0,
    Bare = 1,
    BareNotify = 2,
}

impl Side {
    fn name(self) -> &'static str {
        match self {
            Side::Service => "commerce orders (HTTP, 2 services, outbox)",
            Side::Bare => "bare conditional UPDATE",
            Side::BareNotify => "bare conditional UPDATE + pg_notify, one transaction",
        }
    }
}

/// One round's outcome.
struct Round {
    per_second: f64,
    refused: u64,
}

pub async fn run(options: Options) -> anyhow::Result<()> {
    ensure!(
        options.products > 0 && options.orders >= options.products,
        "--orders must be at least --products"
    );
    let run = Uuid::new_v4().simple().to_string();
    let mut settings = commerce::configuration::load()?;
    settings.products_database = format!("commerce_bench_products_{run}");
    settings.orders_database = format!("commerce_bench_orders_{run}");
    settings.products_listen_addr = "127.0.0.1:0".to_owned();
    settings.orders_listen_addr = "127.0.0.1:0".to_owned();
    settings.commerce_seed = false;
    settings.commerce_pool_size = options.pool_size;
    settings.commerce_outbox_relay = options.relay;
    let products = Running::start(&settings, Service::Products).await?;
    settings.orders_products_url = products.base_url.clone();
    let orders = Running::start(&settings, Service::Orders).await?;
    let bare_pool = PgPoolOptions::new()
        .max_connections(options.pool_size)
        .connect_with(settings.database_options(Service::Products)?)
        .await?;
    let client = reqwest::Client::builder()
        .pool_max_idle_per_host(options.concurrency)
        .build()?;

    let per_product = options.orders / options.products;
    let stock = per_product * options.products;
    println!(
        "orders: {stock} orders per round over {} products ({per_product} in stock each) + {} attempts too many, concurrency {}, {} database connections per side, {} rounds each, alternating",
        options.products, options.concurrency, options.concurrency, options.pool_size, options.rounds
    );
    println!(
        "outbox relays {} while orders are placed",
        if options.relay {
            "publish to Kafka"
        } else {
            "off (events stay in the outbox)"
        }
    );
    println!("| round | side | orders/s | refused (409) | oversold |");
    println!("|---|---|---|---|---|");
    let mut rates: [Vec<f64>; 3] = Default::default();
    for round in 0..options.rounds {
        // Alternate which side goes first, so neither always runs on a warmer server.
        let mut order = [Side::Service, Side::Bare, Side::BareNotify];
        order.rotate_left(round % 3);
        for side in order {
            let ids =
                create_products(&client, &products.base_url, options.products, per_product).await?;
            let outcome = match side {
                Side::Service => {
                    service_round(&client, &orders.base_url, &ids, stock, options.concurrency)
                        .await?
                }
                Side::Bare => {
                    bare_round(&bare_pool, &ids, stock, options.concurrency, false).await?
                }
                Side::BareNotify => {
                    bare_round(&bare_pool, &ids, stock, options.concurrency, true).await?
                }
            };
            let oversold = check(&products.pool, &ids, per_product, side == Side::Service).await?;
            ensure!(oversold == 0, "{oversold} oversold");
            ensure!(
                outcome.refused == options.concurrency as u64,
                "{} refused, expected {}",
                outcome.refused,
                options.concurrency
            );
            println!(
                "| {} | {} | {:.0} | {} | {oversold} |",
                round + 1,
                side.name(),
                outcome.per_second,
                outcome.refused
            );
            rates[side as usize].push(outcome.per_second);
        }
    }
    let [mut service_rates, mut bare_rates, mut notify_rates] = rates;
    let (service_median, service_low, service_high) = summary(&mut service_rates);
    let (bare_median, bare_low, bare_high) = summary(&mut bare_rates);
    let (notify_median, notify_low, notify_high) = summary(&mut notify_rates);
    println!();
    println!("| side | median/s | range/s | vs bare (median) |");
    println!("|---|---|---|---|");
    for (side, median, low, high) in [
        (Side::Service, service_median, service_low, service_high),
        (Side::Bare, bare_median, bare_low, bare_high),
        (Side::BareNotify, notify_median, notify_low, notify_high),
    ] {
        println!(
            "| {} | {median:.0} | {low:.0}–{high:.0} | {:.2} |",
            side.name(),
            median / bare_median
        );
    }
    let goal = 2_000f64.min(0.5 * bare_median);
    println!(
        "goal: ≥ {goal:.0} orders/s (the lower of 2000 and 0.5 × bare): {}",
        if service_median >= goal {
            "met"
        } else {
            "not met"
        }
    );

    bare_pool.close().await;
    orders.stop().await?;
    products.stop().await?;
    let mut admin = sqlx::PgConnection::connect_with(&settings.server_options()?).await?;
    for name in [&settings.products_database, &settings.orders_database] {
        sqlx::query(&format!("DROP DATABASE IF EXISTS \"{name}\" WITH (FORCE)"))
            .execute(&mut admin)
            .await?;
    }
    Ok(())
}

async fn create_products(
    client: &reqwest::Client,
    products: &str,
    count: u64,
    stock: u64,
) -> anyhow::Result<Vec<i64>> {
    let mut ids = Vec::new();
    for i in 0..count {
        let created: Value = client
            .post(format!("{products}/products"))
            .json(&json!({ "name": format!("bench {i}"), "price": 1, "stock": stock }))
            .send()
            .await?
            .error_for_status()?
            .json()
            .await?;
        ids.push(
            created["id"]
                .as_i64()
                .context("created product has no id")?,
        );
    }
    Ok(ids)
}

/// `stock` orders plus one too many per client, round-robin over the products.
async fn service_round(
    client: &reqwest::Client,
    orders: &str,
    products: &[i64],
    stock: u64,
    concurrency: usize,
) -> anyhow::Result<Round> {
    let refused = Arc::new(AtomicU64::new(0));
    let url = format!("{orders}/orders");
    let started = Instant::now();
    let results: Vec<anyhow::Result<()>> = stream::iter(0..stock + concurrency as u64)
        .map(|i| {
            let (client, url, refused) = (client.clone(), url.clone(), refused.clone());
            let product = products[(i % products.len() as u64) as usize];
            async move {
                let response = client
                    .post(url)
                    .json(&json!({ "customerId": 1 + i % 5, "productId": product, "quantity": 1 }))
                    .send()
                    .await?;
                match response.status().as_u16() {
                    201 => Ok(()),
                    409 => {
                        refused.fetch_add(1, Ordering::Relaxed);
                        Ok(())
                    }
                    other => bail!("POST /orders answered {other}: {}", response.text().await?),
                }
            }
        })
        .buffer_unordered(concurrency)
        .collect()
        .await;
    let elapsed = started.elapsed();
    results.into_iter().collect::<anyhow::Result<()>>()?;
    let refused = refused.load(Ordering::Relaxed);
    Ok(Round {
        per_second: (stock + concurrency as u64 - refused) as f64 / elapsed.as_secs_f64(),
        refused,
    })
}

/// The same number of attempts as bare statements on `concurrency` loops over one pool. With
/// `notify`, each UPDATE runs in a transaction with a `pg_notify`, as every outbox write does:
/// NOTIFY takes a database-wide lock at commit, which this side measures.
async fn bare_round(
    pool: &PgPool,
    products: &[i64],
    stock: u64,
    concurrency: usize,
    notify: bool,
) -> anyhow::Result<Round> {
    let next = Arc::new(AtomicU64::new(0));
    let refused = Arc::new(AtomicU64::new(0));
    let total = stock + concurrency as u64;
    let started = Instant::now();
    let loops: Vec<_> = (0..concurrency)
        .map(|_| {
            let (pool, next, refused, products) = (pool.clone(), next.clone(), refused.clone(), products.to_vec());
            tokio::spawn(async move {
                loop {
                    let i = next.fetch_add(1, Ordering::Relaxed);
                    if i >= total {
                        return anyhow::Ok(());
                    }
                    let product = products[(i % products.len() as u64) as usize];
                    let update = sqlx::query(
                        "UPDATE products SET stock = stock - 1, updated_at = now() WHERE id = $1 AND stock >= 1",
                    )
                    .bind(product);
                    let updated = if notify {
                        let mut tx = pool.begin().await?;
                        let updated = update.execute(&mut *tx).await?.rows_affected();
                        sqlx::query("SELECT pg_notify('bench_orders', '')").execute(&mut *tx).await?;
                        tx.commit().await?;
                        updated
                    } else {
                        update.execute(&pool).await?.rows_affected()
                    };
                    if updated == 0 {
                        refused.fetch_add(1, Ordering::Relaxed);
                    }
                }
            })
        })
        .collect();
    for task in loops {
        task.await??;
    }
    let elapsed = started.elapsed();
    let refused = refused.load(Ordering::Relaxed);
    Ok(Round {
        per_second: (total - refused) as f64 / elapsed.as_secs_f64(),
        refused,
    })
}

/// Units sold beyond the stock: every product must end at 0, and for the service side its held
/// reservations must add up to exactly its stock.
async fn check(pool: &PgPool, products: &[i64], stock: u64, service: bool) -> anyhow::Result<i64> {
    let mut oversold = 0;
    for product in products {
        let left: i32 = sqlx::query_scalar("SELECT stock FROM products WHERE id = $1")
            .bind(product)
            .fetch_one(pool)
            .await?;
        ensure!(left == 0, "product {product} ends with stock {left}, not 0");
        if service {
            let held: i64 = sqlx::query_scalar(
                "SELECT COALESCE(sum(quantity), 0) FROM reservations WHERE product_id = $1 AND status = 'held'",
            )
            .bind(product)
            .fetch_one(pool)
            .await?;
            oversold += held - stock as i64;
        }
    }
    Ok(oversold)
}

/// (median, lowest, highest).
fn summary(rates: &mut [f64]) -> (f64, f64, f64) {
    rates.sort_by(f64::total_cmp);
    let n = rates.len();
    let median = if n % 2 == 1 {
        rates[n / 2]
    } else {
        (rates[n / 2 - 1] + rates[n / 2]) / 2.0
    };
    (median, rates[0], rates[n - 1])
}
