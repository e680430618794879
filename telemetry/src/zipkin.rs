//! A span exporter to Zipkin's JSON v2 API (`POST /api/v2/spans`).
//!
//! Written here instead of using `opentelemetry-zipkin`: that crate is deprecated, and its
//! 0.33 release sends no `localEndpoint.serviceName`, so every span lands under an unnamed
//! service. Zipkin's own OTLP intake needs a module its exec jar does not bundle.

use std::collections::BTreeMap;
use std::time::{Duration, SystemTime};

use opentelemetry::trace::{SpanKind, Status};
use opentelemetry::Value;
use opentelemetry_sdk::error::{OTelSdkError, OTelSdkResult};
use opentelemetry_sdk::trace::{SpanData, SpanExporter};
use opentelemetry_sdk::Resource;
use serde_json::json;

/// How long one POST of a batch may take.
const TIMEOUT: Duration = Duration::from_secs(10);

#[derive(Debug)]
pub(crate) struct ZipkinExporter {
    endpoint: String,
    service: String,
    client: reqwest::blocking::Client,
}

impl ZipkinExporter {
    /// Must not run inside an async context (the blocking client starts a runtime).
    pub(crate) fn new(endpoint: &str, service: &str) -> Result<Self, String> {
        let client = reqwest::blocking::Client::builder()
            .timeout(TIMEOUT)
            .build()
            .map_err(|e| format!("Zipkin HTTP client: {e}"))?;
        Ok(Self {
            endpoint: endpoint.to_owned(),
            service: service.to_owned(),
            client,
        })
    }
}

impl SpanExporter for ZipkinExporter {
    async fn export(&self, batch: Vec<SpanData>) -> OTelSdkResult {
        let spans: Vec<serde_json::Value> = batch
            .into_iter()
            .map(|s| to_zipkin(&self.service, s))
            .collect();
        // Called on the batch processor's own thread, never on an async runtime.
        let response = self
            .client
            .post(&self.endpoint)
            .json(&spans)
            .send()
            .map_err(|e| OTelSdkError::InternalFailure(format!("POST {}: {e}", self.endpoint)))?;
        if !response.status().is_success() {
            return Err(OTelSdkError::InternalFailure(format!(
                "POST {}: HTTP {}",
                self.endpoint,
                response.status()
            )));
        }
        Ok(())
    }

    fn set_resource(&mut self, resource: &Resource) {
        if let Some(name) = resource.get(&opentelemetry::Key::new("service.name")) {
            self.service = name.to_string();
        }
    }
}

fn micros(t: SystemTime) -> u64 {
    t.duration_since(SystemTime::UNIX_EPOCH)
        .map_or(0, |d| d.as_micros() as u64)
}

fn to_zipkin(service: &str, span: SpanData) -> serde_json::Value {
    let mut tags: BTreeMap<String, String> = span
        .attributes
        .into_iter()
        .map(|kv| (kv.key.as_str().to_owned(), value(&kv.value)))
        .collect();
    tags.insert(
        "otel.scope.name".to_owned(),
        span.instrumentation_scope.name().to_owned(),
    );
    match span.status {
        Status::Unset => {}
        Status::Ok => {
            tags.insert("otel.status_code".to_owned(), "OK".to_owned());
        }
        Status::Error { description } => {
            tags.insert("otel.status_code".to_owned(), "ERROR".to_owned());
            tags.insert("error".to_owned(), description.into_owned());
        }
    }
    let kind = match span.span_kind {
        SpanKind::Server => Some("SERVER"),
        SpanKind::Client => Some("CLIENT"),
        SpanKind::Producer => Some("PRODUCER"),
        SpanKind::Consumer => Some("CONSUMER"),
        SpanKind::Internal => None,
    };
    let start = micros(span.start_time);
    let mut zipkin = json!({
        "traceId": span.span_context.trace_id().to_string(),
        "id": span.span_context.span_id().to_string(),
        "name": span.name,
        "timestamp": start,
        "duration": micros(span.end_time).saturating_sub(start).max(1),
        "localEndpoint": { "serviceName": service },
        "tags": tags,
        "annotations": span.events.into_iter().map(|e| json!({
            "timestamp": micros(e.timestamp),
            "value": e.name,
        })).collect::<Vec<_>>(),
    });
    if span.parent_span_id != opentelemetry::trace::SpanId::INVALID {
        zipkin["parentId"] = json!(span.parent_span_id.to_string());
    }
    if let Some(kind) = kind {
        zipkin["kind"] = json!(kind);
    }
    zipkin
}

fn value(value: &Value) -> String {
    value.as_str().into_owned()
}
