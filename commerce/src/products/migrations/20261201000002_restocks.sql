-- Restocks from outside (the order flow's restock timer), once per restock id: a retried
-- restock finds its row and adds nothing more.
CREATE TABLE restocks (
    restock_id UUID PRIMARY KEY,
    product_id BIGINT NOT NULL REFERENCES products (id),
    quantity   INTEGER NOT NULL CHECK (quantity > 0),
    created_at TIMESTAMPTZ NOT NULL DEFAULT now()
);
