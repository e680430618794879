//! `/products` and `/reservations`.

use reqwest::{Method, StatusCode};
use serde_json::json;
use uuid::Uuid;

use crate::helpers::{assert_error, product_body, Shop};

#[tokio::test]
async fn products_are_created_read_listed_and_replaced() {
    let shop = Shop::start().await;
    let c = &shop.client;
    let (status, created) = c
        .post(&shop.products_url("/products"), &product_body("Tent", 7))
        .await;
    assert_eq!(status, StatusCode::CREATED);
    assert_eq!(created["name"], "Tent");
    assert_eq!(created["price"], json!(12.5));
    assert_eq!(created["stock"], 7);
    let id = created["id"].as_i64().unwrap();

    let (status, read) = c.get(&shop.products_url(&format!("/products/{id}"))).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(read, created);

    let replaced =
        json!({ "name": "Tent XL", "description": "bigger", "price": 99.99, "stock": 3 });
    let (status, body) = c
        .put(&shop.products_url(&format!("/products/{id}")), &replaced)
        .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(body["price"], json!(99.99));
    assert_eq!(body["stock"], 3);

    let (status, list) = c.get(&shop.products_url("/products")).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(list.as_array().unwrap().len(), 1);
    assert_eq!(list[0]["name"], "Tent XL");
    shop.stop().await;
}

#[tokio::test]
async fn bad_product_bodies_and_unknown_ids_are_4xx_with_a_message() {
    let shop = Shop::start().await;
    let c = &shop.client;
    let url = shop.products_url("/products");
    for (body, needle) in [
        (json!({ "name": "", "price": 1, "stock": 1 }), "name"),
        (json!({ "name": "x", "price": -1, "stock": 1 }), "price"),
        (json!({ "name": "x", "price": 1.234, "stock": 1 }), "price"),
        (json!({ "name": "x", "price": 1, "stock": -1 }), "stock"),
        (json!({ "name": "x", "price": 1 }), "stock"),
        (
            json!({ "name": "x", "price": "1", "stock": 1 }),
            "invalid body",
        ),
        (
            json!({ "name": "x", "price": 1, "stock": 1, "colour": "red" }),
            "colour",
        ),
    ] {
        assert_error(&c.post(&url, &body).await, StatusCode::BAD_REQUEST, needle);
    }
    assert_error(
        &c.send_raw(Method::POST, &url, "{\"name\": ").await,
        StatusCode::BAD_REQUEST,
        "malformed JSON",
    );
    assert_error(
        &c.get(&shop.products_url("/products/999")).await,
        StatusCode::NOT_FOUND,
        "999",
    );
    assert_error(
        &c.get(&shop.products_url("/products/abc")).await,
        StatusCode::BAD_REQUEST,
        "abc",
    );
    assert_error(
        &c.put(&shop.products_url("/products/999"), &product_body("x", 1))
            .await,
        StatusCode::NOT_FOUND,
        "999",
    );
    shop.stop().await;
}

#[tokio::test]
async fn a_reservation_is_taken_once_per_order_and_released_once() {
    let shop = Shop::start().await;
    let c = &shop.client;
    let product = shop.product(10).await;
    let order = Uuid::new_v4();
    let body = json!({ "orderId": order, "customerId": 1, "productId": product, "quantity": 4 });
    let url = shop.products_url("/reservations");

    let (status, first) = c.post(&url, &body).await;
    assert_eq!(status, StatusCode::CREATED, "{first}");
    assert_eq!(first["stockAfter"], 6);
    let (status, again) = c.post(&url, &body).await;
    assert_eq!(
        status,
        StatusCode::OK,
        "a retry finds its reservation: {again}"
    );
    assert_eq!(
        shop.stock(product).await,
        6,
        "a retry reserves nothing more"
    );
    assert_error(
        &c.post(
            &url,
            &json!({ "orderId": order, "customerId": 1, "productId": product, "quantity": 5 }),
        )
        .await,
        StatusCode::CONFLICT,
        "different reservation",
    );

    let (status, reservation) = c
        .get(&shop.products_url(&format!("/reservations/{order}")))
        .await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(reservation["status"], "held");

    let release = shop.products_url(&format!("/reservations/{order}/release"));
    let (status, released) = c.post(&release, &json!({})).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(released["released"], true);
    let (_, again) = c.post(&release, &json!({})).await;
    assert_eq!(
        again["released"], false,
        "a second release gives nothing back"
    );
    assert_eq!(shop.stock(product).await, 10);
    assert_error(&c.post(&url, &body).await, StatusCode::CONFLICT, "released");
    assert_eq!(
        shop.stock(product).await,
        10,
        "a released order never reserves again"
    );
    shop.stop().await;
}

