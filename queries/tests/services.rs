//! The services over the query results, on the real stack and driven through the commerce
//! APIs: a review moves the catalogue read model's average (served by `catalogue`, folded by
//! the projector runtime into Redis), and selling stock down brings a low-stock and then a
//! critical-stock notification, newest first (`notifications`).

mod common;

use std::time::Duration;

use common::Stack;
use serde_json::{json, Value};

async fn get(http: &reqwest::Client, url: &str) -> Option<Value> {
    let r = http.get(url).send().await.ok()?;
    r.status().is_success().then_some(())?;
    r.json().await.ok()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn catalogue_follows_reviews_and_notifications_follow_stock() {
    let mut stack = Stack::start(&[]).await;
    stack.start_engine();
    let namespace = format!("{}_catalogue", stack.prefix);
    let catalogue = stack
        .start_service(
            "catalogue",
            &[
                ("CATALOGUE_NAMESPACE", namespace),
                ("REDIS_URL", testkit::env::redis_url()),
            ],
        )
        .await;
    let notifications = stack.start_service("notifications", &[]).await;
    let http = reqwest::Client::new();

    let product: Value = http
        .post(format!("{}/products", stack.url("products")))
        .json(&json!({"name": "Headlamp", "price": 39.90, "stock": 30}))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let id = product["id"].as_i64().unwrap();
    let one = format!("{catalogue}/catalogue/{id}");
    testkit::eventually(
        "the product is in the catalogue, unreviewed",
        Duration::from_secs(60),
        || {
            let (http, one) = (&http, &one);
            async move {
                get(http, one)
                    .await
                    .is_some_and(|d| d["reviewCount"] == 0 && d["averageRating"].is_null())
            }
        },
    )
    .await;

    for rating in [5, 2] {
        let r = http
            .post(format!("{}/reviews", stack.url("reviews")))
            .json(&json!({"productId": id, "customerId": 1, "rating": rating, "text": "fine"}))
            .send()
            .await
            .unwrap();
        assert!(r.status().is_success(), "{}", r.text().await.unwrap());
    }
    testkit::eventually("the average moves to 3.5", Duration::from_secs(60), || {
        let (http, one) = (&http, &one);
        async move {
            get(http, one)
                .await
                .is_some_and(|d| d["reviewCount"] == 2 && d["averageRating"] == 3.5)
        }
    })
    .await;
    let all = get(&http, &format!("{catalogue}/catalogue")).await.unwrap();
    assert!(all.as_array().unwrap().iter().any(|p| p["productId"] == id));
    let missing = http
        .get(format!("{catalogue}/catalogue/999999999"))
        .send()
        .await
        .unwrap();
    assert_eq!(missing.status(), 404);

    // Sell the stock down: 30 → 12 (low) → 3 (critical, and still low).
    for stock in [12, 3] {
        let r = http
            .put(format!("{}/products/{id}", stack.url("products")))
            .json(&json!({"name": "Headlamp", "price": 39.90, "stock": stock}))
            .send()
            .await
            .unwrap();
        assert!(r.status().is_success());
        let kinds: &[&str] = if stock == 12 {
            &["low-stock"]
        } else {
            &["critical-stock", "low-stock"]
        };
        testkit::eventually(
            &format!("notifications at stock {stock}"),
            Duration::from_secs(60),
            || {
                let (http, url) = (&http, format!("{notifications}/notifications"));
                async move {
                    let Some(list) = get(http, &url).await else {
                        return false;
                    };
                    let mine: Vec<&str> = list
                        .as_array()
                        .unwrap()
                        .iter()
                        .filter(|n| n["product"]["productId"] == id)
                        .map(|n| n["kind"].as_str().unwrap())
                        .collect();
                    // Low went in at 12 and is still in at 3: no second low-stock event.
                    let want: Vec<&str> = if kinds.len() == 1 {
                        vec!["low-stock"]
                    } else {
                        vec!["critical-stock", "low-stock"]
                    };
                    mine == want
                }
            },
        )
        .await;
    }
    let list = get(&http, &format!("{notifications}/notifications"))
        .await
        .unwrap();
    let ats: Vec<i64> = list
        .as_array()
        .unwrap()
        .iter()
        .map(|n| n["at"].as_i64().unwrap())
        .collect();
    assert!(
        ats.windows(2).all(|w| w[0] >= w[1]),
        "newest first: {ats:?}"
    );
    stack.cleanup().await;
}
