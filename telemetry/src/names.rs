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
/// Counter, label `connector`: rows published by the initial and incremental snapshots.
pub const CONNECTOR_SNAPSHOT_ROWS: &str = "connector_snapshot_rows_total";
/// Counter, labels `connector`, `reason` (`send`, `delivery`, `offset`): records Kafka refused
/// or did not acknowledge.
pub const CONNECTOR_PUBLISH_FAILURES: &str = "connector_publish_failures_total";

/// Counter, label `table`: source change records the query engine consumed.
pub const QUERIES_SOURCE_CHANGES: &str = "queries_source_changes_total";
/// Counter, label `table`: source change records the query engine can never read, sent to
/// its dead-letter topic with the reason.
pub const QUERIES_SOURCE_DEAD_LETTERED: &str = "queries_source_dead_lettered_total";
/// Counter, label `table`: waits for a source record that could not be decoded yet (registry
/// unreachable, schema id unknown to it); a rising count with a flat consumption is a stall.
pub const QUERIES_SOURCE_RETRIES: &str = "queries_source_retries_total";
/// Counter, labels `query`, `op` (`added`, `updated`, `deleted`): result changes committed.
pub const QUERIES_RESULT_CHANGES: &str = "queries_result_changes_total";
/// Histogram (seconds): one dataflow step (apply a batch of source changes, advance time,
/// collect the final answer changes).
pub const QUERIES_STEP_DURATION: &str = "queries_step_duration_seconds";
/// Gauge, labels `topic`, `partition`: source records not yet consumed by the engine (high
/// watermark minus next offset).
pub const QUERIES_SOURCE_LAG: &str = "queries_source_lag_records";
