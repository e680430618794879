//! One trace from a CRM request through the outbox, Kafka and the IoT projector, as Zipkin
//! shows it: the CRM (in this process, service `crm`) and the IoT platform (a child process,
//! service `iot-platform`) both export to a Zipkin of the test's own (`scripts/infra up
//! zipkin` under an isolated INFRA_HOME and a free port).

use std::process::{Child, Command, Stdio};
use std::time::Duration;

use reqwest::StatusCode;
use serde_json::{json, Value};
use testkit::zipkin::{find, trace};
use testkit::{eventually, Isolated};

mod common;

struct ChildIot {
    base_url: String,
    child: Child,
}

impl Drop for ChildIot {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn start_iot(zipkin: &str, run: &str) -> ChildIot {
    let port = testkit::free_port();
    let child = Command::new(env!("CARGO_BIN_EXE_iot-platform"))
        .env("IOT_LISTEN_ADDR", format!("127.0.0.1:{port}"))
        .env("IOT_GROUP", format!("test-traces-{run}"))
        .env("IOT_NAMESPACE", format!("test:traces:{run}"))
        .env("OTEL_EXPORTER_ZIPKIN_ENDPOINT", zipkin)
        // Export within a tenth of a second instead of the default five.
        .env("OTEL_BSP_SCHEDULE_DELAY", "100")
        .env("RUST_LOG", "warn")
        .stdout(Stdio::null())
        .spawn()
        .expect("the iot-platform binary starts");
    ChildIot {
        base_url: format!("http://127.0.0.1:{port}"),
        child,
    }
}

async fn mandate(iot: &ChildIot, connection: &str) -> Option<Value> {
    let response = reqwest::get(format!("{}/mandates/{connection}", iot.base_url))
        .await
        .ok()?;
    if response.status() != StatusCode::OK {
        return None;
    }
    response.json::<Value>().await.ok()?.get("mandate").cloned()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_crm_put_is_one_trace_through_the_relay_to_the_projector_write() {
    let zipkin = Isolated::new("zipkin");
    zipkin.up_async().await;
    let zipkin_base = format!("http://{}", zipkin.address());
    let endpoint = format!("{zipkin_base}/api/v2/spans");
    let _telemetry =
        telemetry::init_with("crm", Some(telemetry::Exporter::Zipkin(endpoint.clone())));
    assert!(telemetry::enabled(), "the test process exports spans");

    let run = testkit::unique("traces");
    let connection = format!("trace-{run}");
    let crm_app = common::SeededCrm::start(&run, &connection).await;
    let crm = crm_app.url.clone();

    let iot = start_iot(&endpoint, &run);
    eventually(
        "the seeded mandate is served",
        Duration::from_secs(90),
        || {
            let (iot, connection) = (&iot, &connection);
            async move { mandate(iot, connection).await == Some(json!(1)) }
        },
    )
    .await;

    // The request carries a trace context of a caller, so the test knows the trace id.
    let trace_id = uuid::Uuid::new_v4().simple().to_string();
    let caller_span = "00f067aa0ba902b7";
    let response = reqwest::Client::new()
        .put(format!("{crm}/customers/1"))
        .header("traceparent", format!("00-{trace_id}-{caller_span}-01"))
        .json(&json!({
            "firstName": "Femke", "lastName": "Bakker", "city": "Delft",
            "connectionId": connection, "connectionMandate": "2",
        }))
        .send()
        .await
        .unwrap();
    assert!(response.status().is_success(), "PUT: {}", response.status());
    eventually(
        "the changed mandate is served",
        Duration::from_secs(60),
        || {
            let (iot, connection) = (&iot, &connection);
            async move { mandate(iot, connection).await == Some(json!(2)) }
        },
    )
    .await;

    let complete = |spans: &[Value]| {
        find(spans, "crm", "SERVER", "PUT /customers/{id}").is_some()
            && find(spans, "crm", "PRODUCER", "send connection-mandates").is_some()
            && find(
                spans,
                "iot-platform",
                "CONSUMER",
                "process connection-mandates",
            )
            .is_some()
    };
    eventually(
        "Zipkin holds the request, publish and projector spans of the trace",
        Duration::from_secs(90),
        || {
            telemetry::flush();
            let (zipkin_base, trace_id) = (&zipkin_base, &trace_id);
            async move { complete(&trace(zipkin_base, trace_id).await) }
        },
    )
    .await;
    let spans = trace(&zipkin_base, &trace_id).await;

    let request = find(&spans, "crm", "SERVER", "PUT /customers/{id}").unwrap();
    let publish = find(&spans, "crm", "PRODUCER", "send connection-mandates").unwrap();
    let write = find(
        &spans,
        "iot-platform",
        "CONSUMER",
        "process connection-mandates",
    )
    .unwrap();
    // Causal order: caller → request → publish → projector write, each the parent of the next.
    assert_eq!(request["parentId"], caller_span, "{request}");
    assert_eq!(publish["parentId"], request["id"], "{publish}");
    assert_eq!(write["parentId"], publish["id"], "{write}");
    let start = |s: &Value| s["timestamp"].as_u64().unwrap();
    assert!(start(request) <= start(publish), "{request} {publish}");
    assert!(start(publish) <= start(write), "{publish} {write}");
    // The messaging attributes of the Kafka record.
    let tags = &write["tags"];
    assert_eq!(tags["messaging.system"], "kafka", "{write}");
    assert_eq!(tags["messaging.destination.name"], "connection-mandates");
    assert_eq!(
        tags["messaging.consumer.group.name"],
        format!("test-traces-{run}")
    );
    assert!(tags["messaging.kafka.offset"].is_string(), "{write}");
    assert!(tags["messaging.kafka.partition"].is_string(), "{write}");
    assert_eq!(
        publish["tags"]["messaging.destination.name"],
        "connection-mandates"
    );
    assert_eq!(request["tags"]["http.response.status_code"], "200");

    drop(iot);
    crm_app.stop().await;
}
