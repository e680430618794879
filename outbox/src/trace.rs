//! A request's trace context, from the writer's span to the outbox row to the Kafka record.
//!
//! Writing: [`remember`] sets the transaction's `outbox.traceparent` / `outbox.tracestate`,
//! which the columns of the same names take as their default (see
//! [`crate::schema::TRACE_CONTEXT_MIGRATION`]); with tracing off it does nothing at all.
//! Relaying: [`publishing`] starts the row's producer span and says which context goes into
//! the record's headers.

use sqlx::{Postgres, Transaction};
use telemetry::TraceContext;

use crate::error::Result;
use crate::relay::Row;

/// Makes the rows `tx` writes from now on carry the current span's trace context.
pub(crate) async fn remember(tx: &mut Transaction<'_, Postgres>) -> Result<()> {
    let Some(trace) = TraceContext::current() else {
        return Ok(());
    };
    sqlx::query(
        "SELECT set_config('outbox.traceparent', $1, true), \
                set_config('outbox.tracestate', $2, true)",
    )
    .bind(&trace.traceparent)
    .bind(trace.tracestate.unwrap_or_default())
    .execute(&mut **tx)
    .await?;
    Ok(())
}

/// The trace context for `row`'s record headers: its producer span's, which is pushed onto
/// `spans` to last until the transaction commits, or the stored one as it is when this
/// process exports no spans. `None` for a row written untraced.
pub(crate) fn publishing(row: &Row, spans: &mut Vec<tracing::Span>) -> Option<TraceContext> {
    // The build without tracing (measurement only, see `telemetry::enabled`) sends no headers.
    if cfg!(telemetry_compiled_out) {
        return None;
    }
    let stored = TraceContext::from_parts(row.traceparent.clone(), row.tracestate.clone())?;
    let Some(span) = telemetry::messaging::publish_span(&row.topic, &row.key, Some(&stored)) else {
        return Some(stored);
    };
    span.record(
        "messaging.message.id",
        tracing::field::display(row.event_id),
    );
    let trace = TraceContext::of_span(&span);
    spans.push(span);
    trace.or(Some(stored))
}
