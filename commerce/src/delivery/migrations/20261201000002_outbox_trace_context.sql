-- The W3C trace context of the request that wrote a row (outbox::schema::TRACE_CONTEXT_MIGRATION):
-- defaults to the transaction's outbox.traceparent / outbox.tracestate, set by Outbox::enqueue and Outbox::statement
-- only when tracing is on.
ALTER TABLE outbox
    ADD COLUMN IF NOT EXISTS traceparent TEXT
        DEFAULT NULLIF(current_setting('outbox.traceparent', true), ''),
    ADD COLUMN IF NOT EXISTS tracestate TEXT
        DEFAULT NULLIF(current_setting('outbox.tracestate', true), '');
