//! The shipped seed data, loaded once into each service's empty database on its first start
//! (a `seed_runs` row marks it loaded; concurrent first starts load it once). The seed's
//! orders have fixed ids, and the products seed holds their reservations, so the two
//! databases agree: a product's stock is what is left after its seeded live orders.
//! Seeded rows publish no domain events; the connector's snapshot carries them.

use chrono::{Duration, Utc};
use sqlx::PgPool;
use uuid::Uuid;

use crate::customers::domain::{CustomerDetails, Email, Tier};
use crate::orders::domain::OrderStatus;
use crate::reviews::{NewReview, Rating};
use crate::Service;

const SEED: &str = "commerce-seed-v1";

/// (name, description, price, stock): stock from 0 to 30, seven under 20, three under 5, one at 0.
pub const PRODUCTS: [(&str, &str, &str, i32); 10] = [
    (
        "Trail running shoes",
        "Light shoes with a grippy sole for muddy trails.",
        "129.95",
        30,
    ),
    (
        "Rain jacket",
        "Waterproof, breathable, packs into its own pocket.",
        "89.00",
        25,
    ),
    (
        "Merino base layer",
        "Long-sleeved, warm when wet.",
        "59.50",
        18,
    ),
    (
        "Headlamp",
        "400 lumen, rechargeable over USB-C.",
        "34.99",
        12,
    ),
    (
        "Trekking poles",
        "Carbon, folding, 260 g the pair.",
        "119.00",
        4,
    ),
    ("Water filter", "Squeeze filter, 0.1 micron.", "39.95", 3),
    (
        "Ultralight tent",
        "One person, 900 g, pole-free pitch.",
        "349.00",
        0,
    ),
    ("Sleeping bag", "Down, comfort to -2 °C.", "279.00", 22),
    (
        "Camping stove",
        "Canister stove with piezo ignition.",
        "44.50",
        8,
    ),
    (
        "Insulated bottle",
        "750 ml, keeps drinks hot for 12 hours.",
        "24.95",
        15,
    ),
];

/// (name, email, tier): ids 1 to 5 in this order.
pub const CUSTOMERS: [(&str, &str, Tier); 5] = [
    ("Ada Janssen", "ada.janssen@example.com", Tier::Gold),
    ("Bram de Wit", "bram.dewit@example.com", Tier::Silver),
    ("Chloé Peeters", "chloe.peeters@example.com", Tier::Bronze),
    ("Daan Mertens", "daan.mertens@example.com", Tier::Gold),
    ("Eva Claes", "eva.claes@example.com", Tier::Silver),
];

/// A seeded order: id, customer, product, quantity, status, minutes since it was placed.
pub struct SeedOrder {
    pub id: Uuid,
    pub customer_id: i64,
    pub product_id: i64,
    pub quantity: i32,
    pub status: OrderStatus,
    pub minutes_ago: i64,
}

const fn order(
    n: u128,
    customer_id: i64,
    product_id: i64,
    quantity: i32,
    status: OrderStatus,
    minutes_ago: i64,
) -> SeedOrder {
    SeedOrder {
        id: Uuid::from_u128(0x5eed_0000_0000_4000_8000_0000_0000_0000 | n),
        customer_id,
        product_id,
        quantity,
        status,
        minutes_ago,
    }
}

/// Every status a client can see, including Gold customers' orders (customers 1 and 4) still
/// Processing more than 30 minutes after they were placed.
pub const ORDERS: [SeedOrder; 8] = [
    order(1, 1, 1, 2, OrderStatus::Processing, 45),
    order(2, 4, 3, 1, OrderStatus::Processing, 95),
    order(3, 3, 2, 1, OrderStatus::Processing, 5),
    order(4, 2, 4, 3, OrderStatus::Shipped, 600),
    order(5, 5, 5, 1, OrderStatus::Delivered, 3_000),
    order(6, 1, 8, 2, OrderStatus::Cancelled, 200),
    order(7, 4, 9, 1, OrderStatus::Delivered, 1_500),
    order(8, 3, 10, 2, OrderStatus::Shipped, 120),
];

