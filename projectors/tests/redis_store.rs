//! The Redis store against a real Redis: batches apply atomically with their offset, and a
//! redelivered batch changes nothing.

use projectors::store::redis::RedisStore;
use projectors::store::{PartitionBatch, Store};
use projectors::Change;
use serde_json::json;

async fn store() -> RedisStore {
    let url = std::env::var("REDIS_URL").unwrap_or_else(|_| "redis://127.0.0.1:6379".to_owned());
    RedisStore::connect(&url, &format!("test:{}", uuid::Uuid::new_v4()))
        .await
        .unwrap()
}

fn put(offset: i64, key: &str, value: i64) -> (i64, Change) {
    (
        offset,
        Change::Put {
            key: key.to_owned(),
            document: json!({ "value": value }),
        },
    )
}

fn batch(partition: i32, last_offset: i64, changes: Vec<(i64, Change)>) -> PartitionBatch {
    PartitionBatch {
        topic: "t".to_owned(),
        partition,
        last_offset,
        changes,
    }
}

#[tokio::test]
async fn a_batch_applies_with_its_offset_and_redelivery_changes_nothing() {
    let store = store().await;
    assert_eq!(store.applied_offset("t", 0).await.unwrap(), None);

    let first = batch(0, 5, vec![put(3, "a", 1), put(5, "b", 1)]);
    assert_eq!(store.write(&first).await.unwrap(), 5);
    assert_eq!(store.applied_offset("t", 0).await.unwrap(), Some(5));
    assert_eq!(store.get("a").await.unwrap(), Some(json!({ "value": 1 })));

    // Redelivered from offset 4 with a newer record: only offset 6 is new.
    let redelivered = batch(0, 6, vec![put(4, "a", 99), put(5, "b", 99), put(6, "c", 1)]);
    assert_eq!(store.write(&redelivered).await.unwrap(), 6);
    assert_eq!(store.get("a").await.unwrap(), Some(json!({ "value": 1 })));
    assert_eq!(store.get("b").await.unwrap(), Some(json!({ "value": 1 })));
    assert_eq!(store.get("c").await.unwrap(), Some(json!({ "value": 1 })));

    // An old batch arriving late (a revoked owner finishing) is ignored entirely.
    assert_eq!(
        store
            .write(&batch(0, 2, vec![put(2, "c", 7)]))
            .await
            .unwrap(),
        6
    );
    assert_eq!(store.get("c").await.unwrap(), Some(json!({ "value": 1 })));
}

#[tokio::test]
async fn partitions_keep_their_own_offsets_and_deletes_apply() {
    let store = store().await;
    store
        .write(&batch(0, 10, vec![put(10, "x", 1)]))
        .await
        .unwrap();
    store
        .write(&batch(1, 0, vec![put(0, "y", 1)]))
        .await
        .unwrap();
    assert_eq!(store.applied_offset("t", 1).await.unwrap(), Some(0));

    let delete = (
        1,
        Change::Delete {
            key: "y".to_owned(),
        },
    );
    store.write(&batch(1, 1, vec![delete])).await.unwrap();
    assert_eq!(store.get("y").await.unwrap(), None);
    assert_eq!(store.get("x").await.unwrap(), Some(json!({ "value": 1 })));
}

#[tokio::test]
async fn clearing_drops_documents_and_offsets_and_generations_switch() {
    let store = store().await;
    store
        .write(&batch(0, 3, vec![put(3, "a", 1)]))
        .await
        .unwrap();
    store.clear().await.unwrap();
    assert_eq!(store.get("a").await.unwrap(), None);
    assert_eq!(store.applied_offset("t", 0).await.unwrap(), None);

    let model = format!("test:model:{}", uuid::Uuid::new_v4());
    assert_eq!(store.current_generation(&model).await.unwrap(), None);
    store.set_current_generation(&model, 2).await.unwrap();
    assert_eq!(store.current_generation(&model).await.unwrap(), Some(2));
}
