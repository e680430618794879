//! One trace from placing an order until it has landed in the tracking read model, as Zipkin
//! shows it: commerce's services run in this process (service `commerce`, exporting), the
//! tracking read model is a child process (service `orderflow-tracking`), and both export to
//! a Zipkin of the test's own (`scripts/infra up zipkin` under an isolated INFRA_HOME and a
//! free port). Its own test executable: tracing is installed once per process.

use std::time::Duration;

use orderflow::tracking::OrderView;
use reqwest::StatusCode;
use serde_json::{json, Value};
use testkit::zipkin::{find, trace};
use testkit::{eventually, Isolated};
use topics::commerce::OrderEvent;
use topics::events::Event;
use uuid::Uuid;

#[path = "flow/helpers.rs"]
#[allow(dead_code)]
mod helpers;

use helpers::{cleanup, flow_settings, tracking_from_end, Component, Shop, WAIT};

/// The spans of one placed order until it has landed, each the parent of the next.
const SPANS: [(&str, &str, &str); 3] = [
    ("commerce", "SERVER", "POST /orders"),
    ("commerce", "PRODUCER", "send commerce.order-events"),
    (
        "orderflow-tracking",
        "CONSUMER",
        "process commerce.order-events",
    ),
];

async fn view(url: &str, order: &str) -> Option<OrderView> {
    let response = reqwest::get(format!("{url}/orders/{order}")).await.ok()?;
    if !response.status().is_success() {
        return None;
    }
    response.json().await.ok()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_placed_order_is_one_trace_until_the_tracking_read_model_wrote_it() {
    let zipkin = Isolated::new("zipkin");
    zipkin.up_async().await;
    let zipkin_base = format!("http://{}", zipkin.address());
    let endpoint = format!("{zipkin_base}/api/v2/spans");
    let _telemetry = telemetry::init_with(
        "commerce",
        Some(telemetry::Exporter::Zipkin(endpoint.clone())),
    );
    assert!(telemetry::enabled(), "the test process exports spans");

    let shop = Shop::start().await;
    let mut settings = flow_settings(&shop).await;
    settings.tracking_namespace = testkit::unique("orderflow_test_tracking");
    settings.tracking_group = testkit::unique("orderflow_test_tracking");
    let _store = tracking_from_end(&settings).await;
    let address = format!("127.0.0.1:{}", testkit::free_port());
    let url = format!("http://{address}");
    let tracking = Component::start(
        "tracking",
        &settings,
        &[
            ("TRACKING_LISTEN_ADDR", address.as_str()),
            ("OTEL_EXPORTER_ZIPKIN_ENDPOINT", endpoint.as_str()),
            // Export within a tenth of a second instead of the default five.
            ("OTEL_BSP_SCHEDULE_DELAY", "100"),
        ],
    );
    let product = shop.product(10).await;

    // The request carries a trace context of a caller, so the test knows the trace id.
    let trace_id = Uuid::new_v4().simple().to_string();
    let caller_span = "00f067aa0ba902b7";
    let response = shop
        .http
        .post(format!("{}/orders", shop.orders.address))
        .header("traceparent", format!("00-{trace_id}-{caller_span}-01"))
        .json(&json!({ "customerId": 1, "productId": product, "quantity": 2 }))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::CREATED);
    let order: Value = response.json().await.unwrap();
    let id = order["id"].as_str().unwrap().to_owned();
    eventually("the tracking read model holds the order", WAIT, || async {
        view(&url, &id).await.is_some()
    })
    .await;

    eventually(
        "Zipkin holds the order's request, publish and read-model write in one trace",
        Duration::from_secs(90),
        || {
            telemetry::flush();
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
    let [request, publish, write] =
        SPANS.map(|(service, kind, name)| find(&spans, service, kind, name).unwrap());
    // Causal order: caller → order request → order event publish → the read model's write.
    assert_eq!(request["parentId"], caller_span, "{request}");
    assert_eq!(publish["parentId"], request["id"], "{publish}");
    assert_eq!(write["parentId"], publish["id"], "{write}");
    let start = |s: &Value| s["timestamp"].as_u64().unwrap();
    assert!(start(request) <= start(publish), "{request} {publish}");
    assert!(start(publish) <= start(write), "{publish} {write}");
    let tags = &write["tags"];
    assert_eq!(tags["messaging.system"], "kafka", "{write}");
    assert_eq!(tags["messaging.destination.name"], OrderEvent::TOPIC.name);
    assert_eq!(
        tags["messaging.consumer.group.name"],
        settings.tracking_group.as_str()
    );
    assert!(tags["messaging.kafka.offset"].is_string(), "{write}");

    tracking.kill().await;
    shop.stop().await;
    cleanup(&settings).await;
}
