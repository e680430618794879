//! The one-time seed import: good rows in, bad rows skipped and counted, never twice.

use std::time::Duration;

use crm::seed::SeedOutcome;
use serde_json::{json, Value};
use topics::events::MandateLevel;

use crate::helpers::{
    apply_topics, connection_id, spawn_with, test_settings, write_seed, EventProbe,
};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn seed_imports_good_rows_once_and_a_restart_keeps_api_changes() {
    let mut settings = test_settings();
    let connections: Vec<String> = (0..4).map(|_| connection_id()).collect();
    let [a, b, c, d] = [0, 1, 2, 3].map(|i| connections[i].as_str());
    std::fs::remove_file(&settings.crm_seed_csv).unwrap();
    settings.crm_seed_csv = write_seed(&format!(
        "id,firstName,lastName,city,connectionId,connectionMandate
10,Anna,de Vries,Utrecht,{a},2
11,Bram,Peeters,Gent,{b},1,too-many
x12,Carla,Jansen,Delft,{d},0
12,Daan,Maes,Leuven,{b},0
13,Eva,Bakker,Breda,{d},3
14,Fleur,Smit,Zwolle,,1
10,Gert,Wouters,Hasselt,{d},2
15,Hanne,Claes
20,Iris,Mulder,Brugge,{c},1
"
    ));
    apply_topics(&settings.kafka).await;
    let probe = EventProbe::from_end(&settings.kafka).await;

    let mut app = spawn_with(settings.clone()).await;

    let SeedOutcome::Imported(summary) = &app.seed else {
        panic!("a fresh database is seeded, got {:?}", app.seed);
    };
    assert_eq!(summary.imported, 3);
    let skipped: Vec<(u64, &str)> = summary
        .skipped
        .iter()
        .map(|s| (s.line, s.reason.as_str()))
        .collect();
    assert_eq!(skipped.len(), 6, "{skipped:?}");
    let lines: Vec<u64> = skipped.iter().map(|(line, _)| *line).collect();
    assert_eq!(lines, [3, 4, 6, 7, 8, 9]);
    for ((_, reason), expected) in skipped.iter().zip([
        "7 columns",
        "not a positive number",
        "0, 1 or 2",
        "connectionId",
        "duplicate id 10",
        "3 columns",
    ]) {
        assert!(
            reason.contains(expected),
            "{reason:?} should say {expected:?}"
        );
    }
    let mut db = app.database().await;
    let recorded: (i32, i32) =
        sqlx::query_as("SELECT rows_imported, rows_skipped FROM seed_imports")
            .fetch_one(&mut db)
            .await
            .unwrap();
    assert_eq!(recorded, (3, 6));

    let listed: Value = app.get("/customers").await.json().await.unwrap();
    assert_eq!(listed["total"], 3);
    let ids: Vec<i64> = listed["items"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| c["id"].as_i64().unwrap())
        .collect();
    assert_eq!(ids, [10, 12, 20], "the file's own ids are kept");

    // Every seeded mandate is published, so the IoT platform learns them all.
    let events = probe.expect(&[a, b, c], 3, Duration::from_secs(30)).await;
    let mut seen: Vec<_> = events
        .iter()
        .map(|r| (r.event.customer_id, r.key.clone(), r.event.mandate))
        .collect();
    seen.sort_by_key(|(id, ..)| *id);
    assert_eq!(
        seen,
        [
            (10, a.to_owned(), MandateLevel::RealTime),
            (12, b.to_owned(), MandateLevel::None),
            (20, c.to_owned(), MandateLevel::BillingOnly),
        ]
    );

    // API ids continue after the file's highest id.
    let created = app
        .create(&json!({
            "firstName": "Jolien", "lastName": "Segers", "city": "Genk",
            "connectionId": connection_id(), "connectionMandate": 1
        }))
        .await;
    assert_eq!(created["id"], 21);
    let mut changed: Value = app.get("/customers/10").await.json().await.unwrap();
    changed["city"] = json!("Amersfoort");
    assert_eq!(app.put_customer(10, &changed).await.status(), 200);

    app.shutdown().await;
    let restarted = spawn_with(settings).await;

    assert_eq!(restarted.seed, SeedOutcome::AlreadySeeded);
    let after: Value = restarted.get("/customers/10").await.json().await.unwrap();
    assert_eq!(
        after, changed,
        "the restart did not overwrite the API change"
    );
    let listed: Value = restarted.get("/customers").await.json().await.unwrap();
    assert_eq!(listed["total"], 4);
    let imports: i64 = sqlx::query_scalar("SELECT count(*) FROM seed_imports")
        .fetch_one(&mut db)
        .await
        .unwrap();
    assert_eq!(imports, 1);
    drop(db);
    restarted.stop().await;
}
