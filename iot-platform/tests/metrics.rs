//! `GET /metrics` of the CRM (in this process) and of the IoT platform (a child process, so
//! its registry is its own), parsed as the Prometheus text format, before and after a
//! mandate change: the request, relay and projector counters move, and the gauges exist.

use std::process::{Child, Command, Stdio};
use std::time::Duration;

use prometheus_parse::{Scrape, Value as Sample};
use reqwest::StatusCode;
use serde_json::json;
use testkit::eventually;

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

async fn scrape(base_url: &str) -> Option<Scrape> {
    let response = reqwest::get(format!("{base_url}/metrics")).await.ok()?;
    if response.status() != StatusCode::OK {
        return None;
    }
    let text = response.text().await.ok()?;
    Scrape::parse(text.lines().map(|l| Ok(l.to_owned()))).ok()
}

/// The sum of the counter (or gauge) `name` over the samples whose labels include `labels`.
fn total(scrape: &Scrape, name: &str, labels: &[(&str, &str)]) -> Option<f64> {
    let mut found = None;
    for sample in scrape.samples.iter().filter(|s| s.metric == name) {
        if labels.iter().all(|(k, v)| sample.labels.get(k) == Some(*v)) {
            let value = match sample.value {
                Sample::Counter(v) | Sample::Gauge(v) | Sample::Untyped(v) => v,
                Sample::Histogram(ref buckets) => buckets.last().map_or(0.0, |b| b.count),
                Sample::Summary(_) => continue,
            };
            *found.get_or_insert(0.0) += value;
        }
    }
    found
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn counters_move_on_every_service_after_traffic() {
    let _telemetry = telemetry::init_with("crm", None);
    let run = testkit::unique("metrics");
    let connection = format!("metrics-{run}");
    let crm_app = common::SeededCrm::start(&run, &connection).await;
    let (crm, settings) = (crm_app.url.clone(), crm_app.settings.clone());

    let port = testkit::free_port();
    let group = format!("test-metrics-{run}");
    let iot = ChildIot {
        base_url: format!("http://127.0.0.1:{port}"),
        child: Command::new(env!("CARGO_BIN_EXE_iot-platform"))
            .env("IOT_LISTEN_ADDR", format!("127.0.0.1:{port}"))
            .env("IOT_GROUP", &group)
            .env("IOT_NAMESPACE", format!("test:metrics:{run}"))
            .env("RUST_LOG", "warn")
            .stdout(Stdio::null())
            .spawn()
            .unwrap(),
    };
    let mandate = |value: u64| {
        let (iot, connection) = (&iot, &connection);
        async move {
            let Ok(response) =
                reqwest::get(format!("{}/mandates/{connection}", iot.base_url)).await
            else {
                return false;
            };
            response.status() == StatusCode::OK
                && response
                    .json::<serde_json::Value>()
                    .await
                    .ok()
                    .map(|b| b["mandate"].clone())
                    == Some(json!(value))
        }
    };
    eventually(
        "the seeded mandate is served",
        Duration::from_secs(90),
        || mandate(1),
    )
    .await;

    let relay = settings.relay_role();
    let put = [
        ("method", "PUT"),
        ("route", "/customers/:id"),
        ("status", "200"),
    ];
    let read = [("route", "/mandates/:connection_id"), ("status", "200")];
    let crm_before = scrape(&crm).await.expect("the CRM answers /metrics");
    let iot_before = scrape(&iot.base_url)
        .await
        .expect("the IoT platform answers /metrics");
    let puts_before = total(&crm_before, "http_server_requests_total", &put).unwrap_or(0.0);
    let published_before = total(
        &crm_before,
        "outbox_relay_published_total",
        &[("outbox", &relay)],
    )
    .expect("the relay published the seed");
    let applied_before = total(&iot_before, "projector_applied_total", &[("group", &group)])
        .expect("the projector applied the seed");
    let reads_before = total(&iot_before, "http_server_requests_total", &read)
        .expect("the mandate reads were counted");

    let response = reqwest::Client::new()
        .put(format!("{crm}/customers/1"))
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
        || mandate(2),
    )
    .await;

    let crm_after = scrape(&crm).await.unwrap();
    assert_eq!(
        total(&crm_after, "http_server_requests_total", &put),
        Some(puts_before + 1.0)
    );
    assert!(
        total(&crm_after, "http_server_request_duration_seconds", &put) >= Some(1.0),
        "a latency histogram per route and status"
    );
    assert!(
        total(
            &crm_after,
            "outbox_relay_published_total",
            &[("outbox", &relay)]
        ) > Some(published_before)
    );
    let iot_after = scrape(&iot.base_url).await.unwrap();
    assert!(
        total(&iot_after, "projector_applied_total", &[("group", &group)]) > Some(applied_before)
    );
    assert!(total(&iot_after, "http_server_requests_total", &read) > Some(reads_before));
    assert!(
        total(
            &iot_after,
            "projector_batch_duration_seconds",
            &[("group", &group)]
        ) >= Some(1.0)
    );
    // Gauges polled every few seconds: they appear, and the backlog drains to nothing.
    eventually(
        "the outbox backlog gauge reads 0",
        Duration::from_secs(60),
        || {
            let (crm, relay) = (&crm, &relay);
            async move {
                scrape(crm).await.and_then(|s| {
                    total(&s, "outbox_backlog_rows", &[("outbox", relay)]).zip(total(
                        &s,
                        "outbox_oldest_unpublished_age_seconds",
                        &[("outbox", relay)],
                    ))
                }) == Some((0.0, 0.0))
            }
        },
    )
    .await;
    eventually(
        "the lag gauge is there per partition",
        Duration::from_secs(60),
        || {
            let (iot, group) = (&iot, &group);
            async move {
                scrape(&iot.base_url).await.is_some_and(|s| {
                    s.samples
                        .iter()
                        .filter(|m| m.metric == "kafka_consumer_lag_records")
                        .filter(|m| m.labels.get("group") == Some(group.as_str()))
                        .count()
                        >= 4
                })
            }
        },
    )
    .await;

    drop(iot);
    crm_app.stop().await;
}
