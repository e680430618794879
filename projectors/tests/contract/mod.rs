//! What every `Store` backend promises, written once and run against each backend's test
//! file: batches apply atomically with their offset, redelivery and late batches change
//! nothing, partitions keep their own offsets, and generations can be cleared and switched.

#![allow(dead_code)] // each backend's test file uses the helpers it needs

use projectors::store::{PartitionBatch, Store};
use projectors::Change;
use serde_json::json;

pub fn put(offset: i64, key: &str, value: i64) -> (i64, Change) {
    (
        offset,
        Change::Put {
            key: key.to_owned(),
            document: json!({ "value": value }),
        },
    )
}

pub fn delete(offset: i64, key: &str) -> (i64, Change) {
    (
        offset,
        Change::Delete {
            key: key.to_owned(),
        },
    )
}

pub fn batch(partition: i32, last_offset: i64, changes: Vec<(i64, Change)>) -> PartitionBatch {
    PartitionBatch {
        topic: "t".to_owned(),
        partition,
        last_offset,
        changes,
    }
}

/// A namespace no other test or run uses.
pub fn namespace() -> String {
    format!("test:{}", uuid::Uuid::new_v4())
}

pub async fn a_batch_applies_with_its_offset_and_redelivery_changes_nothing(store: &impl Store) {
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

pub async fn partitions_keep_their_own_offsets_and_deletes_apply(store: &impl Store) {
    store
        .write(&batch(0, 10, vec![put(10, "x", 1)]))
        .await
        .unwrap();
    store
        .write(&batch(1, 0, vec![put(0, "y", 1)]))
        .await
        .unwrap();
    assert_eq!(store.applied_offset("t", 1).await.unwrap(), Some(0));

    store
        .write(&batch(1, 1, vec![delete(1, "y")]))
        .await
        .unwrap();
    assert_eq!(store.get("y").await.unwrap(), None);
    assert_eq!(store.get("x").await.unwrap(), Some(json!({ "value": 1 })));
}

pub async fn changes_to_one_key_within_a_batch_apply_in_order(store: &impl Store) {
    let changes = vec![
        put(1, "a", 1),
        delete(2, "a"),
        delete(3, "b"),
        put(4, "b", 2),
        put(5, "c", 1),
        put(6, "c", 2),
    ];
    store.write(&batch(0, 6, changes)).await.unwrap();
    assert_eq!(store.get("a").await.unwrap(), None);
    assert_eq!(store.get("b").await.unwrap(), Some(json!({ "value": 2 })));
    assert_eq!(store.get("c").await.unwrap(), Some(json!({ "value": 2 })));
}

/// Clearing drops documents and offsets, and a replay into the cleared namespace starts over.
pub async fn a_cleared_namespace_starts_over(store: &impl Store) {
    store
        .write(&batch(0, 3, vec![put(3, "a", 1)]))
        .await
        .unwrap();
    store.clear().await.unwrap();
    assert_eq!(store.get("a").await.unwrap(), None);
    assert_eq!(store.applied_offset("t", 0).await.unwrap(), None);

    assert_eq!(
        store
            .write(&batch(0, 1, vec![put(1, "a", 2)]))
            .await
            .unwrap(),
        1
    );
    assert_eq!(store.get("a").await.unwrap(), Some(json!({ "value": 2 })));
}

/// Switches the current generation of a fresh model; returns the model for cleanup.
pub async fn generations_switch(store: &impl Store) -> String {
    let model = format!("test:model:{}", uuid::Uuid::new_v4());
    assert_eq!(store.current_generation(&model).await.unwrap(), None);
    store.set_current_generation(&model, 2).await.unwrap();
    assert_eq!(store.current_generation(&model).await.unwrap(), Some(2));
    store.set_current_generation(&model, 3).await.unwrap();
    assert_eq!(store.current_generation(&model).await.unwrap(), Some(3));
    model
}
