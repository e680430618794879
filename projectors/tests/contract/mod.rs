//! What every `Store` backend promises, written once and run against each backend's test
//! file: batches apply atomically with their offset and only on the offset the writer
//! expects, redelivery and re-sent events change nothing, partitions keep their own offsets,
//! documents load with their sequences, and generations can be cleared and switched.

#![allow(dead_code)] // each backend's test file uses the helpers it needs

use projectors::store::{PartitionBatch, Store, Stored, Write};

/// One `#[tokio::test]` per contract case, each on a fresh store from `$store` (an async fn
/// in the calling test file), cleared afterwards.
macro_rules! contract_tests {
    ($store:ident: $($case:ident),+ $(,)?) => {
        $(
            #[tokio::test]
            async fn $case() {
                let store = $store().await;
                contract::$case(&store).await;
                projectors::Store::clear(&store).await.unwrap();
            }
        )+
    };
}
pub(crate) use contract_tests;
use projectors::{Change, Error};
use serde_json::json;

pub fn put(offset: i64, key: &str, value: i64) -> Write {
    Write {
        offset,
        sequence: None,
        change: Change::Put {
            key: key.to_owned(),
            document: json!({ "value": value }),
        },
    }
}

pub fn delete(offset: i64, key: &str) -> Write {
    Write {
        offset,
        sequence: None,
        change: Change::Delete {
            key: key.to_owned(),
        },
    }
}

/// `write` carrying per-key sequence `sequence`.
pub fn sequenced(write: Write, sequence: i64) -> Write {
    Write {
        sequence: Some(sequence),
        ..write
    }
}

pub fn batch(
    partition: i32,
    expected_offset: Option<i64>,
    last_offset: i64,
    changes: Vec<Write>,
) -> PartitionBatch {
    PartitionBatch {
        topic: "t".to_owned(),
        partition,
        expected_offset,
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

    let first = batch(0, None, 5, vec![put(3, "a", 1), put(5, "b", 1)]);
    assert_eq!(store.write(&first).await.unwrap(), 5);
    assert_eq!(store.applied_offset("t", 0).await.unwrap(), Some(5));
    assert_eq!(store.get("a").await.unwrap(), Some(json!({ "value": 1 })));

    // Redelivered from offset 4 with a newer record: only offset 6 is new.
    let redelivered = batch(
        0,
        Some(5),
        6,
        vec![put(4, "a", 99), put(5, "b", 99), put(6, "c", 1)],
    );
    assert_eq!(store.write(&redelivered).await.unwrap(), 6);
    assert_eq!(store.get("a").await.unwrap(), Some(json!({ "value": 1 })));
    assert_eq!(store.get("b").await.unwrap(), Some(json!({ "value": 1 })));
    assert_eq!(store.get("c").await.unwrap(), Some(json!({ "value": 1 })));
}

/// A writer whose idea of the recorded offset is wrong (the store lost data, or another
/// writer moved on) is refused with what the store has, and nothing of its batch applies.
pub async fn a_batch_on_an_unexpected_offset_is_refused(store: &impl Store) {
    store
        .write(&batch(0, None, 6, vec![put(6, "c", 1)]))
        .await
        .unwrap();
    // A revoked owner finishing late, believing the store still had nothing.
    let late = store
        .write(&batch(0, None, 2, vec![put(2, "c", 7)]))
        .await
        .unwrap_err();
    assert!(
        matches!(
            late,
            Error::OffsetMoved {
                expected: None,
                found: Some(6),
                ..
            }
        ),
        "{late}"
    );
    assert!(!late.is_retryable());
    // A writer that believes the store is further than it is (it lost writes): nothing of
    // its batch applies, not even a sequence.
    let ahead = store
        .write(&batch(0, Some(9), 12, vec![sequenced(put(12, "c", 8), 3)]))
        .await
        .unwrap_err();
    assert!(
        matches!(ahead, Error::OffsetMoved { found: Some(6), .. }),
        "{ahead}"
    );
    assert_eq!(store.get("c").await.unwrap(), Some(json!({ "value": 1 })));
    assert_eq!(store.applied_offset("t", 0).await.unwrap(), Some(6));
    assert_eq!(store.load(&["c"]).await.unwrap()[0].sequence, None);
}

pub async fn partitions_keep_their_own_offsets_and_deletes_apply(store: &impl Store) {
    store
        .write(&batch(0, None, 10, vec![put(10, "x", 1)]))
        .await
        .unwrap();
    store
        .write(&batch(1, None, 0, vec![put(0, "y", 1)]))
        .await
        .unwrap();
    assert_eq!(store.applied_offset("t", 1).await.unwrap(), Some(0));

    store
        .write(&batch(1, Some(0), 1, vec![delete(1, "y")]))
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
    store.write(&batch(0, None, 6, changes)).await.unwrap();
    assert_eq!(store.get("a").await.unwrap(), None);
    assert_eq!(store.get("b").await.unwrap(), Some(json!({ "value": 2 })));
    assert_eq!(store.get("c").await.unwrap(), Some(json!({ "value": 2 })));
}

/// An event re-sent by a relay arrives at a new offset but with its old per-key sequence:
/// the store ignores it, also after the document was deleted.
pub async fn re_sent_events_change_nothing(store: &impl Store) {
    store
        .write(&batch(0, None, 1, vec![sequenced(put(1, "a", 1), 10)]))
        .await
        .unwrap();
    store
        .write(&batch(0, Some(1), 3, vec![sequenced(put(3, "a", 2), 9)]))
        .await
        .unwrap();
    assert_eq!(store.get("a").await.unwrap(), Some(json!({ "value": 1 })));
    store
        .write(&batch(0, Some(3), 4, vec![sequenced(delete(4, "a"), 11)]))
        .await
        .unwrap();
    store
        .write(&batch(0, Some(4), 5, vec![sequenced(put(5, "a", 3), 11)]))
        .await
        .unwrap();
    assert_eq!(store.get("a").await.unwrap(), None);
    store
        .write(&batch(0, Some(5), 6, vec![sequenced(put(6, "a", 4), 12)]))
        .await
        .unwrap();
    assert_eq!(store.get("a").await.unwrap(), Some(json!({ "value": 4 })));
    assert_eq!(store.applied_offset("t", 0).await.unwrap(), Some(6));
}

/// Folds that read state load documents with their sequences, in the order asked.
pub async fn documents_load_with_their_sequences(store: &impl Store) {
    store
        .write(&batch(
            0,
            None,
            2,
            vec![sequenced(put(1, "a", 1), 7), put(2, "b", 2)],
        ))
        .await
        .unwrap();
    let loaded = store.load(&["b", "missing", "a"]).await.unwrap();
    assert_eq!(
        loaded,
        vec![
            Stored {
                document: Some(json!({ "value": 2 })),
                sequence: None
            },
            Stored::default(),
            Stored {
                document: Some(json!({ "value": 1 })),
                sequence: Some(7)
            },
        ]
    );
    assert!(store.load(&[]).await.unwrap().is_empty());
}

/// Clearing drops documents, sequences and offsets; a replay into the cleared namespace
/// starts over.
pub async fn a_cleared_namespace_starts_over(store: &impl Store) {
    store
        .write(&batch(0, None, 3, vec![sequenced(put(3, "a", 1), 5)]))
        .await
        .unwrap();
    store.clear().await.unwrap();
    assert_eq!(store.get("a").await.unwrap(), None);
    assert_eq!(store.applied_offset("t", 0).await.unwrap(), None);

    assert_eq!(
        store
            .write(&batch(0, None, 1, vec![sequenced(put(1, "a", 2), 5)]))
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
