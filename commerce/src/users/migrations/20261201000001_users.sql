-- Users: customers, admins and delivery agents. A delete only deactivates (`is_active`):
-- the row stays, reads of it say so, the query API skips it. Only delivery agents have a
-- status, and they always have one.
CREATE TABLE users (
    id            UUID PRIMARY KEY,
    email         TEXT NOT NULL UNIQUE CHECK (email <> ''),
    username      TEXT NOT NULL UNIQUE CHECK (username <> ''),
    first_name    TEXT NOT NULL,
    last_name     TEXT NOT NULL,
    street        TEXT NOT NULL,
    city          TEXT NOT NULL,
    state         TEXT NOT NULL,
    zip_code      TEXT NOT NULL,
    country       TEXT NOT NULL,
    latitude      DOUBLE PRECISION NOT NULL CHECK (latitude BETWEEN -90 AND 90),
    longitude     DOUBLE PRECISION NOT NULL CHECK (longitude BETWEEN -180 AND 180),
    phone_number  TEXT NOT NULL,
    user_type     TEXT NOT NULL CHECK (user_type IN ('CUSTOMER', 'ADMIN', 'DELIVERY_AGENT')),
    agent_status  TEXT CHECK (agent_status IN ('FREE', 'OCCUPIED')),
    is_active     BOOLEAN NOT NULL DEFAULT true,
    created_at    TIMESTAMPTZ NOT NULL DEFAULT now(),
    updated_at    TIMESTAMPTZ NOT NULL DEFAULT now(),
    CHECK ((user_type = 'DELIVERY_AGENT') = (agent_status IS NOT NULL))
);

-- Delivery events already applied to an agent's status (the consumer may see one twice).
CREATE TABLE applied_delivery_events (
    event_id   UUID PRIMARY KEY,
    applied_at TIMESTAMPTZ NOT NULL DEFAULT now()
);

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
