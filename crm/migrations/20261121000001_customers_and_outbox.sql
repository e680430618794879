-- Customers as the CRM owns them. Ids come from the sequence for API-created customers and
-- from the seed file for imported ones (the seed advances the sequence past them).
CREATE TABLE customers (
    id                 BIGSERIAL PRIMARY KEY,
    first_name         TEXT NOT NULL,
    last_name          TEXT NOT NULL,
    city               TEXT NOT NULL,
    connection_id      TEXT NOT NULL CHECK (connection_id <> ''),
    connection_mandate SMALLINT NOT NULL CHECK (connection_mandate BETWEEN 0 AND 2),
    created_at         TIMESTAMPTZ NOT NULL DEFAULT now(),
    updated_at         TIMESTAMPTZ NOT NULL DEFAULT now()
);

CREATE INDEX customers_connection_id ON customers (connection_id);

-- Transactional outbox: events are written in the same transaction as the change they
-- describe and relayed to Kafka afterwards, so a request never needs Kafka to succeed.
-- `id` is the relay order; the payload is the event as JSON, encoded to Avro only by the relay.
CREATE TABLE outbox (
    id           BIGSERIAL PRIMARY KEY,
    topic        TEXT NOT NULL,
    key          TEXT NOT NULL,
    event_id     UUID NOT NULL UNIQUE,
    payload      JSONB NOT NULL,
    created_at   TIMESTAMPTZ NOT NULL DEFAULT now(),
    published_at TIMESTAMPTZ
);

-- The relay only ever reads the unpublished tail, which this keeps small to scan.
CREATE INDEX outbox_unpublished ON outbox (id) WHERE published_at IS NULL;

-- One row per seed import; its presence is what makes the seed a one-time import.
CREATE TABLE seed_imports (
    id            BIGSERIAL PRIMARY KEY,
    file_name     TEXT NOT NULL,
    rows_imported INTEGER NOT NULL,
    rows_skipped  INTEGER NOT NULL,
    imported_at   TIMESTAMPTZ NOT NULL DEFAULT now()
);
