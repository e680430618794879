//! The tracking read model: while orders are placed and cancelled, its process is killed with
//! SIGKILL again and again; in the end every order's document has the order's status and
//! exactly the history (count and hash chain of event ids) the topic holds for it.

use std::collections::HashMap;

use orderflow::tracking::OrderView;
use projectors::digest::Digest;
use uuid::Uuid;

use crate::helpers::*;

const ORDERS: usize = 60;

async fn view(url: &str, order: Uuid) -> Option<OrderView> {
    let response = reqwest::get(format!("{url}/orders/{order}")).await.ok()?;
    if !response.status().is_success() {
        return None;
    }
    response.json().await.ok()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_read_model_has_every_event_once_after_kill_9() {
    let shop = Shop::start().await;
    let mut settings = flow_settings(&shop).await;
    settings.tracking_namespace = testkit::unique("orderflow_test_tracking");
    settings.tracking_group = testkit::unique("orderflow_test_tracking");
    let (store, starts) = tracking_from_end(&settings).await;
    let address = format!("127.0.0.1:{}", testkit::free_port());
    let url = format!("http://{address}");
    let listen = [("TRACKING_LISTEN_ADDR", address.as_str())];
    let product = shop.product(100_000).await;

    let mut tracking = Some(Component::start("tracking", &settings, &listen));
    let mut expected: HashMap<Uuid, (&str, u64)> = HashMap::new();
    let mut kills = 0;
    let mut placed = Vec::new();
    for i in 0..ORDERS {
        let order = shop.order(1 + (i % 5) as i64, product, 1).await;
        placed.push(order);
        if i % 4 == 0 {
            shop.cancel(order).await;
            expected.insert(order, ("Cancelled", 2));
        } else {
            expected.insert(order, ("Processing", 1));
        }
        if i % 15 == 14 {
            // Once an order a few back is folded, kill -9 while the last ones are in flight,
            // and start again.
            let earlier = placed[i - 5];
            testkit::eventually("the read model folds", WAIT, || async {
                view(&url, earlier).await.is_some()
            })
            .await;
            tracking.take().unwrap().kill().await;
            kills += 1;
            tracking = Some(Component::start("tracking", &settings, &listen));
        }
    }
    testkit::eventually("every order with its status and events", WAIT, || async {
        let mut all = true;
        for (order, (status, events)) in &expected {
            all &= view(&url, *order)
                .await
                .is_some_and(|v| v.status == *status && v.history.events == *events);
        }
        all
    })
    .await;

    let log = orderflow::tracking::log_fold(&settings.kafka, &starts, WAIT)
        .await
        .expect("the log read back");
    for order in expected.keys() {
        let (_, events) = &log[order];
        let ids: Vec<String> = events.iter().map(Uuid::to_string).collect();
        let from_log = Digest::of(ids.iter().map(String::as_str));
        let read = view(&url, *order).await.expect("the order's document");
        assert_eq!(
            read.history, from_log,
            "order {order}: the read model's history after {kills} kills vs the log's"
        );
    }
    assert_eq!(kills, ORDERS / 15);

    tracking.take().unwrap().kill().await;
    {
        use projectors::Store as _;
        store.clear().await.expect("tracking tables dropped");
    }
    shop.stop().await;
    cleanup(&settings).await;
}
