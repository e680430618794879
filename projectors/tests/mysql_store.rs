//! The MySQL store against a real MariaDB: the store contract (`contract/mod.rs`), plus what
//! is MySQL's own:
//! large batches, a batch that fails half-way leaving nothing, concurrent writers of one
//! partition, and a server that stops and comes back.

mod contract;

use std::time::{Duration, Instant};

use contract::{batch, namespace, put};
use projectors::store::any::{AnyStore, StoreKind};
use projectors::store::mysql::{table_prefix, MysqlStore};
use projectors::store::{PartitionBatch, Store, Write};
use projectors::{Change, Error};
use serde_json::json;

fn mysql_url() -> String {
    std::env::var("MYSQL_URL")
        .unwrap_or_else(|_| "mysql://platform:platform@127.0.0.1:3306/platform".to_owned())
}

async fn store() -> MysqlStore {
    MysqlStore::connect(&mysql_url(), &namespace())
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
    sqlx::query("DELETE FROM projector_generations WHERE model = ?")
        .bind(&model)
        .execute(store.pool())
        .await
        .unwrap();
}

#[tokio::test]
async fn keys_are_exact_and_namespaces_map_to_tables() {
    let namespace = format!("test:Ns-{}", uuid::Uuid::new_v4());
    let store = MysqlStore::connect(&mysql_url(), &namespace).await.unwrap();
    store
        .write(&batch(0, None, 1, vec![put(0, "Key", 1), put(1, "key", 2)]))
        .await
        .unwrap();
    // MySQL's default collations would fold these into one document.
    assert_eq!(store.get("Key").await.unwrap(), Some(json!({ "value": 1 })));
    assert_eq!(store.get("key").await.unwrap(), Some(json!({ "value": 2 })));

    let tables: Vec<String> = sqlx::query_scalar(
        "SELECT CAST(table_name AS CHAR) FROM information_schema.tables
         WHERE table_schema = DATABASE() AND table_name LIKE CONCAT(?, '\\_%')
         ORDER BY table_name",
    )
    .bind(table_prefix(&namespace))
    .fetch_all(store.pool())
    .await
    .unwrap();
    let prefix = table_prefix(&namespace);
    assert!(prefix.starts_with("test_ns_"), "{prefix}");
    assert_eq!(
        tables,
        [
            format!("{prefix}_documents"),
            format!("{prefix}_offsets"),
            format!("{prefix}_sequences")
        ]
    );
    store.clear().await.unwrap();
}

/// Thousands of changes in one batch (several statements each), and the write rate they reach.
#[tokio::test]
async fn large_batches_apply_whole() {
    let namespace = namespace();
    let store = MysqlStore::connect(&mysql_url(), &namespace).await.unwrap();
    let document = |o: i64| json!({ "connectionId": format!("8716859{o:011}"), "mandate": o % 3, "customerId": o });
    let key = |o: i64| format!("{o:018}");
    let (batches, per_batch) = (10, 2_000);
    let started = Instant::now();
    for b in 0..batches {
        let first = b * per_batch;
        let last = first + per_batch - 1;
        let mut changes: Vec<_> = (first..=last)
            .map(|o| {
                let put = Change::Put {
                    key: key(o),
                    document: document(o),
                };
                Write {
                    offset: o,
                    sequence: None,
                    change: put,
                }
            })
            .collect();
        // Each batch also deletes a tenth of what the previous one wrote.
        if b > 0 {
            let previous = first - per_batch;
            changes.extend((previous..previous + per_batch / 10).map(|o| Write {
                offset: last,
                sequence: None,
                change: Change::Delete { key: key(o) },
            }));
        }
        let expected = (b > 0).then(|| first - 1);
        assert_eq!(
            store
                .write(&batch(0, expected, last, changes))
                .await
                .unwrap(),
            last
        );
    }
    let elapsed = started.elapsed();
    let changes = batches * per_batch + (batches - 1) * per_batch / 10;
    println!(
        "mysql store: {changes} changes in {batches} batches in {elapsed:.2?}: {:.0} changes/s",
        changes as f64 / elapsed.as_secs_f64()
    );

    let documents: i64 = sqlx::query_scalar(&format!(
        "SELECT COUNT(*) FROM `{}_documents`",
        table_prefix(&namespace)
    ))
    .fetch_one(store.pool())
    .await
    .unwrap();
    assert_eq!(documents, changes - 2 * (batches - 1) * per_batch / 10);
    assert_eq!(store.get(&key(0)).await.unwrap(), None);
    let kept = per_batch / 10;
    assert_eq!(store.get(&key(kept)).await.unwrap(), Some(document(kept)));
    let last = batches * per_batch - 1;
    assert_eq!(store.applied_offset("t", 0).await.unwrap(), Some(last));
    assert_eq!(store.get(&key(last)).await.unwrap(), Some(document(last)));
    store.clear().await.unwrap();
}

