//! The dashboard in headless Chromium (Debian's `chromium`): the page loads, folds the result
//! changes it receives over Server-Sent Events, and shows a change made through the commerce
//! APIs; and `GET /events` resumes after `Last-Event-ID`.

mod common;

use std::process::Command;
use std::time::Duration;

use common::Stack;
use futures::StreamExt;
use serde_json::{json, Value};

/// The page's DOM after Chromium ran its scripts for a few seconds of virtual time.
fn dump_dom(url: &str) -> String {
    let profile = std::env::temp_dir().join(testkit::unique("chromium"));
    // `--timeout` stops loading after 6 s and dumps what the scripts made of the events by
    // then (an open event stream never lets the page finish loading); `timeout` bounds it.
    let out = Command::new("timeout")
        .args([
            "60",
            "chromium",
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--disable-dev-shm-usage",
            &format!("--user-data-dir={}", profile.display()),
            "--timeout=6000",
            "--dump-dom",
            url,
        ])
        .output()
        .expect("chromium runs (Debian package `chromium`)");
    let _ = std::fs::remove_dir_all(profile);
    String::from_utf8_lossy(&out.stdout).into_owned()
}

async fn page_shows(url: &str, needle: &str) -> bool {
    let (url, needle) = (url.to_owned(), needle.to_owned());
    tokio::task::spawn_blocking(move || dump_dom(&url).contains(&needle))
        .await
        .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn the_page_shows_changes_made_through_the_apis() {
    let mut stack = Stack::start(&[]).await;
    stack.start_engine();
    let dashboard = stack.start_service("dashboard", &[]).await;
    let http = reqwest::Client::new();
    let product: Value = http
        .post(format!("{}/products", stack.url("products")))
        .json(&json!({"name": "Camp stove", "price": 59.00, "stock": 30}))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let id = product["id"].as_i64().unwrap();
    let catalogue_row = format!(r#"data-query="product-catalogue" data-key="{id}""#);
    let critical_row = format!(r#"data-query="critical-stock" data-key="{id}""#);
    testkit::eventually(
        "the page lists the new product",
        Duration::from_secs(90),
        || page_shows(&dashboard, &catalogue_row),
    )
    .await;
    assert!(!page_shows(&dashboard, &critical_row).await);

    let r = http
        .put(format!("{}/products/{id}", stack.url("products")))
        .json(&json!({"name": "Camp stove", "price": 59.00, "stock": 3}))
        .send()
        .await
        .unwrap();
    assert!(r.status().is_success());
    testkit::eventually(
        "the page shows the product as critical",
        Duration::from_secs(90),
        || page_shows(&dashboard, &critical_row),
    )
    .await;
    // The notification list on the same page shows the critical-stock event.
    let notification = format!(r#"<li class="critical-stock" data-key="{id}">"#);
    testkit::eventually(
        "the page lists the critical-stock notification",
        Duration::from_secs(90),
        || page_shows(&dashboard, &notification),
    )
    .await;

    // Resuming: after Last-Event-ID 2 the stream starts at event 3.
    let response = http
        .get(format!("{dashboard}/events"))
        .header("Last-Event-ID", "2")
        .send()
        .await
        .unwrap();
    let mut body = response.bytes_stream();
    let mut text = String::new();
    while !text.contains("\n\n") {
        let chunk = tokio::time::timeout(Duration::from_secs(10), body.next())
            .await
            .expect("an event within 10 s")
            .expect("the stream is open")
            .unwrap();
        text.push_str(&String::from_utf8_lossy(&chunk));
    }
    assert!(
        text.contains("id: 3\n") || text.contains("id:3\n"),
        "{text}"
    );
    stack.cleanup().await;
}
