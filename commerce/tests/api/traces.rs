//! One trace from placing an order to its events on Kafka, as Zipkin shows it: the orders
//! and products services run as child processes (services `commerce-orders` and
//! `commerce-products`) exporting to a Zipkin of the test's own (`scripts/infra up zipkin`
//! under an isolated INFRA_HOME and a free port).

use std::time::Duration;

use reqwest::StatusCode;
use serde_json::Value;
use testkit::zipkin::{find, trace};
use testkit::{eventually, Isolated};
use topics::commerce::{OrderEvent, OrderEventKind};

use crate::events::{apply_topics, Probe};
use crate::helpers::{drop_databases, order_body, product_body, test_settings, Client, Process};

/// The spans of one placed order, each the parent of the next (the order's publish is a
/// child of its request, after the reservation answered).
const SPANS: [(&str, &str, &str); 5] = [
    ("commerce-orders", "SERVER", "POST /orders"),
    ("commerce-orders", "CLIENT", "POST /reservations"),
    ("commerce-products", "SERVER", "POST /reservations"),
    (
        "commerce-products",
        "PRODUCER",
        "send commerce.stock-events",
    ),
    ("commerce-orders", "PRODUCER", "send commerce.order-events"),
];

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_placed_order_is_one_trace_through_products_and_both_relays() {
    let zipkin = Isolated::new("zipkin");
    zipkin.up_async().await;
    let zipkin_base = format!("http://{}", zipkin.address());
    let endpoint = format!("{zipkin_base}/api/v2/spans");
    let settings = test_settings();
    apply_topics(&settings.kafka).await;

    let traced = [
        ("OTEL_EXPORTER_ZIPKIN_ENDPOINT", endpoint.clone()),
        // Export within a tenth of a second instead of the default five.
        ("OTEL_BSP_SCHEDULE_DELAY", "100".to_owned()),
    ];
    let products = Process::start("products", &settings, &traced).await;
    let mut settings = settings;
    settings.orders_products_url = products.base_url.clone();
    let orders = Process::start("orders", &settings, &traced).await;
    let client = Client::default();
    let (status, product) = client
        .post(
            &format!("{}/products", products.base_url),
            &product_body("Traced", 5),
        )
        .await;
    assert_eq!(status, StatusCode::CREATED, "{product}");
    let probe = Probe::<OrderEvent>::from_end(&settings.kafka);

    // The request carries a trace context of a caller, so the test knows the trace id.
    let trace_id = uuid::Uuid::new_v4().simple().to_string();
    let caller_span = "00f067aa0ba902b7";
    let response = client
        .http
        .post(format!("{}/orders", orders.base_url))
        .header("traceparent", format!("00-{trace_id}-{caller_span}-01"))
        .json(&order_body(3, product["id"].as_i64().unwrap(), 2))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::CREATED);
    let order: Value = response.json().await.unwrap();
    let id = order["id"].as_str().unwrap();

    // The relay heads the record with the trace context of its publish span.
    let (event, record_trace) = probe.expect_traced(id, 1).await.remove(0);
    assert_eq!(event.kind, OrderEventKind::Placed);
    let record_trace = record_trace.expect("the PLACED record has a traceparent header");

    eventually(
        "Zipkin holds the order's request, reservation and publish spans in one trace",
        Duration::from_secs(90),
        || {
            let (zipkin_base, trace_id) = (&zipkin_base, &trace_id);
            async move {
                let spans = trace(zipkin_base, trace_id).await;
                SPANS
                    .iter()
                    .all(|(service, kind, name)| find(&spans, service, kind, name).is_some())
            }
        },
    )
    .await;
    let spans = trace(&zipkin_base, &trace_id).await;
    let [request, call, reservation, stock_publish, order_publish] =
        SPANS.map(|(service, kind, name)| find(&spans, service, kind, name).unwrap());
    // Causal order: caller → order request → reservation call → products request → stock
    // event publish; order request → order event publish.
    assert_eq!(request["parentId"], caller_span, "{request}");
    assert_eq!(call["parentId"], request["id"], "{call}");
    assert_eq!(reservation["parentId"], call["id"], "{reservation}");
    assert_eq!(
        stock_publish["parentId"], reservation["id"],
        "{stock_publish}"
    );
    assert_eq!(order_publish["parentId"], request["id"], "{order_publish}");
    let start = |s: &Value| s["timestamp"].as_u64().unwrap();
    let end = |s: &Value| start(s) + s["duration"].as_u64().unwrap_or(0);
    assert!(start(request) <= start(call), "{request} {call}");
    assert!(start(call) <= start(reservation), "{call} {reservation}");
    assert!(start(reservation) <= start(stock_publish));
    // The order is confirmed (and its event written) only after the reservation answered.
    assert!(end(call) <= start(order_publish), "{call} {order_publish}");
    assert_eq!(
        record_trace.traceparent,
        format!("00-{trace_id}-{}-01", order_publish["id"].as_str().unwrap()),
        "the record's traceparent names the publish span"
    );
    assert_eq!(request["tags"]["http.response.status_code"], "201");
    assert_eq!(reservation["tags"]["http.response.status_code"], "201");
    assert_eq!(
        order_publish["tags"]["messaging.destination.name"],
        "commerce.order-events"
    );

    drop(orders);
    drop(products);
    drop_databases(&settings).await;
}
