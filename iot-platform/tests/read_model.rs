//! The IoT platform against the real broker, registry and Redis: events published to
//! `connection-mandates` become answers of its HTTP API, also across a restart.

mod common;

use std::time::{Duration, Instant};

use common::{event, publish, spawn, test_settings};
use reqwest::StatusCode;
use serde_json::Value;
use topics::events::MandateLevel;
use uuid::Uuid;

/// Polls `url` until it answers 200 with a `mandate` of `expected`.
async fn wait_for_mandate(url: &str, expected: u64) -> Value {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let response = reqwest::get(url).await.unwrap();
        if response.status() == StatusCode::OK {
            let body: Value = response.json().await.unwrap();
            if body["mandate"] == expected {
                return body;
            }
        }
        assert!(
            Instant::now() < deadline,
            "{url} never showed mandate {expected}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn published_mandates_are_served_and_survive_a_restart() {
    let settings = test_settings();
    let connection = format!("test-{}", Uuid::new_v4());
    let app = spawn(settings.clone()).await;

    publish(
        &settings,
        &[
            event(&connection, MandateLevel::BillingOnly, 1_000),
            event(&connection, MandateLevel::RealTime, 2_000),
        ],
    )
    .await;
    let body = wait_for_mandate(&format!("{}/mandates/{connection}", app.base_url), 2).await;
    assert_eq!(body["connectionId"], connection.as_str());
    assert_eq!(body["changedAt"], "1970-01-01T00:00:02.000Z");
    let classic = reqwest::get(format!("{}/?connectionId={connection}", app.base_url))
        .await
        .unwrap();
    assert_eq!(classic.json::<Value>().await.unwrap(), body);

    // Changes made while the platform is down are served once it is back.
    app.stop().await;
    publish(&settings, &[event(&connection, MandateLevel::None, 3_000)]).await;
    let app = spawn(settings).await;
    wait_for_mandate(&format!("{}/mandates/{connection}", app.base_url), 0).await;
    app.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unknown_connections_and_missing_parameters_are_refused() {
    let app = spawn(test_settings()).await;
    let unknown = reqwest::get(format!("{}/mandates/no-such-connection", app.base_url))
        .await
        .unwrap();
    assert_eq!(unknown.status(), StatusCode::NOT_FOUND);
    assert!(unknown.json::<Value>().await.unwrap()["error"].is_string());
    for query in ["/", "/?connectionId=", "/?other=1"] {
        let response = reqwest::get(format!("{}{query}", app.base_url))
            .await
            .unwrap();
        assert_eq!(response.status(), StatusCode::BAD_REQUEST, "{query}");
    }
    app.stop().await;
}
