//! Tracing setup. `RUST_LOG` overrides the default filter.

use tracing_subscriber::EnvFilter;

/// Installs a fmt subscriber; a second call (several tests in one process) is a no-op.
pub fn init() {
    let filter = EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| EnvFilter::new("info,sqlx=warn,rdkafka=warn"));
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_target(true)
        .try_init();
}
