//! The seed: loaded once, consistent between the products and orders databases.

use std::collections::HashMap;

use commerce::Service;
use reqwest::StatusCode;

use crate::helpers::{drop_databases, test_settings, Client, Running};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_seed_is_loaded_once_with_every_status_and_matching_reservations() {
    let _shared = crate::helpers::shared_delivery_topics().await;
    let mut settings = test_settings();
    settings.commerce_seed = true;
    let products = Running::start(&settings, Service::Products).await;
    settings.orders_products_url = products.address.clone();
    let customers = Running::start(&settings, Service::Customers).await;
    let orders = Running::start(&settings, Service::Orders).await;
    let reviews = Running::start(&settings, Service::Reviews).await;
    assert!(products.seeded && customers.seeded && orders.seeded && reviews.seeded);
    let c = Client::default();

    let (_, all) = c.get(&format!("{}/products", products.address)).await;
    let stocks: Vec<i64> = all
        .as_array()
        .unwrap()
        .iter()
        .map(|p| p["stock"].as_i64().unwrap())
        .collect();
    assert_eq!(stocks.len(), 10);
    assert!(stocks.iter().all(|s| (0..=30).contains(s)));
    assert!(stocks.iter().filter(|s| **s < 20).count() >= 3);
    assert!(stocks.iter().filter(|s| **s < 5).count() >= 2);
    assert_eq!(stocks.iter().filter(|s| **s == 0).count(), 1);

    let (_, all) = c.get(&format!("{}/customers", customers.address)).await;
    let tiers: HashMap<i64, String> = all
        .as_array()
        .unwrap()
        .iter()
        .map(|c| {
            (
                c["id"].as_i64().unwrap(),
                c["tier"].as_str().unwrap().to_owned(),
            )
        })
        .collect();
    assert_eq!(tiers.len(), 5);
    for tier in ["Gold", "Silver", "Bronze"] {
        assert!(tiers.values().any(|t| t == tier), "{tier}");
    }

    let (_, all) = c.get(&format!("{}/orders", orders.address)).await;
    let all = all.as_array().unwrap().clone();
    for status in ["Processing", "Shipped", "Delivered", "Cancelled"] {
        assert!(all.iter().any(|o| o["status"] == status), "{status}");
    }
    let stale_gold = all.iter().filter(|o| {
        o["status"] == "Processing"
            && tiers[&o["customerId"].as_i64().unwrap()] == "Gold"
            && chrono::Utc::now()
                - o["createdAt"]
                    .as_str()
                    .unwrap()
                    .parse::<chrono::DateTime<chrono::Utc>>()
                    .unwrap()
                > chrono::Duration::minutes(30)
    });
    assert!(
        stale_gold.count() >= 1,
        "Gold customers' orders Processing for over 30 minutes"
    );
    for order in &all {
        let id = order["id"].as_str().unwrap();
        let (status, reservation) = c
            .get(&format!("{}/reservations/{id}", products.address))
            .await;
        assert_eq!(status, StatusCode::OK);
        let holds =
            ["Processing", "Shipped", "Delivered"].contains(&order["status"].as_str().unwrap());
        assert_eq!(reservation["status"] == "held", holds, "{order}");
    }

    let (_, all) = c.get(&format!("{}/reviews", reviews.address)).await;
    for product in 1..=10 {
        let count = all
            .as_array()
            .unwrap()
            .iter()
            .filter(|r| r["productId"] == product)
            .count();
        assert!(count >= 2, "product {product} has {count} reviews");
    }

    // A second start loads nothing again.
    reviews.stop().await;
    let again = Running::start(&settings, Service::Reviews).await;
    assert!(!again.seeded);
    let (_, after) = c.get(&format!("{}/reviews", again.address)).await;
    assert_eq!(
        after.as_array().unwrap().len(),
        all.as_array().unwrap().len()
    );
    again.stop().await;
    orders.stop().await;
    customers.stop().await;
    products.stop().await;
    drop_databases(&settings).await;
}
