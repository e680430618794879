//! The services over the query results, on the real stack and driven through the commerce
//! APIs: a review moves the catalogue read model's average (served by `catalogue`, folded by
//! the projector runtime into Redis), and selling stock down brings a low-stock and then a
//! critical-stock notification, newest first (`notifications`). After the stock result topics
//! were compacted (created here compacting eagerly), a notifications service and a dashboard
//! started afresh still list every entry into a condition. Every service's and the engine's `/metrics`
//! parse as Prometheus text, and their counters move with the traffic.

mod common;

use std::time::{Duration, Instant};

use common::{scrape, total, Stack};
use queries::declared::{CRITICAL_STOCK, LOW_STOCK};
use serde_json::{json, Value};

async fn get(http: &reqwest::Client, url: &str) -> Option<Value> {
    let r = http.get(url).send().await.ok()?;
    r.status().is_success().then_some(())?;
    r.json().await.ok()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn catalogue_follows_reviews_and_notifications_follow_stock() {
    let mut stack = Stack::start(&[]).await;
    for query in [&LOW_STOCK, &CRITICAL_STOCK] {
        common::create_eagerly_compacted(&stack.kafka, &stack.result_topic(query)).await;
    }
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
    let dashboard = stack.start_service("dashboard", &[]).await;
    let http = reqwest::Client::new();
    let engine_metrics = stack.engine_metrics.clone();
    let mut before = Vec::new();
    for base in [&engine_metrics, &catalogue, &notifications, &dashboard] {
        let deadline = Instant::now() + Duration::from_secs(60);
        let first = loop {
            if let Some(scraped) = scrape(base).await {
                break scraped;
            }
            assert!(Instant::now() < deadline, "{base}/metrics never answered");
            tokio::time::sleep(Duration::from_millis(200)).await;
        };
        before.push(first);
    }

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

    // Out of both conditions and into low-stock twice more: low-stock has five changes for
    // the product (added, deleted, added, deleted, added), critical-stock two.
    let set_stock = |product: i64, name: &'static str, stock: i64| {
        let (http, products, one) = (
            &http,
            stack.url("products").to_owned(),
            format!("{catalogue}/catalogue/{product}"),
        );
        async move {
            let r = http
                .put(format!("{products}/products/{product}"))
                .json(&json!({"name": name, "price": 39.90, "stock": stock}))
                .send()
                .await
                .unwrap();
            assert!(r.status().is_success());
            // Each change its own engine step: wait until the catalogue shows it.
            testkit::eventually(
                &format!("the catalogue shows stock {stock} of {product}"),
                Duration::from_secs(60),
                || {
                    let one = one.clone();
                    async move { get(http, &one).await.is_some_and(|d| d["stock"] == stock) }
                },
            )
            .await;
        }
    };
    for stock in [30, 12, 30, 12] {
        set_stock(id, "Headlamp", stock).await;
    }
    let entries = |list: &Value| -> (usize, usize) {
        let mine: Vec<&str> = list
            .as_array()
            .unwrap()
            .iter()
            .filter(|n| n["product"]["productId"] == id)
            .map(|n| n["kind"].as_str().unwrap())
            .collect();
        (
            mine.iter().filter(|k| **k == "low-stock").count(),
            mine.iter().filter(|k| **k == "critical-stock").count(),
        )
    };
    // Another product's stock keeps changing, so the product's changes leave the active
    // segment, until the broker's log cleaner has compacted them away.
    let filler: Value = http
        .post(format!("{}/products", stack.url("products")))
        .json(&json!({"name": "Filler", "price": 39.90, "stock": 30}))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let filler = filler["id"].as_i64().unwrap();
    let key = id.to_string();
    let deadline = Instant::now() + Duration::from_secs(180);
    let mut round = 0;
    loop {
        let left = stack
            .changes(&LOW_STOCK)
            .await
            .iter()
            .filter(|c| c.key == key)
            .count();
        if left < 5 {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "low-stock was never compacted ({left} changes of product {id} left)"
        );
        round += 1;
        set_stock(filler, "Filler", if round % 2 == 1 { 12 } else { 30 }).await;
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
    // A notifications service started now rebuilds from the history topics: every entry.
    let fresh = stack.start_service("notifications", &[]).await;
    for base in [&notifications, &fresh] {
        testkit::eventually(
            &format!("{base} lists three low-stock and one critical-stock entry"),
            Duration::from_secs(60),
            || {
                let (http, url) = (&http, format!("{base}/notifications"));
                async move {
                    get(http, &url)
                        .await
                        .is_some_and(|list| entries(&list) == (3, 1))
                }
            },
        )
        .await;
    }
    // So does a dashboard started now: its stream has all three entries into low stock.
    let fresh_dashboard = stack.start_service("dashboard", &[]).await;
    let low_entries = |text: &str| {
        text.lines()
            .filter_map(|line| line.strip_prefix("data:"))
            .filter_map(|data| serde_json::from_str::<Value>(data.trim()).ok())
            .filter(|c| c["query"] == "low-stock" && c["key"] == key.as_str() && c["op"] == "added")
            .count()
    };
    let mut stream = http
        .get(format!("{fresh_dashboard}/events"))
        .send()
        .await
        .unwrap();
    let mut text = String::new();
    let streamed = tokio::time::timeout(Duration::from_secs(60), async {
        while low_entries(&text) < 3 {
            match stream.chunk().await.unwrap() {
                Some(bytes) => text.push_str(&String::from_utf8_lossy(&bytes)),
                None => break,
            }
        }
    })
    .await;
    assert!(
        streamed.is_ok() && low_entries(&text) == 3,
        "a fresh dashboard streamed {} low-stock entries of product {id}, not 3",
        low_entries(&text)
    );
    drop(stream);

    // Metrics: every service parses and its counters moved.
    let page = http.get(format!("{dashboard}/")).send().await.unwrap();
    assert!(page.status().is_success());
    let mut after = Vec::new();
    for base in [&engine_metrics, &catalogue, &notifications, &dashboard] {
        after.push(
            scrape(base)
                .await
                .unwrap_or_else(|| panic!("{base}/metrics")),
        );
    }
    let moved = |i: usize, name: &str, labels: &[(&str, &str)]| {
        let was = total(&before[i], name, labels).unwrap_or(0.0);
        let now = total(&after[i], name, labels)
            .unwrap_or_else(|| panic!("no {name} {labels:?} in the metrics of service {i}"));
        assert!(now > was, "{name} {labels:?}: {was} → {now}");
    };
    moved(0, "queries_source_changes_total", &[("table", "products")]);
    moved(0, "queries_source_changes_total", &[("table", "reviews")]);
    moved(
        0,
        "queries_result_changes_total",
        &[("query", "product-catalogue"), ("op", "updated")],
    );
    moved(
        0,
        "queries_result_changes_total",
        &[("query", "low-stock"), ("op", "added")],
    );
    moved(0, "queries_step_duration_seconds", &[]);
    assert!(
        total(&after[0], "queries_source_lag_records", &[]).is_some(),
        "the engine reports its source lag"
    );
    moved(
        1,
        "http_server_requests_total",
        &[("route", "/catalogue/:product_id"), ("status", "200")],
    );
    moved(1, "projector_applied_total", &[]);
    moved(
        2,
        "http_server_requests_total",
        &[("route", "/notifications"), ("status", "200")],
    );
    moved(
        3,
        "http_server_requests_total",
        &[("route", "/"), ("status", "200")],
    );
    for (i, scraped) in after.iter().enumerate() {
        let service = ["queries", "catalogue", "notifications", "dashboard"][i];
        assert!(
            scraped
                .samples
                .iter()
                .all(|s| s.labels.get("service") == Some(service)),
            "every sample of {service} is labelled service={service}"
        );
    }
    stack.cleanup().await;
}
