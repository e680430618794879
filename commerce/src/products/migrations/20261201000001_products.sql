-- The catalogue. Stock can never go below zero: reservations take it with one conditional
-- UPDATE (... WHERE stock >= quantity), and this CHECK refuses anything that would slip past.
CREATE TABLE products (
    id          BIGSERIAL PRIMARY KEY,
    name        TEXT NOT NULL CHECK (name <> ''),
    description TEXT NOT NULL DEFAULT '',
    price       NUMERIC(12, 2) NOT NULL CHECK (price >= 0),
    stock       INTEGER NOT NULL CHECK (stock >= 0),
    created_at  TIMESTAMPTZ NOT NULL DEFAULT now(),
    updated_at  TIMESTAMPTZ NOT NULL DEFAULT now()
);

-- One row per order that ever reserved or released here, keyed by the order id: a retried
-- reservation finds its row and reserves nothing more. `released` rows stay forever, so a
-- reservation that arrives after its order was given up (a release with no reservation
-- leaves a row with quantity 0 and no product) is refused instead of taking stock.
CREATE TABLE reservations (
    order_id    UUID PRIMARY KEY,
    product_id  BIGINT REFERENCES products (id),
    quantity    INTEGER NOT NULL CHECK (quantity >= 0),
    status      TEXT NOT NULL CHECK (status IN ('held', 'released')),
    created_at  TIMESTAMPTZ NOT NULL DEFAULT now(),
    released_at TIMESTAMPTZ,
    CHECK (status = 'released' OR (product_id IS NOT NULL AND quantity > 0))
);

CREATE INDEX reservations_held_by_product ON reservations (product_id) WHERE status = 'held';

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

-- One row once the seed was loaded; its presence makes the seed a one-time import.
CREATE TABLE seed_runs (
    name      TEXT PRIMARY KEY,
    loaded_at TIMESTAMPTZ NOT NULL DEFAULT now()
);
