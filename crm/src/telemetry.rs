//! Logs, traces and metrics for the CRM process, through the shared `telemetry` layer:
//! `RUST_LOG` filters logs; `OTEL_EXPORTER_ZIPKIN_ENDPOINT` or `OTEL_EXPORTER_OTLP_ENDPOINT`
//! turns span export on (service name `crm`); metrics are served at `GET /metrics`.

/// Installs it all; a second call (several tests in one process) changes nothing. Keep the
/// guard until the process ends: dropping it flushes and stops span export.
pub fn init() -> telemetry::Guard {
    telemetry::init("crm")
}
