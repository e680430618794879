//! The `outbox` table. A service either runs [`migrate`] at start (idempotent), or copies
//! [`MIGRATION`] into a migration file of its own (the CRM's migrations already have it).

use sqlx::{Executor, Postgres};

use crate::error::Result;

/// Creates the `outbox` table and its indexes unless they exist.
///
/// `id` is the relay order and the per-key sequence (`event-seq`); `payload` is the event as
/// JSON, turned into record bytes only by the relay's [`crate::Encode`]. Both indexes cover
/// only the unpublished tail: `(id)` for the relay's batches in id order, `(key, id)` for
/// retrying the keys it held back.
pub const MIGRATION: &str = r#"
CREATE TABLE IF NOT EXISTS outbox (
    id           BIGSERIAL PRIMARY KEY,
    topic        TEXT NOT NULL,
    key          TEXT NOT NULL,
    event_id     UUID NOT NULL UNIQUE,
    payload      JSONB NOT NULL,
    created_at   TIMESTAMPTZ NOT NULL DEFAULT now(),
    published_at TIMESTAMPTZ
);
CREATE INDEX IF NOT EXISTS outbox_unpublished ON outbox (id) WHERE published_at IS NULL;
CREATE INDEX IF NOT EXISTS outbox_unpublished_key ON outbox (key, id) WHERE published_at IS NULL;
"#;

/// The W3C trace context of the request that wrote a row, nullable: `traceparent` and
/// `tracestate` default to the transaction's `outbox.traceparent` / `outbox.tracestate`
/// settings, which [`crate::Outbox::enqueue`] sets only when tracing is on, so no insert
/// statement names these columns. [`migrate`] runs it after [`MIGRATION`]; a service with
/// migrations of its own copies it into one.
pub const TRACE_CONTEXT_MIGRATION: &str = r#"
ALTER TABLE outbox
    ADD COLUMN IF NOT EXISTS traceparent TEXT
        DEFAULT NULLIF(current_setting('outbox.traceparent', true), ''),
    ADD COLUMN IF NOT EXISTS tracestate TEXT
        DEFAULT NULLIF(current_setting('outbox.tracestate', true), '');
"#;

/// Runs [`MIGRATION`] and [`TRACE_CONTEXT_MIGRATION`] on `executor` (a pool or a connection).
pub async fn migrate<'c, E>(executor: E) -> Result<()>
where
    E: Executor<'c, Database = Postgres>,
{
    executor
        .execute(sqlx::raw_sql(&format!(
            "{MIGRATION}{TRACE_CONTEXT_MIGRATION}"
        )))
        .await?;
    Ok(())
}
