//! `/customers`.

use commerce::Service;
use reqwest::{Method, StatusCode};
use serde_json::json;

use crate::helpers::{assert_error, with_service};

#[tokio::test]
async fn customers_are_created_read_listed_replaced_and_validated() {
    with_service(Service::Customers, |address, c| async move {
        let url = format!("{address}/customers");
        let body = json!({ "name": "Ann Peeters", "email": "ann@example.com", "tier": "Gold" });
        let (status, created) = c.post(&url, &body).await;
        assert_eq!(status, StatusCode::CREATED, "{created}");
        assert_eq!(created["tier"], "Gold");
        let id = created["id"].as_i64().unwrap();
        let (status, read) = c.get(&format!("{url}/{id}")).await;
        assert_eq!(status, StatusCode::OK);
        assert_eq!(read, created);
        let (status, replaced) = c
            .put(
                &format!("{url}/{id}"),
                &json!({ "name": "Ann P.", "email": "ann@example.org", "tier": "Bronze" }),
            )
            .await;
        assert_eq!(status, StatusCode::OK);
        assert_eq!(replaced["tier"], "Bronze");
        let (_, list) = c.get(&url).await;
        assert_eq!(list.as_array().unwrap().len(), 1);

        for (body, needle) in [
            (
                json!({ "name": "A", "email": "ann@example.com", "tier": "Platinum" }),
                "tier",
            ),
            (
                json!({ "name": "A", "email": "not-an-email", "tier": "Gold" }),
                "email",
            ),
            (
                json!({ "name": " ", "email": "ann@example.com", "tier": "Gold" }),
                "name",
            ),
            (json!({ "name": "A", "tier": "Gold" }), "email"),
        ] {
            assert_error(&c.post(&url, &body).await, StatusCode::BAD_REQUEST, needle);
        }
        assert_error(
            &c.send_raw(Method::POST, &url, "{").await,
            StatusCode::BAD_REQUEST,
            "malformed JSON",
        );
        assert_error(
            &c.get(&format!("{url}/999")).await,
            StatusCode::NOT_FOUND,
            "999",
        );
        assert_error(
            &c.get(&format!("{url}/x")).await,
            StatusCode::BAD_REQUEST,
            "customer id",
        );
        assert_error(
            &c.put(&format!("{url}/999"), &body).await,
            StatusCode::NOT_FOUND,
            "999",
        );
    })
    .await;
}
