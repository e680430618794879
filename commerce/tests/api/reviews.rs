//! `/reviews`.

use commerce::Service;
use reqwest::{Method, StatusCode};
use serde_json::json;

use crate::helpers::{assert_error, with_service};

#[tokio::test]
async fn reviews_are_created_listed_per_product_and_validated() {
    with_service(Service::Reviews, |address, c| async move {
        let url = format!("{address}/reviews");
        for (product, rating) in [(1, 5), (1, 2), (2, 4)] {
            let body =
                json!({ "productId": product, "customerId": 3, "rating": rating, "text": "fine" });
            let (status, created) = c.post(&url, &body).await;
            assert_eq!(status, StatusCode::CREATED, "{created}");
            assert_eq!(created["rating"], rating);
        }
        let (status, all) = c.get(&url).await;
        assert_eq!(status, StatusCode::OK);
        assert_eq!(all.as_array().unwrap().len(), 3);
        let (status, first) = c.get(&format!("{url}/product/1")).await;
        assert_eq!(status, StatusCode::OK);
        assert_eq!(first.as_array().unwrap().len(), 2);
        assert!(first
            .as_array()
            .unwrap()
            .iter()
            .all(|r| r["productId"] == 1));
        let (_, none) = c.get(&format!("{url}/product/77")).await;
        assert_eq!(none, json!([]));

        for (body, needle) in [
            (
                json!({ "productId": 1, "customerId": 1, "rating": 0 }),
                "rating",
            ),
            (
                json!({ "productId": 1, "customerId": 1, "rating": 6 }),
                "rating",
            ),
            (
                json!({ "productId": 0, "customerId": 1, "rating": 3 }),
                "productId",
            ),
            (
                json!({ "productId": 1, "customerId": -1, "rating": 3 }),
                "customerId",
            ),
            (
                json!({ "productId": 1, "customerId": 1, "rating": "five" }),
                "invalid body",
            ),
        ] {
            assert_error(&c.post(&url, &body).await, StatusCode::BAD_REQUEST, needle);
        }
        assert_error(
            &c.send_raw(Method::POST, &url, "nope").await,
            StatusCode::BAD_REQUEST,
            "malformed JSON",
        );
        assert_error(
            &c.get(&format!("{url}/product/abc")).await,
            StatusCode::BAD_REQUEST,
            "product id",
        );
    })
    .await;
}
