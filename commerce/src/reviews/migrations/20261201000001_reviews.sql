-- Product and customer ids belong to the products and customers services; this database
-- cannot check them, and does not call those services to.
CREATE TABLE reviews (
    id          BIGSERIAL PRIMARY KEY,
    product_id  BIGINT NOT NULL CHECK (product_id > 0),
    customer_id BIGINT NOT NULL CHECK (customer_id > 0),
    rating      SMALLINT NOT NULL CHECK (rating BETWEEN 1 AND 5),
    text        TEXT NOT NULL,
    created_at  TIMESTAMPTZ NOT NULL DEFAULT now()
);

CREATE INDEX reviews_by_product ON reviews (product_id);

CREATE TABLE seed_runs (
    name      TEXT PRIMARY KEY,
    loaded_at TIMESTAMPTZ NOT NULL DEFAULT now()
);
