-- Delivery agents, as the users service announced them, and packages, one per shipped order.
-- One package per agent at a time is the database's rule, not the dispatcher's luck: an
-- OCCUPIED agent names its package (unique), a FREE one none, and at most one ASSIGNED
-- package names any agent.
CREATE TABLE agents (
    id         UUID PRIMARY KEY,
    status     TEXT NOT NULL DEFAULT 'FREE' CHECK (status IN ('FREE', 'OCCUPIED')),
    package_id UUID UNIQUE,
    -- A deleted agent gets no new package; one it carries it still delivers.
    is_active  BOOLEAN NOT NULL DEFAULT true,
    created_at TIMESTAMPTZ NOT NULL DEFAULT now(),
    updated_at TIMESTAMPTZ NOT NULL DEFAULT now(),
    CHECK ((status = 'OCCUPIED') = (package_id IS NOT NULL))
);

-- A package waits QUEUED until an agent is free, is ASSIGNED to one, then DELIVERED.
-- `order_update_owed`: delivered, but the orders service has not yet confirmed the order is
-- Delivered; the dispatcher retries until it has.
CREATE TABLE packages (
    id                UUID PRIMARY KEY,
    order_id          UUID NOT NULL UNIQUE,
    customer_id       BIGINT NOT NULL,
    status            TEXT NOT NULL CHECK (status IN ('QUEUED', 'ASSIGNED', 'DELIVERED')),
    agent_id          UUID REFERENCES agents (id),
    order_update_owed BOOLEAN NOT NULL DEFAULT false,
    created_at        TIMESTAMPTZ NOT NULL DEFAULT now(),
    assigned_at       TIMESTAMPTZ,
    delivered_at      TIMESTAMPTZ,
    CHECK ((status = 'QUEUED') = (agent_id IS NULL))
);

CREATE UNIQUE INDEX one_package_per_agent ON packages (agent_id) WHERE status = 'ASSIGNED';
CREATE INDEX packages_queue ON packages (created_at, id) WHERE status = 'QUEUED';
CREATE INDEX packages_owed ON packages (delivered_at) WHERE order_update_owed;

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
