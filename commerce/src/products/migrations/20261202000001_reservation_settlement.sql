-- Placement reserves before the order is recorded (README, "Placing an order"). A
-- reservation names its customer, so the orders service can record an order it never got
-- to write as given up, and `settled` marks a held reservation whose order the orders
-- service has since confirmed exists; the orders sweeper asks about the unsettled ones held
-- past the placement timeout.
ALTER TABLE reservations
    ADD COLUMN customer_id BIGINT CHECK (customer_id > 0),
    ADD COLUMN settled BOOLEAN NOT NULL DEFAULT false;

CREATE INDEX reservations_unsettled ON reservations (created_at)
    WHERE status = 'held' AND NOT settled;
