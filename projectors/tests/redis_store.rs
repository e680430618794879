//! The Redis store against a real Redis: the store contract (`contract/mod.rs`).

mod contract;

use projectors::store::redis::RedisStore;

async fn store() -> RedisStore {
    let url = std::env::var("REDIS_URL").unwrap_or_else(|_| "redis://127.0.0.1:6379".to_owned());
    RedisStore::connect(&url, &contract::namespace())
        .await
        .unwrap()
}

contract::contract_tests!(store:
    a_batch_applies_with_its_offset_and_redelivery_changes_nothing,
    partitions_keep_their_own_offsets_and_deletes_apply,
    changes_to_one_key_within_a_batch_apply_in_order,
    a_batch_on_an_unexpected_offset_is_refused,
    re_sent_events_change_nothing,
    documents_load_with_their_sequences,
    a_cleared_namespace_starts_over,
);

#[tokio::test]
async fn generations_switch() {
    let store = store().await;
    let model = contract::generations_switch(&store).await;
    let url = std::env::var("REDIS_URL").unwrap_or_else(|_| "redis://127.0.0.1:6379".to_owned());
    let mut connection = redis::Client::open(url)
        .unwrap()
        .get_multiplexed_async_connection()
        .await
        .unwrap();
    let _: () = redis::AsyncCommands::del(&mut connection, format!("{model}:generation"))
        .await
        .unwrap();
}
