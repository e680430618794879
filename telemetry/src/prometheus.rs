//! The Prometheus recorder (global, installed once per process by [`crate::init`]) and the
//! `GET /metrics` route that renders it in the text exposition format.

use std::net::SocketAddr;
use std::sync::OnceLock;
use std::time::Duration;

use axum::routing::get;
use axum::Router;
use metrics_exporter_prometheus::{PrometheusBuilder, PrometheusHandle};

/// Histogram buckets (seconds) for every duration metric: 0.5 ms to 10 s.
const BUCKETS: &[f64] = &[
    0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
];
/// How often histograms are drained into their buckets between scrapes.
const UPKEEP: Duration = Duration::from_secs(5);

static HANDLE: OnceLock<PrometheusHandle> = OnceLock::new();

/// Installs the global recorder (first call wins; later calls return the same handle). When
/// another recorder is already installed, metrics go there and `/metrics` renders an empty
/// registry.
pub(crate) fn install(service: &str) -> &'static PrometheusHandle {
    HANDLE.get_or_init(|| {
        let builder = || {
            PrometheusBuilder::new()
                .add_global_label("service", service.to_owned())
                .set_buckets(BUCKETS)
                .expect("the bucket list is not empty")
        };
        let handle = builder()
            .install_recorder()
            .unwrap_or_else(|_| builder().build_recorder().handle());
        let upkeep = handle.clone();
        let _ = std::thread::Builder::new()
            .name("metrics-upkeep".to_owned())
            .spawn(move || loop {
                std::thread::sleep(UPKEEP);
                upkeep.run_upkeep();
            });
        handle
    })
}

/// Installs the global recorder for a binary that keeps its own `tracing` subscriber (the
/// connector) instead of calling [`crate::init`].
pub fn install_recorder(service: &str) {
    install(service);
}

/// What `GET /metrics` answers now.
pub fn render() -> String {
    let handle = HANDLE.get().unwrap_or_else(|| install("unknown"));
    handle.run_upkeep();
    handle.render()
}

/// `GET /metrics` in the Prometheus text format, to merge into a service's router.
pub fn metrics_router<S: Clone + Send + Sync + 'static>() -> Router<S> {
    Router::new().route(
        "/metrics",
        get(|| async {
            (
                [(
                    axum::http::header::CONTENT_TYPE,
                    "text/plain; version=0.0.4; charset=utf-8",
                )],
                render(),
            )
        }),
    )
}

/// For binaries without an HTTP server of their own (the connector): binds `addr` and serves
/// `GET /metrics` on it in a background task for the rest of the process. Returns the bound
/// address (`127.0.0.1:0` picks a free port).
pub async fn serve_metrics(addr: &str) -> std::io::Result<SocketAddr> {
    let listener = tokio::net::TcpListener::bind(addr).await?;
    let bound = listener.local_addr()?;
    tokio::spawn(async move {
        if let Err(e) = axum::serve(listener, metrics_router::<()>()).await {
            tracing::warn!(error = %e, "the metrics listener stopped");
        }
    });
    Ok(bound)
}