#[tokio::test]
async fn a_release_before_the_reservation_refuses_it_and_bad_reservations_are_4xx() {
    let shop = Shop::start().await;
    let c = &shop.client;
    let product = shop.product(3).await;
    let url = shop.products_url("/reservations");
    let late = Uuid::new_v4();
    let (status, released) = c
        .post(
            &shop.products_url(&format!("/reservations/{late}/release")),
            &json!({}),
        )
        .await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(released["released"], false);
    assert_error(
        &c.post(
            &url,
            &json!({ "orderId": late, "customerId": 1, "productId": product, "quantity": 1 }),
        )
        .await,
        StatusCode::CONFLICT,
        "released",
    );
    assert_error(
        &c.post(
            &url,
            &json!({ "orderId": Uuid::new_v4(), "customerId": 1, "productId": product, "quantity": 4 }),
        )
        .await,
        StatusCode::CONFLICT,
        "insufficient stock",
    );
    assert_error(
        &c.post(
            &url,
            &json!({ "orderId": Uuid::new_v4(), "customerId": 1, "productId": 999, "quantity": 1 }),
        )
        .await,
        StatusCode::NOT_FOUND,
        "999",
    );
    for (body, needle) in [
        (
            json!({ "orderId": "x", "customerId": 1, "productId": product, "quantity": 1 }),
            "invalid body",
        ),
        (
            json!({ "orderId": Uuid::new_v4(), "customerId": 1, "productId": product, "quantity": 0 }),
            "quantity",
        ),
        (
            json!({ "orderId": Uuid::new_v4(), "customerId": 1, "productId": 0, "quantity": 1 }),
            "productId",
        ),
        (
            json!({ "orderId": Uuid::new_v4(), "productId": product, "quantity": 1 }),
            "customerId",
        ),
    ] {
        assert_error(&c.post(&url, &body).await, StatusCode::BAD_REQUEST, needle);
    }
    assert_error(
        &c.get(&shop.products_url(&format!("/reservations/{}", Uuid::new_v4())))
            .await,
        StatusCode::NOT_FOUND,
        "no reservation",
    );
    assert_error(
        &c.post(&shop.products_url("/reservations/nope/release"), &json!({}))
            .await,
        StatusCode::BAD_REQUEST,
        "UUID",
    );
    assert_eq!(shop.stock(product).await, 3);
    shop.stop().await;
}

#[tokio::test]
async fn held_reservations_are_listed_until_settled_and_bad_queries_are_400() {
    let shop = Shop::start().await;
    let c = &shop.client;
    let product = shop.product(10).await;
    let (held, released) = (Uuid::new_v4(), Uuid::new_v4());
    for order in [held, released] {
        let body =
            json!({ "orderId": order, "customerId": 7, "productId": product, "quantity": 2 });
        let (status, answer) = c.post(&shop.products_url("/reservations"), &body).await;
        assert_eq!(status, StatusCode::CREATED, "{answer}");
    }
    let (status, _) = c
        .post(
            &shop.products_url(&format!("/reservations/{released}/release")),
            &json!({}),
        )
        .await;
    assert_eq!(status, StatusCode::OK);

    let unsettled = shop.products_url("/reservations/unsettled?olderThanMs=0");
    let (status, listed) = c.get(&unsettled).await;
    assert_eq!(status, StatusCode::OK, "{listed}");
    assert_eq!(
        listed,
        json!([{ "orderId": held, "customerId": 7, "productId": product, "quantity": 2 }]),
        "only the held reservation"
    );
    let (status, listed) = c
        .get(&shop.products_url("/reservations/unsettled?olderThanMs=600000"))
        .await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(listed, json!([]), "nothing is held that long");

    let settle = shop.products_url("/reservations/settled");
    let (status, answer) = c
        .post(&settle, &json!({ "orderIds": [held, released] }))
        .await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(
        answer["settled"], 1,
        "a released reservation is not settled"
    );
    let (_, listed) = c.get(&unsettled).await;
    assert_eq!(
        listed,
        json!([]),
        "a settled reservation is not listed again"
    );
    let (_, again) = c.post(&settle, &json!({ "orderIds": [held] })).await;
    assert_eq!(again["settled"], 0);
    assert_eq!(
        shop.stock(product).await,
        8,
        "settling takes and gives nothing"
    );

    for (url, needle) in [
        ("/reservations/unsettled", "olderThanMs"),
        ("/reservations/unsettled?olderThanMs=-1", "olderThanMs"),
        ("/reservations/unsettled?olderThanMs=0&limit=0", "limit"),
    ] {
        assert_error(
            &c.get(&shop.products_url(url)).await,
            StatusCode::BAD_REQUEST,
            needle,
        );
    }
    assert_error(
        &c.post(&settle, &json!({ "orderIds": ["x"] })).await,
        StatusCode::BAD_REQUEST,
        "invalid body",
    );
    assert_error(
        &c.post(
            &shop.products_url("/reservations"),
            &json!({ "orderId": Uuid::new_v4(), "customerId": 0, "productId": product, "quantity": 1 }),
        )
        .await,
        StatusCode::BAD_REQUEST,
        "customerId",
    );
    shop.stop().await;
}

