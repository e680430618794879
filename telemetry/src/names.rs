//! Metric names, shared by every crate that records them (the README's "Traces and metrics"
//! table says which operator question each answers).

/// Counter, labels `method`, `route` (the matched route pattern, `/customers/:id`), `status`.
pub const HTTP_REQUESTS: &str = "http_server_requests_total";
/// Histogram (seconds), same labels as [`HTTP_REQUESTS`].
pub const HTTP_DURATION: &str = "http_server_request_duration_seconds";

/// Gauge, label `outbox` (the relay role): unpublished rows.
pub const OUTBOX_BACKLOG: &str = "outbox_backlog_rows";
/// Gauge (seconds), label `outbox`: age of the oldest unpublished row (0 when none).
pub const OUTBOX_OLDEST_AGE: &str = "outbox_oldest_unpublished_age_seconds";
/// Counter, label `outbox`: records in committed relay transactions.
pub const RELAY_PUBLISHED: &str = "outbox_relay_published_total";
/// Counter, labels `outbox`, `reason` (`key_held`, `aborted`, `kafka`): failures.
pub const RELAY_FAILURES: &str = "outbox_relay_failures_total";
/// Histogram (seconds), label `outbox`: one relay transaction, send to commit.
pub const RELAY_PUBLISH_DURATION: &str = "outbox_relay_publish_duration_seconds";

/// Counter, label `group`: events folded and written.
pub const PROJECTOR_APPLIED: &str = "projector_applied_total";
/// Counter, label `group`: records sent to the dead-letter topic.
pub const PROJECTOR_DEAD_LETTERED: &str = "projector_dead_lettered_total";
/// Histogram (seconds), label `group`: one partition batch's fold + store write.
pub const PROJECTOR_BATCH_DURATION: &str = "projector_batch_duration_seconds";
/// Gauge, labels `group`, `topic`, `partition`: records not yet applied.
pub const CONSUMER_LAG: &str = "kafka_consumer_lag_records";

/// Gauge (bytes), label `slot`: WAL the connector's replication slot still holds.
pub const CONNECTOR_SLOT_LAG: &str = "connector_slot_lag_bytes";
/// Counter, label `connector`: row changes published (rate = changes/s).
pub const CONNECTOR_CHANGES: &str = "connector_changes_total";
