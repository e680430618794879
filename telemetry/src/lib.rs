//! Traces and metrics for every service and binary of the platform, in one call each.
//!
//! - [`init`] (module `setup`): the `tracing` subscriber (fmt + `RUST_LOG`), plus an
//!   OpenTelemetry layer when an exporter is configured by environment
//!   (`OTEL_EXPORTER_ZIPKIN_ENDPOINT` → Zipkin, else `OTEL_EXPORTER_OTLP_ENDPOINT` /
//!   `OTEL_EXPORTER_OTLP_TRACES_ENDPOINT` → OTLP over HTTP). With neither there is no OTel
//!   layer at all; [`enabled`] is then false and every helper below returns at once. Also
//!   installs the Prometheus recorder. Returns a [`Guard`] that flushes spans on drop.
//! - [`context`]: [`TraceContext`] (W3C `traceparent` / `tracestate`): the current span's,
//!   stored with an outbox row, put into Kafka record headers ([`context::HeaderInjector`]
//!   over rdkafka's `OwnedHeaders`) and read back ([`context::HeaderExtractor`] over any
//!   `Headers`, borrowed ones included).
//! - [`messaging`]: producer and consumer spans after the OpenTelemetry messaging
//!   conventions for Kafka (`messaging.system`, `messaging.destination.name`, partition,
//!   offset, `messaging.consumer.group.name`).
//! - [`http`]: the axum layer every service puts on its router: a server span per request
//!   (continuing an incoming `traceparent`), request counts and latency per route + status.
//! - [`prometheus`]: `GET /metrics` ([`metrics_router`]) in the Prometheus text format, or a
//!   listener of its own ([`serve_metrics`]) for binaries without HTTP.
//! - [`lag`]: a consumer group's lag per partition as gauges, polled.
//! - [`names`]: the metric names, one place for every crate.
//!
//! Record metrics with the re-exported [`metrics`] macros (`telemetry::metrics::counter!`).

pub mod context;
pub mod http;
pub mod lag;
pub mod messaging;
pub mod names;
pub mod prometheus;
mod setup;
mod zipkin;

pub use context::TraceContext;
pub use metrics;
pub use prometheus::{metrics_router, serve_metrics};
pub use setup::{enabled, flush, init, init_with, Exporter, Guard};