/// Reviews: (product, customer, rating, text); three per product.
fn reviews() -> Vec<(i64, i64, i64, String)> {
    let texts = [
        (5, "Exactly what I hoped for."),
        (4, "Good, a little pricey."),
        (2, "Did not last the season."),
        (3, "Does the job."),
    ];
    (1..=10i64)
        .flat_map(|product| {
            (0..3i64).map(move |i| {
                let (rating, text) = texts[((product + i) % 4) as usize];
                (product, 1 + (product + i) % 5, rating, text.to_owned())
            })
        })
        .collect()
}

/// Loads `service`'s seed unless it was loaded before; returns whether it did now.
pub async fn load_once(service: Service, pool: &PgPool) -> anyhow::Result<bool> {
    if matches!(service, Service::Users | Service::Delivery) {
        // No shipped seed: users arrive through the API, packages from shipped orders.
        return Ok(false);
    }
    let mut tx = pool.begin().await?;
    let first = sqlx::query("INSERT INTO seed_runs (name) VALUES ($1) ON CONFLICT DO NOTHING")
        .bind(SEED)
        .execute(&mut *tx)
        .await?
        .rows_affected()
        == 1;
    if !first {
        return Ok(false);
    }
    match service {
        Service::Products => {
            for (i, (name, description, price, stock)) in PRODUCTS.iter().enumerate() {
                sqlx::query(
                    "INSERT INTO products (id, name, description, price, stock)
                     VALUES ($1, $2, $3, $4::numeric, $5)",
                )
                .bind(i as i64 + 1)
                .bind(name)
                .bind(description)
                .bind(price)
                .bind(stock)
                .execute(&mut *tx)
                .await?;
            }
            sqlx::query("SELECT setval('products_id_seq', (SELECT max(id) FROM products))")
                .execute(&mut *tx)
                .await?;
            for order in &ORDERS {
                let held = order.status.holds_stock();
                sqlx::query(
                    // Settled: the orders seed records these orders.
                    "INSERT INTO reservations (order_id, product_id, quantity, status, created_at, released_at,
                                               customer_id, settled)
                     VALUES ($1, $2, $3, $4, now() - make_interval(mins => $5), CASE WHEN $6 THEN NULL ELSE now() END,
                             $7, true)",
                )
                .bind(order.id)
                .bind(order.product_id)
                .bind(order.quantity)
                .bind(if held { "held" } else { "released" })
                .bind(order.minutes_ago as i32)
                .bind(held)
                .bind(order.customer_id)
                .execute(&mut *tx)
                .await?;
            }
        }
        Service::Customers => {
            for (i, (name, email, tier)) in CUSTOMERS.iter().enumerate() {
                let details = CustomerDetails {
                    name: (*name).to_owned(),
                    email: Email::parse(email).map_err(anyhow::Error::msg)?,
                    tier: *tier,
                };
                crate::customers::insert(&mut *tx, Some(i as i64 + 1), &details).await?;
            }
            sqlx::query("SELECT setval('customers_id_seq', (SELECT max(id) FROM customers))")
                .execute(&mut *tx)
                .await?;
        }
        Service::Orders => {
            let now = Utc::now();
            for order in &ORDERS {
                let placed = now - Duration::minutes(order.minutes_ago);
                sqlx::query(
                    "INSERT INTO orders (id, customer_id, product_id, quantity, status, created_at, updated_at)
                     VALUES ($1, $2, $3, $4, $5, $6, $6)",
                )
                .bind(order.id)
                .bind(order.customer_id)
                .bind(order.product_id)
                .bind(order.quantity)
                .bind(order.status.as_str())
                .bind(placed)
                .execute(&mut *tx)
                .await?;
            }
        }
        Service::Reviews => {
            for (product_id, customer_id, rating, text) in reviews() {
                let review = NewReview {
                    product_id,
                    customer_id,
                    rating: Rating::new(rating).map_err(anyhow::Error::msg)?,
                    text,
                };
                crate::reviews::insert(&mut *tx, &review).await?;
            }
        }
        Service::Users | Service::Delivery => {}
    }
    tx.commit().await?;
    tracing::info!(service = service.name(), "seed loaded");
    Ok(true)
}
