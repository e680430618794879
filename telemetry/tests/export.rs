//! Spans reach a real Zipkin (a `scripts/infra` instance of the test's own) once flushed.

use std::time::Duration;

use telemetry::{Exporter, TraceContext};
use testkit::{eventually, Isolated};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_span_with_a_remote_parent_reaches_zipkin() {
    let zipkin = Isolated::new("zipkin");
    zipkin.up_async().await;
    let base = format!("http://{}", zipkin.address());
    let _guard = telemetry::init_with(
        "telemetry-test",
        Some(Exporter::Zipkin(format!("{base}/api/v2/spans"))),
    );
    assert!(telemetry::enabled());

    let trace_id = uuid::Uuid::new_v4().simple().to_string();
    let parent = TraceContext::from_parts(Some(format!("00-{trace_id}-00f067aa0ba902b7-01")), None)
        .expect("a well-formed traceparent");
    let span = telemetry::messaging::publish_span("some-topic", "key-1", Some(&parent))
        .expect("tracing is on and the record has a parent");
    let child = TraceContext::of_span(&span).expect("the span is sampled");
    assert!(child.traceparent.contains(&trace_id), "{child:?}");
    drop(span);

    eventually("Zipkin holds the span", Duration::from_secs(90), || {
        telemetry::flush();
        let url = format!("{base}/api/v2/trace/{trace_id}");
        async move {
            let Ok(response) = reqwest::get(url).await else {
                return false;
            };
            let spans: Vec<serde_json::Value> = response.json().await.unwrap_or_default();
            spans.iter().any(|s| {
                s["name"] == "send some-topic"
                    && s["kind"] == "PRODUCER"
                    && s["parentId"] == "00f067aa0ba902b7"
                    && s["localEndpoint"]["serviceName"] == "telemetry-test"
            })
        }
    })
    .await;
}
