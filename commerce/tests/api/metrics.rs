//! `GET /metrics` of every commerce service (products, customers, orders, reviews, users,
//! delivery), each a process of its own so its registry is its own, parsed as the Prometheus
//! text format before and after traffic: the request counters and latency histograms move by
//! exactly the requests sent, and the outbox gauges follow the relays. The products service
//! first runs against a Kafka that is not there, so its stock events stay in the outbox (the
//! backlog gauge counts them); restarted against the real one, its relay drains them.

use std::time::Duration;

use prometheus_parse::{Scrape, Value as Sample};
use reqwest::StatusCode;
use serde_json::json;
use testkit::eventually;

use crate::events::apply_topics;
use crate::helpers::{drop_databases, order_body, product_body, Client, Process};
use crate::people::{drop_people, people_settings, start_groups_at_end, user_body, Cleanup};

async fn scrape(base_url: &str) -> Scrape {
    let response = reqwest::get(format!("{base_url}/metrics"))
        .await
        .expect("GET /metrics");
    assert_eq!(response.status(), StatusCode::OK);
    let text = response.text().await.expect("a body");
    Scrape::parse(text.lines().map(|l| Ok(l.to_owned()))).expect("Prometheus text format")
}

/// The sum of the counter or gauge `name` (a histogram: its count) over the samples whose
/// labels include `labels`; 0 when there is none.
fn total(scrape: &Scrape, name: &str, labels: &[(&str, &str)]) -> f64 {
    scrape
        .samples
        .iter()
        .filter(|s| s.metric == name)
        .filter(|s| labels.iter().all(|(k, v)| s.labels.get(k) == Some(*v)))
        .map(|s| match &s.value {
            Sample::Counter(v) | Sample::Gauge(v) | Sample::Untyped(v) => *v,
            Sample::Histogram(buckets) => buckets.last().map_or(0.0, |b| b.count),
            Sample::Summary(_) => 0.0,
        })
        .sum()
}

/// Requests of one route and status as the counter and the histogram count them.
fn requests(scrape: &Scrape, method: &str, route: &str, status: &str) -> (f64, f64) {
    let labels = [("method", method), ("route", route), ("status", status)];
    (
        total(scrape, "http_server_requests_total", &labels),
        total(scrape, "http_server_request_duration_seconds", &labels),
    )
}

