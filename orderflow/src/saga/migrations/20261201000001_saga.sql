-- One row per placed order: where its checkout stands. A worker takes a due row with
-- FOR UPDATE SKIP LOCKED, performs the step's effect and advances `step` in one transaction
-- (with the step's local effect, if it has one); a crash before the commit leaves the row at
-- the same step, and the next worker repeats it. External effects (the charge, the email)
-- are keyed by the order id, so a repetition changes nothing.
CREATE TABLE sagas (
    order_id     UUID PRIMARY KEY,
    customer_id  BIGINT NOT NULL,
    product_id   BIGINT NOT NULL,
    quantity     INTEGER NOT NULL CHECK (quantity > 0),
    status       TEXT NOT NULL CHECK (status IN ('running', 'compensating', 'completed', 'compensated', 'skipped', 'failed')),
    step         TEXT NOT NULL,
    profile      JSONB,
    amount_cents BIGINT,
    failure      TEXT,
    attempts     INTEGER NOT NULL DEFAULT 0,
    last_error   TEXT,
    due_at       TIMESTAMPTZ NOT NULL DEFAULT now(),
    created_at   TIMESTAMPTZ NOT NULL DEFAULT now(),
    updated_at   TIMESTAMPTZ NOT NULL DEFAULT now()
);
CREATE INDEX sagas_due ON sagas (due_at) WHERE status IN ('running', 'compensating');

-- Each completed step of each saga, once (the primary key is the step's idempotency key).
CREATE TABLE saga_steps (
    order_id     UUID NOT NULL,
    step         TEXT NOT NULL,
    completed_at TIMESTAMPTZ NOT NULL DEFAULT now(),
    PRIMARY KEY (order_id, step)
);

-- The local effects, each written in its step's transaction.
CREATE TABLE shipments (
    order_id    UUID PRIMARY KEY,
    customer_id BIGINT NOT NULL,
    recipient   TEXT NOT NULL,
    status      TEXT NOT NULL CHECK (status IN ('prepared', 'cancelled')),
    created_at  TIMESTAMPTZ NOT NULL DEFAULT now()
);

CREATE TABLE purchase_history (
    order_id     UUID PRIMARY KEY,
    customer_id  BIGINT NOT NULL,
    product_id   BIGINT NOT NULL,
    quantity     INTEGER NOT NULL,
    amount_cents BIGINT NOT NULL,
    purchased_at TIMESTAMPTZ NOT NULL DEFAULT now()
);
CREATE INDEX purchase_history_by_customer ON purchase_history (customer_id);

CREATE TABLE sales (
    order_id   UUID PRIMARY KEY,
    product_id BIGINT NOT NULL,
    quantity   INTEGER NOT NULL,
    sold_at    TIMESTAMPTZ NOT NULL DEFAULT now()
);

-- The restock timer of a product, armed (or pushed back) in the transaction of a sale that
-- left it at stock 0; fired by the restock poller with FOR UPDATE SKIP LOCKED.
CREATE TABLE restock_timers (
    product_id    BIGINT PRIMARY KEY,
    due_at        TIMESTAMPTZ NOT NULL,
    last_order_id UUID NOT NULL,
    armed_at      TIMESTAMPTZ NOT NULL DEFAULT now()
);

-- A fired timer becomes a restock, written in the transaction that deletes the timer; the
-- restock worker adds its quantity at the products service (keyed by restock_id) and marks
-- it done.
CREATE TABLE restocks (
    restock_id UUID PRIMARY KEY,
    product_id BIGINT NOT NULL,
    quantity   INTEGER NOT NULL CHECK (quantity > 0),
    fired_at   TIMESTAMPTZ NOT NULL DEFAULT now(),
    done_at    TIMESTAMPTZ,
    attempts   INTEGER NOT NULL DEFAULT 0,
    last_error TEXT
);
CREATE INDEX restocks_pending ON restocks (fired_at) WHERE done_at IS NULL;
