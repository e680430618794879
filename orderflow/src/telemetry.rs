//! Logs, traces and metrics through the shared `telemetry` crate: [`init`] per component
//! (service name `orderflow-<component>`), `GET /metrics` on the HTTP components (payments,
//! tracking) and, for the consumers without HTTP (saga, restock, loyalty, audit), a metrics
//! listener of their own on `metrics_listen_addr`. The order flow's own metrics are in
//! [`names`].

use std::net::SocketAddr;

/// The order flow's metric names (every one also carries `service`).
pub mod names {
    /// Counter, labels `step`, `outcome` (`completed`: the step's advance committed;
    /// `failed`: it failed and is retried, compensated or given up).
    pub const SAGA_STEPS: &str = "orderflow_saga_steps_total";
    /// Counter, label `status` (`completed`, `compensated`, `skipped`): sagas that finished.
    pub const SAGAS_FINISHED: &str = "orderflow_sagas_finished_total";
    /// Counter, label `stage` (`fired`: a due timer became a restock; `done`: the products
    /// service added the stock).
    pub const RESTOCKS: &str = "orderflow_restocks_total";
    /// Counter, label `mode`: points awarded (exactly-once: new ledger entries only).
    pub const LOYALTY_POINTS: &str = "orderflow_loyalty_points_awarded_total";
    /// Counter, label `mode`: orders awarded.
    pub const LOYALTY_ORDERS: &str = "orderflow_loyalty_orders_awarded_total";
    /// Counter: audit lines written and fsynced.
    pub const AUDIT_LINES: &str = "orderflow_audit_lines_written_total";
    /// Counter, label `outcome` (`approved`, `declined`, `repeated`, `unavailable`): charges
    /// the payment provider answered.
    pub const CHARGES: &str = "orderflow_payments_charges_total";
}

/// Installs logging (`RUST_LOG`), the Prometheus recorder and, when an exporter is
/// configured by environment, tracing, as service `orderflow-<component>`. Keep the guard
/// until the end of `main`.
pub fn init(component: &str) -> telemetry::Guard {
    telemetry::init(&format!("orderflow-{component}"))
}

/// Serves `GET /metrics` on `addr` in the background, unless `addr` is empty; the bound
/// address.
pub async fn serve_metrics(addr: &str) -> std::io::Result<Option<SocketAddr>> {
    if addr.trim().is_empty() {
        return Ok(None);
    }
    let bound = telemetry::serve_metrics(addr.trim()).await?;
    tracing::info!(address = %bound, "metrics listening");
    Ok(Some(bound))
}
