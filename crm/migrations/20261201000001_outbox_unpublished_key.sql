-- The relay holds back a key whose record Kafka refused and retries that key's rows alone
-- (`WHERE published_at IS NULL AND key = ANY(...) ORDER BY id`): this index finds them
-- without scanning the whole unpublished tail. The `outbox` crate's schema::MIGRATION has
-- the same table and indexes for services that do not ship migrations of their own.
CREATE INDEX IF NOT EXISTS outbox_unpublished_key ON outbox (key, id) WHERE published_at IS NULL;
