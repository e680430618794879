//! Logs, traces and metrics for one commerce process, through the shared `telemetry` layer:
//! `RUST_LOG` filters logs; `OTEL_EXPORTER_ZIPKIN_ENDPOINT` or `OTEL_EXPORTER_OTLP_ENDPOINT`
//! turns span export on; metrics are served at `GET /metrics`.

/// Installs it all under the service name `commerce-<subcommand>` (`commerce-orders`, …),
/// taken from the command line; a second call (several tests in one process) changes
/// nothing. Keep the guard until the process ends: dropping it flushes span export.
pub fn init() -> telemetry::Guard {
    let service = std::env::args()
        .nth(1)
        .filter(|a| !a.starts_with('-'))
        .map_or_else(|| "commerce".to_owned(), |a| format!("commerce-{a}"));
    telemetry::init(&service)
}
