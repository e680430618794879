-- Orders. An order is `Pending` from its insert until the products service confirmed its
-- reservation (then `Processing`) or refused it (then `Failed`). The sweeper fails orders
-- pending too long. `release_pending` marks a Cancelled or Failed order whose stock may still
-- be held at the products service: it is cleared once the products service confirmed the
-- release, and the sweeper retries until then.
CREATE TABLE orders (
    id              UUID PRIMARY KEY,
    idempotency_key TEXT UNIQUE,
    customer_id     BIGINT NOT NULL CHECK (customer_id > 0),
    product_id      BIGINT NOT NULL CHECK (product_id > 0),
    quantity        INTEGER NOT NULL CHECK (quantity > 0),
    status          TEXT NOT NULL CHECK (status IN ('Pending', 'Processing', 'Shipped', 'Delivered', 'Cancelled', 'Failed')),
    failure_reason  TEXT,
    release_pending BOOLEAN NOT NULL DEFAULT false,
    created_at      TIMESTAMPTZ NOT NULL DEFAULT now(),
    updated_at      TIMESTAMPTZ NOT NULL DEFAULT now()
);

CREATE INDEX orders_pending ON orders (created_at) WHERE status = 'Pending';
CREATE INDEX orders_release_pending ON orders (updated_at) WHERE release_pending;
CREATE INDEX orders_by_customer ON orders (customer_id);

-- The transactional outbox, the `outbox` crate's schema (outbox::schema::MIGRATION).
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

CREATE TABLE seed_runs (
    name      TEXT PRIMARY KEY,
    loaded_at TIMESTAMPTZ NOT NULL DEFAULT now()
);
