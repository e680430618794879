//! The checkout saga: a crash injected right after each step's effect (before its advance
//! commits) resumes at that step and completes with every effect exactly once; a declined
//! payment releases the stock and cancels the order.

use std::os::unix::process::ExitStatusExt;

use orderflow::saga::mail::MailLog;
use sqlx::PgPool;
use uuid::Uuid;

use crate::helpers::*;

const FORWARD: [&str; 7] = [
    "order", "profile", "shipment", "payment", "email", "history", "sold",
];

async fn saga_of(pool: &PgPool, order: Uuid) -> Option<(String, String)> {
    sqlx::query_as("SELECT status, step FROM sagas WHERE order_id = $1")
        .bind(order)
        .fetch_optional(pool)
        .await
        .unwrap()
}

async fn count(pool: &PgPool, table: &str, order: Uuid) -> i64 {
    sqlx::query_scalar(&format!("SELECT count(*) FROM {table} WHERE order_id = $1"))
        .bind(order)
        .fetch_one(pool)
        .await
        .unwrap()
}

async fn wait_for_status(pool: &PgPool, order: Uuid, status: &str) {
    testkit::eventually(&format!("saga {order} is {status}"), WAIT, || async {
        saga_of(pool, order).await.is_some_and(|(s, _)| s == status)
    })
    .await;
}

