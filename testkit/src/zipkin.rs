//! Reading traces back from Zipkin's v2 HTTP API (an [`crate::Isolated`] `zipkin`), for the
//! tests that follow one request through several processes.

use serde_json::Value;

/// The spans Zipkin holds for `trace_id` (none while it answers anything but 200).
pub async fn trace(zipkin: &str, trace_id: &str) -> Vec<Value> {
    let Ok(response) = reqwest::get(format!("{zipkin}/api/v2/trace/{trace_id}")).await else {
        return Vec::new();
    };
    if response.status() != reqwest::StatusCode::OK {
        return Vec::new();
    }
    response.json().await.unwrap_or_default()
}

/// The span of `service` with this `kind` (`SERVER`, `CLIENT`, `PRODUCER`, `CONSUMER`) and
/// `name` (compared without case: Zipkin lower-cases span names).
pub fn find<'s>(spans: &'s [Value], service: &str, kind: &str, name: &str) -> Option<&'s Value> {
    spans.iter().find(|s| {
        s["localEndpoint"]["serviceName"] == service
            && s["kind"] == kind
            && s["name"]
                .as_str()
                .is_some_and(|n| n.eq_ignore_ascii_case(name))
    })
}
