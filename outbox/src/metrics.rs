//! The relay's Prometheus metrics (names in [`telemetry::names`], label `outbox` = the relay
//! role): records published, failures by reason, transaction latency, and, polled every few
//! seconds, the backlog and the age of the oldest unpublished row.

use std::time::{Duration, Instant};

use sqlx::postgres::{PgConnectOptions, PgPoolOptions};
use telemetry::metrics::{counter, gauge, histogram};
use telemetry::names::{
    OUTBOX_BACKLOG, OUTBOX_OLDEST_AGE, RELAY_FAILURES, RELAY_PUBLISHED, RELAY_PUBLISH_DURATION,
};
use tokio::task::JoinHandle;

use crate::publisher::Published;

/// How often the backlog is counted.
const BACKLOG_POLL: Duration = Duration::from_secs(5);

/// After one [`crate::Publisher::publish`]: `encode_failed` rows could not be encoded.
pub(crate) fn published(role: &str, published: &Published, encode_failed: usize, started: Instant) {
    let role = role.to_owned();
    counter!(RELAY_PUBLISHED, "outbox" => role.clone()).increment(published.committed.len() as u64);
    let held = published.failed.len() + encode_failed;
    if held > 0 {
        publish_failed(&role, "key_held", held as u64);
    }
    if published.aborted {
        publish_failed(&role, "aborted", 1);
    }
    histogram!(RELAY_PUBLISH_DURATION, "outbox" => role).record(started.elapsed().as_secs_f64());
}

/// `count` failures of `reason` (`key_held`, `aborted`, `kafka`).
pub(crate) fn publish_failed(role: &str, reason: &'static str, count: u64) {
    counter!(RELAY_FAILURES, "outbox" => role.to_owned(), "reason" => reason).increment(count);
}

/// Counts the unpublished rows every few seconds until dropped.
pub(crate) struct BacklogWatch(JoinHandle<()>);

impl Drop for BacklogWatch {
    fn drop(&mut self) {
        self.0.abort();
    }
}

pub(crate) fn watch_backlog(database: &PgConnectOptions, role: &str) -> BacklogWatch {
    let pool = PgPoolOptions::new()
        .max_connections(1)
        .acquire_timeout(Duration::from_secs(5))
        .connect_lazy_with(database.clone());
    let role = role.to_owned();
    BacklogWatch(tokio::spawn(async move {
        loop {
            let counted: Result<(i64, f64), sqlx::Error> = sqlx::query_as(
                "SELECT count(*), COALESCE(EXTRACT(EPOCH FROM now() - min(created_at)), 0)::float8
                 FROM outbox WHERE published_at IS NULL",
            )
            .fetch_one(&pool)
            .await;
            match counted {
                Ok((rows, age)) => {
                    gauge!(OUTBOX_BACKLOG, "outbox" => role.clone()).set(rows as f64);
                    gauge!(OUTBOX_OLDEST_AGE, "outbox" => role.clone()).set(age.max(0.0));
                }
                Err(e) => tracing::debug!(error = %e, "outbox backlog not counted"),
            }
            tokio::time::sleep(BACKLOG_POLL).await;
        }
    }))
}