/// Every effect of a completed checkout, once.
async fn assert_effects_once(
    flow: &PgPool,
    payments: &PgPool,
    mail: &std::path::Path,
    order: Uuid,
) {
    assert_eq!(count(flow, "shipments", order).await, 1, "one shipment");
    assert_eq!(count(payments, "charges", order).await, 1, "one charge");
    let approved: i64 = sqlx::query_scalar(
        "SELECT count(*) FROM charges WHERE order_id = $1 AND outcome = 'approved'",
    )
    .bind(order)
    .fetch_one(payments)
    .await
    .unwrap();
    assert_eq!(approved, 1, "the charge was approved");
    let mails = MailLog::read_all(mail)
        .unwrap()
        .into_iter()
        .filter(|m| m.order_id == order)
        .count();
    assert_eq!(mails, 1, "one confirmation email");
    assert_eq!(
        count(flow, "purchase_history", order).await,
        1,
        "one history entry"
    );
    assert_eq!(count(flow, "sales", order).await, 1, "one sale");
    let steps: Vec<String> = sqlx::query_scalar(
        "SELECT step FROM saga_steps WHERE order_id = $1 ORDER BY completed_at, step",
    )
    .bind(order)
    .fetch_all(flow)
    .await
    .unwrap();
    assert_eq!(steps.len(), FORWARD.len(), "{steps:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_crash_after_any_step_resumes_there_and_every_effect_happens_once() {
    let shop = Shop::start().await;
    let mut settings = flow_settings(&shop).await;
    let provider = Provider::start(&mut settings, flaky(0.0)).await;
    let flow = saga_pool(&settings).await;
    let customer = shop.customer().await;
    let product = shop.product(100).await;

    // A run without crashes first: the saga completes.
    let saga = Component::start("saga", &settings, &[]);
    let order = shop.order(customer, product, 2).await;
    wait_for_status(&flow, order, "completed").await;
    assert_effects_once(&flow, &provider.pool, &settings.mail_log, order).await;
    saga.kill().await;

    for step in FORWARD {
        let order = shop.order(customer, product, 1).await;
        let crashing = Component::start(
            "saga",
            &settings,
            &[
                ("SAGA_CRASH_AT", step),
                ("SAGA_CRASH_ORDER", &order.to_string()),
            ],
        );
        let status = crashing.exited().await;
        assert_eq!(
            status.signal(),
            Some(libc_sigabrt()),
            "crashed at {step}: {status:?}"
        );
        let (status, at) = saga_of(&flow, order).await.expect("saga row");
        assert_eq!(
            (status.as_str(), at.as_str()),
            ("running", step),
            "the crash left the saga at {step}"
        );

        let resumed = Component::start("saga", &settings, &[]);
        wait_for_status(&flow, order, "completed").await;
        assert_effects_once(&flow, &provider.pool, &settings.mail_log, order).await;
        if step == "payment" {
            let calls: i32 = sqlx::query_scalar("SELECT calls FROM charges WHERE order_id = $1")
                .bind(order)
                .fetch_one(&provider.pool)
                .await
                .unwrap();
            assert!(
                calls >= 2,
                "the resumed saga charged again, and was deduplicated ({calls} calls)"
            );
        }
        resumed.kill().await;
    }
    // 8 orders of 100 items: 2 + 7 × 1 sold.
    assert_eq!(shop.stock(product).await, 91);

    provider.stop();
    shop.stop().await;
    cleanup(&settings).await;
}

/// SIGABRT, what `std::process::abort` ends a process with.
fn libc_sigabrt() -> i32 {
    6
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_declined_payment_releases_the_stock_and_cancels_the_order() {
    let shop = Shop::start().await;
    let mut settings = flow_settings(&shop).await;
    let provider = Provider::start(&mut settings, flaky(1.0)).await;
    let flow = saga_pool(&settings).await;
    let customer = shop.customer().await;
    let product = shop.product(5).await;

    let order = shop.order(customer, product, 2).await;
    let saga = Component::start(
        "saga",
        &settings,
        &[
            ("SAGA_CRASH_AT", "release"),
            ("SAGA_CRASH_ORDER", &order.to_string()),
        ],
    );
    assert_eq!(shop.stock(product).await, 3, "placing reserved 2");
    // A crash in the middle of the compensation, too.
    saga.exited().await;
    let saga = Component::start("saga", &settings, &[]);
    wait_for_status(&flow, order, "compensated").await;

    assert_eq!(shop.stock(product).await, 5, "the stock is released");
    assert_eq!(shop.order_status(order).await, "Cancelled");
    let declined: String = sqlx::query_scalar("SELECT outcome FROM charges WHERE order_id = $1")
        .bind(order)
        .fetch_one(&provider.pool)
        .await
        .unwrap();
    assert_eq!(declined, "declined");
    let shipment: String = sqlx::query_scalar("SELECT status FROM shipments WHERE order_id = $1")
        .bind(order)
        .fetch_one(&flow)
        .await
        .unwrap();
    assert_eq!(shipment, "cancelled");
    assert_eq!(count(&flow, "sales", order).await, 0, "nothing sold");
    assert_eq!(count(&flow, "purchase_history", order).await, 0);
    assert!(MailLog::read_all(&settings.mail_log)
        .unwrap()
        .iter()
        .all(|m| m.order_id != order));
    let failure: Option<String> =
        sqlx::query_scalar("SELECT failure FROM sagas WHERE order_id = $1")
            .bind(order)
            .fetch_one(&flow)
            .await
            .unwrap();
    assert!(failure.unwrap_or_default().contains("declined"));

    saga.kill().await;
    provider.stop();
    shop.stop().await;
    cleanup(&settings).await;
}

// ---- Observed: every component's `/metrics` moves with one checkout ----

/// A scrape of `url`'s `/metrics`, parsed as the Prometheus text format.
async fn scrape(url: &str) -> Option<prometheus_parse::Scrape> {
    let response = reqwest::get(format!("{url}/metrics")).await.ok()?;
    if !response.status().is_success() {
        return None;
    }
    let text = response.text().await.ok()?;
    prometheus_parse::Scrape::parse(text.lines().map(|l| Ok(l.to_owned()))).ok()
}

/// The sum of `name` over the samples whose labels include `labels` (0 when none).
fn total(scrape: &prometheus_parse::Scrape, name: &str, labels: &[(&str, &str)]) -> f64 {
    use prometheus_parse::Value;
    scrape
        .samples
        .iter()
        .filter(|s| s.metric == name && labels.iter().all(|(k, v)| s.labels.get(k) == Some(*v)))
        .map(|s| match &s.value {
            Value::Counter(v) | Value::Gauge(v) | Value::Untyped(v) => *v,
            Value::Histogram(buckets) => buckets.last().map_or(0.0, |b| b.count),
            Value::Summary(_) => 0.0,
        })
        .sum()
}

/// One metric of one component, read before and after the checkout.
struct Watched {
    component: &'static str,
    url: String,
    metric: &'static str,
    labels: &'static [(&'static str, &'static str)],
    /// How much it must grow at least.
    by: f64,
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_component_serves_metrics_and_its_counters_move_with_a_checkout() {
    use orderflow::telemetry::names::*;

    // The in-process payment provider's metrics need this process's recorder installed
    // (without the logging `telemetry::init` would add).
    let _ = telemetry::prometheus::render();
    let shop = Shop::start().await;
    let mut settings = flow_settings(&shop).await;
    settings.restock_delay_ms = 200;
    settings.restock_poll_ms = 100;
    settings.tracking_namespace = testkit::unique("orderflow_test_tracking");
    settings.tracking_group = testkit::unique("orderflow_test_tracking");
    let (tracking_store, _) = tracking_from_end(&settings).await;
    let payments = Provider::start(&mut settings, flaky(0.0)).await;
    let payments_url = settings.payments_url.clone();
    let flow = saga_pool(&settings).await;

    let mut components = Vec::new();
    let mut urls = std::collections::HashMap::new();
    for name in ["saga", "restock", "loyalty", "audit", "tracking"] {
        let address = format!("127.0.0.1:{}", testkit::free_port());
        let variable = if name == "tracking" {
            "TRACKING_LISTEN_ADDR"
        } else {
            "METRICS_LISTEN_ADDR"
        };
        components.push(Component::start(name, &settings, &[(variable, &address)]));
        urls.insert(name, format!("http://{address}"));
    }
    for (name, url) in &urls {
        testkit::eventually(&format!("{name} serves /metrics"), WAIT, || async {
            scrape(url).await.is_some()
        })
        .await;
    }
    let watched = |component: &'static str,
                   metric: &'static str,
                   labels: &'static [(&'static str, &'static str)],
                   by: f64| Watched {
        component,
        url: urls
            .get(component)
            .cloned()
            .unwrap_or_else(|| payments_url.clone()),
        metric,
        labels,
        by,
    };
    let watch = [
        watched(
            "saga",
            SAGA_STEPS,
            &[("step", "payment"), ("outcome", "completed")],
            1.0,
        ),
        watched("saga", SAGA_STEPS, &[("outcome", "completed")], 7.0),
        watched("saga", SAGAS_FINISHED, &[("status", "completed")], 1.0),
        watched("restock", RESTOCKS, &[("stage", "fired")], 1.0),
        watched("restock", RESTOCKS, &[("stage", "done")], 1.0),
        watched("loyalty", LOYALTY_POINTS, &[("mode", "exactly-once")], 10.0),
        watched("loyalty", LOYALTY_ORDERS, &[("mode", "exactly-once")], 1.0),
        watched("audit", AUDIT_LINES, &[], 1.0),
        watched("tracking", "projector_applied_total", &[], 1.0),
        watched(
            "tracking",
            "http_server_requests_total",
            &[("route", "/orders/:id"), ("status", "200")],
            1.0,
        ),
        watched("payments", CHARGES, &[("outcome", "approved")], 1.0),
        watched(
            "payments",
            "http_server_requests_total",
            &[("route", "/charges")],
            1.0,
        ),
    ];
    let mut before = Vec::new();
    for w in &watch {
        let scrape = scrape(&w.url).await.expect("scraped");
        before.push(total(&scrape, w.metric, w.labels));
    }

    // One checkout of the last item: every step, a sell-out, a restock, points, an audit line.
    let customer = shop.customer().await;
    let product = shop.product(1).await;
    let order = shop.order(customer, product, 1).await;
    let tracking = urls["tracking"].clone();
    testkit::eventually("the order in the tracking read model", WAIT, || async {
        reqwest::get(format!("{tracking}/orders/{order}"))
            .await
            .is_ok_and(|r| r.status().is_success())
    })
    .await;
    testkit::eventually("the product restocked", WAIT, || async {
        shop.stock(product).await > 0
    })
    .await;

    for (w, before) in watch.iter().zip(before) {
        testkit::eventually(
            &format!(
                "{} {} {:?} grows by {} from {before}",
                w.component, w.metric, w.labels, w.by
            ),
            WAIT,
            || async {
                scrape(&w.url)
                    .await
                    .is_some_and(|s| total(&s, w.metric, w.labels) >= before + w.by)
            },
        )
        .await;
    }
    let saga = scrape(&urls["saga"]).await.expect("scraped");
    assert!(
        saga.samples
            .iter()
            .any(|s| s.metric == "kafka_consumer_lag_records"),
        "the saga's intake reports its consumer lag"
    );
    let status: String = sqlx::query_scalar("SELECT status FROM sagas WHERE order_id = $1")
        .bind(order)
        .fetch_one(&flow)
        .await
        .unwrap();
    assert_eq!(status, "completed");

    for component in components {
        component.kill().await;
    }
    {
        use projectors::Store as _;
        tracking_store
            .clear()
            .await
            .expect("tracking tables dropped");
    }
    payments.stop();
    shop.stop().await;
    cleanup(&settings).await;
}
