//! Order and stock events reach their topics through the outbox and decode with the
//! registry's schema.

use std::time::Duration;

use rdkafka::consumer::{Consumer, StreamConsumer};
use rdkafka::message::{Headers, Message};
use reqwest::StatusCode;
use telemetry::TraceContext;
use tokio::time::Instant;
use topics::apply::apply;
use topics::cluster::Cluster;
use topics::codec::Decoder;
use topics::commerce::{OrderEvent, OrderEventKind, OrderStatus, StockEvent, StockEventKind};
use topics::events::Event;
use topics::kafka::{consumer_config, EVENT_ID_HEADER};
use topics::registry::Registry;
use topics::settings::KafkaSettings;
use topics::spec::CATALOGUE;

use crate::helpers::{end_offsets, Shop};

const WAIT: Duration = Duration::from_secs(60);

/// Creates every topic and subject of the catalogue (idempotent), as `topics apply` does.
pub(crate) async fn apply_topics(kafka: &KafkaSettings) {
    let cluster = {
        let kafka = kafka.clone();
        tokio::task::spawn_blocking(move || Cluster::connect(&kafka))
            .await
            .unwrap()
            .unwrap()
    };
    apply(
        &cluster,
        &Registry::new(&kafka.schema_registry_url),
        CATALOGUE,
    )
    .await
    .expect("topics apply");
}

/// Reads `E`'s topic from the offsets it had at creation, keeping the records with `key`.
pub(crate) struct Probe<E: Event> {
    consumer: StreamConsumer,
    decoder: Decoder<E>,
}

impl<E: Event> Probe<E> {
    pub(crate) fn from_end(kafka: &KafkaSettings) -> Self {
        let consumer: StreamConsumer = consumer_config(kafka, &testkit::unique("commerce_probe"))
            .create()
            .expect("consumer");
        consumer
            .assign(&end_offsets(&consumer, E::TOPIC))
            .expect("assigned");
        Self {
            consumer,
            decoder: Decoder::new(Registry::new(&kafka.schema_registry_url)),
        }
    }

    async fn expect(&self, key: &str, count: usize) -> Vec<E> {
        self.expect_traced(key, count)
            .await
            .into_iter()
            .map(|(event, _)| event)
            .collect()
    }

    /// [`Probe::expect`], each event with the trace context of its record's headers.
    pub(crate) async fn expect_traced(
        &self,
        key: &str,
        count: usize,
    ) -> Vec<(E, Option<TraceContext>)> {
        let deadline = Instant::now() + WAIT;
        let mut found = Vec::new();
        while found.len() < count {
            let message = tokio::time::timeout_at(deadline, self.consumer.recv())
                .await
                .unwrap_or_else(|_| {
                    panic!(
                        "{} of {count} events for {key} on {}",
                        found.len(),
                        E::TOPIC.name
                    )
                })
                .expect("consumer");
            if message.key() != Some(key.as_bytes()) {
                continue;
            }
            let has_id = message
                .headers()
                .is_some_and(|h| h.iter().any(|h| h.key == EVENT_ID_HEADER));
            assert!(has_id, "every event carries its event-id header");
            let trace = message.headers().and_then(TraceContext::from_headers);
            let event = self
                .decoder
                .decode(message.payload().unwrap())
                .await
                .expect("decodes");
            found.push((event, trace));
        }
        found
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn placing_and_cancelling_an_order_publishes_order_and_stock_events() {
    let shop = Shop::start().await;
    let kafka = shop.settings.kafka.clone();
    apply_topics(&kafka).await;
    let order_probe = Probe::<OrderEvent>::from_end(&kafka);
    let stock_probe = Probe::<StockEvent>::from_end(&kafka);

    // Stock events are keyed by product id, which every test database counts from 1: start
    // this one's ids somewhere no other test's products are.
    let first_id = 1_000_000_000 + (uuid::Uuid::new_v4().as_u128() % 1_000_000_000) as i64;
    sqlx::query("SELECT setval('products_id_seq', $1)")
        .bind(first_id)
        .execute(&shop.products.pool)
        .await
        .unwrap();
    let product = shop.product(9).await;
    let (status, order) = shop.order(4, product, 2).await;
    assert_eq!(status, StatusCode::CREATED);
    let id = order["id"].as_str().unwrap().to_owned();
    let (status, _) = shop.set_status(&id, "Cancelled").await;
    assert_eq!(status, StatusCode::OK);

    let orders = order_probe.expect(&id, 2).await;
    assert_eq!(orders[0].kind, OrderEventKind::Placed);
    assert_eq!(orders[0].status, OrderStatus::Processing);
    assert_eq!(
        (
            orders[0].customer_id,
            orders[0].product_id,
            orders[0].quantity
        ),
        (4, product, 2)
    );
    assert_eq!(orders[1].kind, OrderEventKind::StatusChanged);
    assert_eq!(orders[1].status, OrderStatus::Cancelled);
    assert_eq!(orders[1].previous_status, Some(OrderStatus::Processing));

    let stock = stock_probe.expect(&product.to_string(), 3).await;
    let summary: Vec<_> = stock
        .iter()
        .map(|e| (e.kind, e.quantity_change, e.stock_after))
        .collect();
    assert_eq!(
        summary,
        [
            (StockEventKind::Adjusted, 9, 9),
            (StockEventKind::Reserved, -2, 7),
            (StockEventKind::Released, 2, 9),
        ]
    );
    assert_eq!(stock[1].order_id.map(|o| o.to_string()), Some(id));
    shop.stop().await;
}
