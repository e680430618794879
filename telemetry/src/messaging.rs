//! Kafka producer and consumer spans after the OpenTelemetry messaging conventions.
//!
//! Both helpers return `None`, at the cost of one atomic load, when tracing is off
//! ([`crate::enabled`]) or the record carries no trace context: records of untraced requests
//! never start traces of their own, and a projector with tracing off pays nothing per record.

use rdkafka::message::{Headers, Message};
use tracing::Span;
use tracing_opentelemetry::OpenTelemetrySpanExt;

use crate::TraceContext;

/// A `send <topic>` producer span, child of the context stored with the event (`parent`).
/// Keep it alive until the record is acknowledged, and put [`TraceContext::of_span`] of it
/// into the record's headers, so the consumer continues from the publish.
#[cfg_attr(telemetry_compiled_out, inline(always))]
pub fn publish_span(topic: &str, key: &str, parent: Option<&TraceContext>) -> Option<Span> {
    if !crate::enabled() {
        return None;
    }
    let parent = parent?;
    let span = tracing::info_span!(
        parent: None,
        "kafka send",
        otel.name = %format_args!("send {topic}"),
        otel.kind = "producer",
        messaging.system = "kafka",
        messaging.operation.type = "send",
        messaging.destination.name = %topic,
        messaging.kafka.message.key = %key,
        messaging.message.id = tracing::field::Empty,
    );
    let _ = span.set_parent(parent.to_context());
    Some(span)
}

/// A `process <topic>` consumer span for one consumed record, child of the context in its
/// headers, with topic, partition, offset and consumer group. `what` says what processing
/// means here (e.g. `mandates write`); keep the span alive for as long as it lasts.
pub fn process_span<M: Message>(message: &M, group: &str, what: &str) -> Option<Span> {
    if !crate::enabled() {
        return None;
    }
    let parent = TraceContext::from_headers(message.headers()?)?;
    let topic = message.topic();
    let span = tracing::info_span!(
        parent: None,
        "kafka process",
        otel.name = %format_args!("process {topic}"),
        otel.kind = "consumer",
        messaging.system = "kafka",
        messaging.operation.type = "process",
        messaging.operation.name = %what,
        messaging.destination.name = %topic,
        messaging.destination.partition.id = %message.partition(),
        messaging.kafka.partition = message.partition(),
        messaging.kafka.offset = message.offset(),
        messaging.consumer.group.name = %group,
    );
    let _ = span.set_parent(parent.to_context());
    Some(span)
}

/// [`process_span`] for every record of a batch that carries a trace context (none at all
/// when tracing is off). Dropping the returned spans ends them.
pub fn process_spans<'m, M: Message + 'm>(
    messages: impl IntoIterator<Item = &'m M>,
    group: &str,
    what: &str,
) -> Vec<Span> {
    if !crate::enabled() {
        return Vec::new();
    }
    messages
        .into_iter()
        .filter_map(|m| process_span(m, group, what))
        .collect()
}

/// Whether `headers` carry a `traceparent` (cheap; no parsing).
pub fn has_trace<H: Headers>(headers: &H) -> bool {
    headers.iter().any(|h| h.key == crate::context::TRACEPARENT)
}