/// A batch that fails in its second statement leaves neither its first statement's
/// documents nor its offset behind, and a key too long for the table is a permanent refusal
/// (SQLSTATE 22001), not a retry.
#[tokio::test]
async fn a_failing_batch_leaves_nothing() {
    let store = store().await;
    let mut changes: Vec<_> = (0..600).map(|o| put(o, &format!("k{o:03}"), o)).collect();
    // Longer than doc_key's 255 characters, and sorted after every other key.
    changes.push(put(600, &"z".repeat(300), 1));
    let error = store
        .write(&batch(0, None, 600, changes))
        .await
        .unwrap_err();
    assert!(matches!(error, Error::Rejected { .. }), "{error}");
    assert!(!error.is_retryable(), "{error}");
    assert!(store
        .refuses(&Change::Delete {
            key: "z".repeat(300)
        })
        .is_some_and(|reason| reason.contains("300 characters")),);
    assert_eq!(store.get("k000").await.unwrap(), None);
    assert_eq!(store.applied_offset("t", 0).await.unwrap(), None);
    store.clear().await.unwrap();
}

/// Two owners of one partition at once (a revoked one finishing its batch and the new one
/// replaying it): the offset row lock serialises them, the loser of each race is told the
/// offset moved (and goes on from there, as the runtime does), and the result is as if one
/// wrote.
#[tokio::test]
async fn concurrent_writers_of_a_partition_apply_each_offset_once() {
    let namespace = namespace();
    let url = mysql_url();
    let (a, b) = (
        MysqlStore::connect(&url, &namespace).await.unwrap(),
        MysqlStore::connect(&url, &namespace).await.unwrap(),
    );
    let batches: Vec<_> = (0..20)
        .map(|n| {
            let offsets = n * 100..(n + 1) * 100;
            let changes = offsets
                .map(|o| put(o, &format!("k{}", o % 50), o))
                .collect();
            batch(0, None, (n + 1) * 100 - 1, changes)
        })
        .collect();
    let run = |store: MysqlStore, batches: Vec<PartitionBatch>| async move {
        let mut expected = None;
        for batch in batches {
            if expected.is_some_and(|e| e >= batch.last_offset) {
                continue;
            }
            let batch = PartitionBatch {
                expected_offset: expected,
                ..batch
            };
            expected = match store.write(&batch).await {
                Ok(recorded) => Some(recorded),
                Err(Error::OffsetMoved { found, .. }) => found,
                Err(e) => panic!("{e}"),
            };
        }
    };
    tokio::join!(run(a.clone(), batches.clone()), run(b, batches));
    assert_eq!(a.applied_offset("t", 0).await.unwrap(), Some(1999));
    for k in 0..50 {
        assert_eq!(
            a.get(&format!("k{k}")).await.unwrap(),
            Some(json!({ "value": 1950 + k }))
        );
    }
    a.clear().await.unwrap();
}

#[tokio::test]
async fn services_choose_the_backend_by_configuration() {
    let kind: StoreKind = "MySQL".parse().unwrap();
    assert_eq!(kind, StoreKind::Mysql);
    assert_eq!(
        serde_json::from_str::<StoreKind>("\"redis\"").unwrap(),
        StoreKind::Redis
    );
    assert_eq!(
        serde_json::to_string(&StoreKind::Mysql).unwrap(),
        "\"mysql\""
    );
    assert_eq!(StoreKind::default(), StoreKind::Redis);
    assert!("postgres".parse::<StoreKind>().is_err());

    let store = AnyStore::connect(kind, "redis://unused", &mysql_url(), &namespace())
        .await
        .unwrap();
    assert_eq!(store.kind(), StoreKind::Mysql);
    store
        .write(&batch(0, None, 0, vec![put(0, "a", 1)]))
        .await
        .unwrap();
    assert_eq!(store.get("a").await.unwrap(), Some(json!({ "value": 1 })));
    store.clear().await.unwrap();
}

/// The server stops under a connected store: writes fail with a retryable error (promptly,
/// not hanging), and once it is back the same store writes again with nothing lost.
#[tokio::test]
async fn a_stopped_server_fails_writes_retryably_and_they_resume_when_it_is_back() {
    let server = testkit::Isolated::start("mysql");
    let url = format!("mysql://platform:platform@{}/platform", server.address());
    let store = MysqlStore::connect(&url, &namespace()).await.unwrap();
    let keys =
        |offsets: std::ops::Range<i64>| offsets.map(|o| put(o, &format!("k{o}"), o)).collect();
    store.write(&batch(0, None, 9, keys(0..10))).await.unwrap();

    server.down();
    let second = batch(0, Some(9), 19, keys(10..20));
    let started = Instant::now();
    let error = store.write(&second).await.unwrap_err();
    assert!(error.is_retryable(), "{error}");
    assert!(
        started.elapsed() < Duration::from_secs(30),
        "{:?}",
        started.elapsed()
    );
    println!("while down: {error} after {:.2?}", started.elapsed());

    server.up();
    // What the runtime does: the same batch again until the store takes it.
    let mut attempts = 1;
    let recorded = loop {
        match store.write(&second).await {
            Ok(recorded) => break recorded,
            Err(e) if e.is_retryable() && attempts < 20 => {
                attempts += 1;
                tokio::time::sleep(Duration::from_millis(250)).await;
            }
            Err(e) => panic!("after {attempts} attempts: {e}"),
        }
    };
    println!("back up: written after {attempts} attempt(s)");
    assert_eq!(recorded, 19);
    assert_eq!(store.applied_offset("t", 0).await.unwrap(), Some(19));
    for o in 0..20 {
        assert_eq!(
            store.get(&format!("k{o}")).await.unwrap(),
            Some(json!({ "value": o })),
            "k{o}"
        );
    }
    store.clear().await.unwrap();
}
