-- Points per customer, and the ledger: one row per order ever awarded (the primary key makes a
-- redelivered or concurrently processed order award nothing more). Both change in one
-- transaction.
CREATE TABLE loyalty_accounts (
    customer_id BIGINT PRIMARY KEY,
    points      BIGINT NOT NULL DEFAULT 0,
    orders      BIGINT NOT NULL DEFAULT 0,
    updated_at  TIMESTAMPTZ NOT NULL DEFAULT now()
);

CREATE TABLE loyalty_ledger (
    order_id    UUID PRIMARY KEY,
    customer_id BIGINT NOT NULL,
    points      BIGINT NOT NULL,
    event_id    UUID NOT NULL,
    awarded_at  TIMESTAMPTZ NOT NULL DEFAULT now()
);

-- The naive mode's tables (demo and benchmark only): no key on the order, read-modify-write
-- of the points without a lock, so redelivery and concurrency over-count.
CREATE TABLE loyalty_naive_accounts (
    customer_id BIGINT PRIMARY KEY,
    points      BIGINT NOT NULL DEFAULT 0
);

CREATE TABLE loyalty_naive_ledger (
    id          BIGSERIAL PRIMARY KEY,
    order_id    UUID NOT NULL,
    customer_id BIGINT NOT NULL,
    points      BIGINT NOT NULL,
    awarded_at  TIMESTAMPTZ NOT NULL DEFAULT now()
);