#[tokio::test]
async fn a_batch_reserves_each_entry_as_a_single_reservation_would() {
    let shop = Shop::start().await;
    let c = &shop.client;
    let (product, other) = (shop.product(10).await, shop.product(1).await);
    let url = shop.products_url("/reservations");
    let (retried, released) = (Uuid::new_v4(), Uuid::new_v4());
    let (status, _) = c
        .post(
            &url,
            &json!({ "orderId": retried, "customerId": 1, "productId": product, "quantity": 1 }),
        )
        .await;
    assert_eq!(status, StatusCode::CREATED);
    let (status, _) = c
        .post(
            &shop.products_url(&format!("/reservations/{released}/release")),
            &json!({}),
        )
        .await;
    assert_eq!(status, StatusCode::OK);

    let (first, twice, too_big, after_too_big) = (
        Uuid::new_v4(),
        Uuid::new_v4(),
        Uuid::new_v4(),
        Uuid::new_v4(),
    );
    let entry = |order: Uuid, product: i64, quantity: i64| json!({ "orderId": order, "customerId": 3, "productId": product, "quantity": quantity });
    let entries = [
        (entry(first, product, 2), 201),
        (entry(retried, product, 1), 200),
        (entry(released, product, 1), 409),
        (entry(Uuid::new_v4(), 999, 1), 404),
        (entry(twice, product, 3), 201),
        (entry(twice, product, 3), 200),
        // 10 - 1 - 2 - 3 = 4 left: 5 is too many, but the 4 after it fits.
        (entry(too_big, product, 5), 409),
        (entry(after_too_big, product, 4), 201),
        (entry(Uuid::new_v4(), other, 1), 201),
        (entry(Uuid::new_v4(), other, 1), 409),
    ];
    let (status, answer) = c
        .post(
            &shop.products_url("/reservations/batch"),
            &json!({ "reservations": entries.iter().map(|(e, _)| e.clone()).collect::<Vec<_>>() }),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{answer}");
    let results = answer["results"].as_array().unwrap();
    assert_eq!(results.len(), entries.len());
    for ((entry, expected), result) in entries.iter().zip(results) {
        assert_eq!(result["orderId"], entry["orderId"]);
        assert_eq!(result["status"], *expected, "{entry} answered {result}");
        assert_eq!(result.get("error").is_some(), *expected >= 400, "{result}");
    }
    assert_eq!(shop.stock(product).await, 0);
    assert_eq!(shop.stock(other).await, 0);
    let held: i64 = sqlx::query_scalar(
        "SELECT count(*) FROM reservations WHERE status = 'held' AND order_id = ANY($1)",
    )
    .bind([first, twice, after_too_big, retried])
    .fetch_one(&shop.products.pool)
    .await
    .unwrap();
    assert_eq!(held, 4, "each reserved order holds one reservation");

    // The one statement takes the prefix that fits and leaves the rest to single reservations.
    let fresh = shop.product(5).await;
    let requests: Vec<_> = [2, 2, 5, 1]
        .into_iter()
        .map(|quantity| {
            let request = commerce::products::domain::ReservationRequest {
                order_id: Uuid::new_v4(),
                customer_id: 1,
                product_id: fresh,
                quantity,
            };
            (request, None, None)
        })
        .collect();
    let taken = commerce::products::store::reserve_batch(&shop.products.pool, &requests)
        .await
        .unwrap();
    assert_eq!(taken, [Some(3), Some(1), None, None]);
    assert_eq!(shop.stock(fresh).await, 1);

    for (body, needle) in [
        (
            json!({ "reservations": [entry(Uuid::new_v4(), product, 0)] }),
            "reservations[0]: quantity",
        ),
        (
            json!({ "reservations": [{ "orderId": "x" }] }),
            "invalid body",
        ),
        (
            json!({ "reservations": vec![entry(Uuid::new_v4(), product, 1); 257] }),
            "at most 256",
        ),
    ] {
        assert_error(
            &c.post(&shop.products_url("/reservations/batch"), &body)
                .await,
            StatusCode::BAD_REQUEST,
            needle,
        );
    }
    shop.stop().await;
}
