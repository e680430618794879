//! The Redis store against a real Redis: the store contract (`contract/mod.rs`).

mod contract;

use projectors::store::redis::RedisStore;
use projectors::Store;

async fn store() -> RedisStore {
    let url = std::env::var("REDIS_URL").unwrap_or_else(|_| "redis://127.0.0.1:6379".to_owned());
    RedisStore::connect(&url, &contract::namespace())
        .await
        .unwrap()
}

#[tokio::test]
async fn a_batch_applies_with_its_offset_and_redelivery_changes_nothing() {
    let store = store().await;
    contract::a_batch_applies_with_its_offset_and_redelivery_changes_nothing(&store).await;
    store.clear().await.unwrap();
}

#[tokio::test]
async fn partitions_keep_their_own_offsets_and_deletes_apply() {
    let store = store().await;
    contract::partitions_keep_their_own_offsets_and_deletes_apply(&store).await;
    store.clear().await.unwrap();
}

#[tokio::test]
async fn changes_to_one_key_within_a_batch_apply_in_order() {
    let store = store().await;
    contract::changes_to_one_key_within_a_batch_apply_in_order(&store).await;
    store.clear().await.unwrap();
}

#[tokio::test]
async fn a_batch_on_an_unexpected_offset_is_refused() {
    let store = store().await;
    contract::a_batch_on_an_unexpected_offset_is_refused(&store).await;
    store.clear().await.unwrap();
}

#[tokio::test]
async fn re_sent_events_change_nothing() {
    let store = store().await;
    contract::re_sent_events_change_nothing(&store).await;
    store.clear().await.unwrap();
}

#[tokio::test]
async fn documents_load_with_their_sequences() {
    let store = store().await;
    contract::documents_load_with_their_sequences(&store).await;
    store.clear().await.unwrap();
}

#[tokio::test]
async fn a_cleared_namespace_starts_over() {
    let store = store().await;
    contract::a_cleared_namespace_starts_over(&store).await;
    store.clear().await.unwrap();
}

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
