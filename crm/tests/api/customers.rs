//! The HTTP API: creating, reading, paging and replacing customers, and refusing bad input.

use serde_json::{json, Value};

use crate::helpers::{connection_id, customer_body, spawn_app};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn post_returns_201_with_location_and_the_customer_with_its_id() {
    let app = spawn_app().await;
    let connection = connection_id();

    let response = app
        .post_customer(&customer_body(&connection, json!(2)))
        .await;

    assert_eq!(response.status(), 201);
    let location = response.headers()["location"].to_str().unwrap().to_owned();
    let created: Value = response.json().await.unwrap();
    let id = created["id"].as_i64().expect("id is a number");
    assert_eq!(location, format!("/customers/{id}"));
    assert_eq!(
        created,
        json!({
            "id": id, "firstName": "Lieke", "lastName": "van der Meer", "city": "Leuven",
            "connectionId": connection, "connectionMandate": 2
        })
    );
    let fetched: Value = app.get(&location).await.json().await.unwrap();
    assert_eq!(fetched, created);
    app.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn classic_clients_work_unchanged() {
    let app = spawn_app().await;
    // The classic service took the mandate as a string.
    let created = app
        .create(&customer_body(&connection_id(), json!("1")))
        .await;
    assert_eq!(created["connectionMandate"], 1);
    let id = created["id"].as_i64().unwrap();

    let response = app.get(&format!("/?customerId={id}")).await;
    assert_eq!(response.status(), 200);
    assert_eq!(response.json::<Value>().await.unwrap(), created);
    app.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn customers_are_listed_in_pages() {
    let app = spawn_app().await;
    let mut ids = Vec::new();
    for _ in 0..3 {
        ids.push(app.create(&customer_body(&connection_id(), json!(0))).await["id"].clone());
    }

    let page: Value = app
        .get("/customers?page=2&pageSize=2")
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(page["page"], 2);
    assert_eq!(page["pageSize"], 2);
    assert_eq!(page["total"], 3);
    assert_eq!(page["items"].as_array().unwrap().len(), 1);
    assert_eq!(page["items"][0]["id"], ids[2]);

    let first: Value = app.get("/customers").await.json().await.unwrap();
    assert_eq!(first["page"], 1);
    assert_eq!(first["pageSize"], 50);
    assert_eq!(first["items"].as_array().unwrap().len(), 3);

    for bad in [
        "page=0",
        "page=x",
        "pageSize=0",
        "pageSize=501",
        "pageSize=-1",
    ] {
        let response = app.get(&format!("/customers?{bad}")).await;
        assert_eq!(response.status(), 400, "{bad}");
        let body: Value = response.json().await.unwrap();
        assert!(body["error"].is_string(), "{bad}: {body}");
    }
    app.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn put_replaces_every_field() {
    let app = spawn_app().await;
    let id = app.create(&customer_body(&connection_id(), json!(2))).await["id"]
        .as_i64()
        .unwrap();
    let replacement = json!({
        "firstName": "Wannes", "lastName": "Goossens", "city": "Mechelen",
        "connectionId": connection_id(), "connectionMandate": "0"
    });

    let response = app.put_customer(id, &replacement).await;

    assert_eq!(response.status(), 200);
    let mut expected = replacement.clone();
    expected["id"] = json!(id);
    expected["connectionMandate"] = json!(0);
    assert_eq!(response.json::<Value>().await.unwrap(), expected);
    let fetched: Value = app
        .get(&format!("/customers/{id}"))
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(fetched, expected);
    app.stop().await;
}

async fn assert_400(response: reqwest::Response, what: &str, mentions: &str) {
    assert_eq!(response.status(), 400, "{what}");
    let body: Value = response.json().await.expect("JSON error body");
    let message = body["error"].as_str().unwrap_or_default();
    assert!(
        message.contains(mentions),
        "{what}: error {message:?} should mention {mentions:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_bodies_are_400_with_a_message() {
    let app = spawn_app().await;
    let id = app.create(&customer_body(&connection_id(), json!(2))).await["id"]
        .as_i64()
        .unwrap();
    let url = |path: &str| format!("{}{path}", app.address);

    let malformed = app
        .client
        .post(url("/customers"))
        .header("content-type", "application/json")
        .body(r#"{"firstName": "Anna", "#)
        .send()
        .await
        .unwrap();
    assert_400(malformed, "malformed JSON", "malformed JSON").await;

    let mut missing = customer_body(&connection_id(), json!(1));
    missing.as_object_mut().unwrap().remove("city");
    assert_400(app.post_customer(&missing).await, "missing field", "city").await;

    let refused = app
        .post_customer(&customer_body(&connection_id(), json!(3)))
        .await;
    let message: Value = refused.json().await.unwrap();
    let message = message["error"].as_str().unwrap();
    assert!(
        message.starts_with(
            "invalid customer: connectionMandate: connectionMandate must be 0, 1 or 2, not 3"
        ),
        "{message}"
    );

    for mandate in [json!(3), json!("3"), json!(-1), json!("two")] {
        let body = customer_body(&connection_id(), mandate.clone());
        assert_400(
            app.post_customer(&body).await,
            &format!("mandate {mandate}"),
            "connectionMandate",
        )
        .await;
        assert_400(
            app.put_customer(id, &body).await,
            &format!("PUT mandate {mandate}"),
            "connectionMandate",
        )
        .await;
    }

    for empty in ["", "   "] {
        let body = customer_body(empty, json!(1));
        assert_400(
            app.post_customer(&body).await,
            "empty connectionId",
            "connectionId",
        )
        .await;
        assert_400(
            app.put_customer(id, &body).await,
            "PUT empty connectionId",
            "connectionId",
        )
        .await;
    }

    let mut oversized = customer_body(&connection_id(), json!(1));
    oversized["city"] = json!("x".repeat(100 * 1024));
    assert_400(
        app.post_customer(&oversized).await,
        "oversized body",
        "larger than",
    )
    .await;

    let not_json = app
        .client
        .post(url("/customers"))
        .header("content-type", "text/plain")
        .body("firstName=Anna")
        .send()
        .await
        .unwrap();
    assert_400(not_json, "not JSON", "application/json").await;

    // None of the refused requests changed the customer.
    let after: Value = app
        .get(&format!("/customers/{id}"))
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(after["connectionMandate"], 2);
    let listed: Value = app.get("/customers").await.json().await.unwrap();
    assert_eq!(listed["total"], 1);
    app.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_and_unknown_ids() {
    let app = spawn_app().await;

    assert_400(
        app.get("/").await,
        "classic without customerId",
        "customerId",
    )
    .await;
    assert_400(app.get("/?customerId=abc").await, "classic NaN", "number").await;
    assert_400(app.get("/customers/abc").await, "path NaN", "number").await;
    let body = customer_body(&connection_id(), json!(1));
    let put_nan = app
        .client
        .put(format!("{}/customers/abc", app.address))
        .json(&body)
        .send()
        .await
        .unwrap();
    assert_400(put_nan, "PUT path NaN", "number").await;

    for response in [
        app.get("/customers/424242").await,
        app.get("/?customerId=424242").await,
        app.put_customer(424242, &body).await,
    ] {
        assert_eq!(response.status(), 404);
        let error: Value = response.json().await.unwrap();
        assert!(
            error["error"].as_str().unwrap().contains("424242"),
            "{error}"
        );
    }
    // A PUT to an unknown id creates nothing.
    let listed: Value = app.get("/customers").await.json().await.unwrap();
    assert_eq!(listed["total"], 0);
    app.stop().await;
}