/// The outbox gauge or relay counter `name` of the relay of `database`.
fn outbox(scrape: &Scrape, name: &str, database: &str) -> f64 {
    let role = format!("commerce-{database}-outbox-relay");
    total(scrape, name, &[("outbox", &role)])
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_service_counts_its_requests_and_the_outbox_gauges_follow_the_relays() {
    let _shared = crate::helpers::shared_delivery_topics().await;
    let mut settings = people_settings();
    let cleanup = Cleanup::new(&settings);
    apply_topics(&settings.kafka).await;
    start_groups_at_end(&settings).await;
    // A port nothing listens on: the products relay cannot publish.
    let no_kafka = [(
        "KAFKA_BOOTSTRAP_SERVERS",
        format!("127.0.0.1:{}", testkit::free_port()),
    )];
    let products = Process::start("products", &settings, &no_kafka).await;
    settings.orders_products_url = products.base_url.clone();
    let orders = Process::start("orders", &settings, &[]).await;
    settings.delivery_orders_url = orders.base_url.clone();
    let customers = Process::start("customers", &settings, &[]).await;
    let reviews = Process::start("reviews", &settings, &[]).await;
    let users = Process::start("users", &settings, &[]).await;
    let delivery = Process::start("delivery", &settings, &[]).await;

    let all = [
        ("commerce-products", &products),
        ("commerce-orders", &orders),
        ("commerce-customers", &customers),
        ("commerce-reviews", &reviews),
        ("commerce-users", &users),
        ("commerce-delivery", &delivery),
    ];
    let mut before = Vec::new();
    for (service, process) in all {
        let scrape = scrape(&process.base_url).await;
        // Every sample carries the process's service label.
        assert!(
            scrape
                .samples
                .iter()
                .all(|s| s.labels.get("service") == Some(service)),
            "{service}: {:?}",
            scrape.samples.first()
        );
        before.push(scrape);
    }

    // Traffic: for each service (method, route label, status, how many).
    let client = Client::default();
    let (status, product) = client
        .post(
            &format!("{}/products", products.base_url),
            &product_body("Metered", 10),
        )
        .await;
    assert_eq!(status, StatusCode::CREATED, "{product}");
    let product = product["id"].as_i64().unwrap();
    for _ in 0..3 {
        let (status, body) = client
            .post(
                &format!("{}/orders", orders.base_url),
                &order_body(1, product, 2),
            )
            .await;
        assert_eq!(status, StatusCode::CREATED, "{body}");
    }
    let unknown = uuid::Uuid::new_v4();
    let (status, _) = client
        .get(&format!("{}/orders/{unknown}", orders.base_url))
        .await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    let (status, _) = client
        .post(
            &format!("{}/customers", customers.base_url),
            &json!({ "name": "Ann Peeters", "email": "ann@example.com", "tier": "Gold" }),
        )
        .await;
    assert_eq!(status, StatusCode::CREATED);
    let (status, _) = client
        .get(&format!("{}/customers/999999", customers.base_url))
        .await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    for rating in [4, 5] {
        let (status, _) = client
            .post(
                &format!("{}/reviews", reviews.base_url),
                &json!({ "productId": product, "customerId": 1, "rating": rating, "text": "fine" }),
            )
            .await;
        assert_eq!(status, StatusCode::CREATED);
    }
    let (status, body) = client
        .post(
            &format!("{}/users", users.base_url),
            &user_body(1, "CUSTOMER"),
        )
        .await;
    assert_eq!(status, StatusCode::CREATED, "{body}");
    // Without its agentId: a 400, counted under its status like any answer.
    let (status, _) = client
        .get(&format!("{}/deliveries", delivery.base_url))
        .await;
    assert_eq!(status, StatusCode::BAD_REQUEST);

    let moved: [(&str, &str, &str, f64); 9] = [
        ("POST", "/products", "201", 1.0),
        ("POST", "/reservations", "201", 3.0),
        ("POST", "/orders", "201", 3.0),
        ("GET", "/orders/:id", "404", 1.0),
        ("POST", "/customers", "201", 1.0),
        ("GET", "/customers/:id", "404", 1.0),
        ("POST", "/reviews", "201", 2.0),
        ("POST", "/users", "201", 1.0),
        ("GET", "/deliveries", "400", 1.0),
    ];
    let service_of = |route: &str| match route {
        "/products" | "/reservations" => 0,
        "/orders" | "/orders/:id" => 1,
        "/customers" | "/customers/:id" => 2,
        "/reviews" => 3,
        "/users" => 4,
        _ => 5,
    };
    for (method, route, status, count) in moved {
        let n = service_of(route);
        let (service, process) = all[n];
        let after = scrape(&process.base_url).await;
        let (requests_before, timed_before) = requests(&before[n], method, route, status);
        let (requests_after, timed_after) = requests(&after, method, route, status);
        assert_eq!(
            (requests_after - requests_before, timed_after - timed_before),
            (count, count),
            "{service} {method} {route} {status}"
        );
    }

    // Orders: the relay published the 3 PLACED events and nothing waits.
    let orders_db = settings.orders_database.clone();
    eventually(
        "the orders relay counts 3 published and a backlog of 0",
        Duration::from_secs(30),
        || {
            let (url, db) = (&orders.base_url, &orders_db);
            async move {
                let s = scrape(url).await;
                outbox(&s, "outbox_relay_published_total", db) == 3.0
                    && outbox(&s, "outbox_backlog_rows", db) == 0.0
            }
        },
    )
    .await;
    // Products: ADJUSTED + 3 × RESERVED wait in the outbox, the oldest ageing.
    let products_db = settings.products_database.clone();
    eventually(
        "the products backlog gauge counts the 4 stock events Kafka never got",
        Duration::from_secs(30),
        || {
            let (url, db) = (&products.base_url, &products_db);
            async move {
                let s = scrape(url).await;
                outbox(&s, "outbox_backlog_rows", db) == 4.0
                    && outbox(&s, "outbox_oldest_unpublished_age_seconds", db) > 0.0
                    && outbox(&s, "outbox_relay_published_total", db) == 0.0
            }
        },
    )
    .await;

    // Restarted against the real Kafka, the products relay drains the backlog.
    drop(products);
    let products = Process::start("products", &settings, &[]).await;
    eventually(
        "the restarted products relay publishes the 4 stock events and the backlog is 0",
        Duration::from_secs(60),
        || {
            let (url, db) = (&products.base_url, &products_db);
            async move {
                let s = scrape(url).await;
                outbox(&s, "outbox_relay_published_total", db) == 4.0
                    && outbox(&s, "outbox_backlog_rows", db) == 0.0
                    && outbox(&s, "outbox_oldest_unpublished_age_seconds", db) == 0.0
            }
        },
    )
    .await;

    drop((products, orders, customers, reviews, users, delivery));
    drop_people(&settings).await;
    drop_databases(&settings).await;
    cleanup.disarm();
}
