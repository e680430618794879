-- One row per idempotency key, ever: a retried charge finds its row and gets the same outcome
-- without charging again. `calls` counts how often the key was presented.
CREATE TABLE charges (
    idempotency_key TEXT PRIMARY KEY,
    order_id        UUID NOT NULL,
    amount_cents    BIGINT NOT NULL CHECK (amount_cents >= 0),
    outcome         TEXT NOT NULL CHECK (outcome IN ('approved', 'declined')),
    reason          TEXT,
    calls           INTEGER NOT NULL DEFAULT 1,
    created_at      TIMESTAMPTZ NOT NULL DEFAULT now()
);
