-- Placement now reserves first and inserts the order as Processing (README, "Placing an
-- order"); nothing is Pending any more. An order left Pending by the earlier design is given
-- up here, with its release owed, so the sweeper releases whatever it may hold.
UPDATE orders
SET status = 'Failed', failure_reason = 'not confirmed in time', release_pending = true,
    updated_at = now()
WHERE status = 'Pending';

DROP INDEX IF EXISTS orders_pending;
