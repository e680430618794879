//! Packages and delivery agents on the real services: products, orders, users and two
//! delivery instances (one database, one consumer group), Kafka, the registry, PostgreSQL and
//! MariaDB. Ten orders ship at once with three free agents.

use std::collections::{HashMap, HashSet};
use std::time::Duration;

use chrono::{DateTime, Utc};
use commerce::Service;
use futures::future::join_all;
use rdkafka::consumer::{Consumer, StreamConsumer};
use rdkafka::message::Message;
use reqwest::StatusCode;
use serde_json::json;
use tokio::time::Instant;
use topics::codec::Decoder;
use topics::commerce::{DeliveryEvent, DeliveryEventKind};
use topics::events::Event;
use topics::kafka::consumer_config;
use topics::registry::Registry;
use topics::settings::KafkaSettings;
use uuid::Uuid;

use crate::helpers::{assert_error, Client, Running, Shop};
use crate::people::{
    drop_people, people_settings, start_group_at_end, start_groups_at_end, user_body, Cleanup,
};
use crate::users::apply_catalogue;

const WAIT: Duration = Duration::from_secs(120);
const PACKAGES: usize = 10;
const AGENTS: usize = 3;

/// The delivery events of `packages` on the topic from now on.
struct DeliveryEvents {
    consumer: StreamConsumer,
    decoder: Decoder<DeliveryEvent>,
    events: Vec<DeliveryEvent>,
}

impl DeliveryEvents {
    async fn from_end(kafka: &KafkaSettings) -> Self {
        let group = testkit::unique("delivery_probe");
        start_group_at_end(kafka, &group, DeliveryEvent::TOPIC).await;
        let consumer: StreamConsumer = consumer_config(kafka, &group).create().expect("consumer");
        consumer
            .subscribe(&[DeliveryEvent::TOPIC.name])
            .expect("subscribed");
        Self {
            consumer,
            decoder: Decoder::new(Registry::new(&kafka.schema_registry_url)),
            events: Vec::new(),
        }
    }

    /// Reads until `orders` each have their three events (created, assigned, delivered).
    async fn until_delivered(&mut self, orders: &HashSet<Uuid>) {
        let deadline = Instant::now() + WAIT;
        let done = |events: &[DeliveryEvent]| {
            let delivered: HashSet<Uuid> = events
                .iter()
                .filter(|e| e.kind == DeliveryEventKind::PackageDelivered)
                .map(|e| e.order_id)
                .collect();
            delivered == *orders
        };
        while !done(&self.events) {
            let message = tokio::time::timeout_at(deadline, self.consumer.recv())
                .await
                .expect("every package's events in time")
                .expect("consumer");
            let event = self
                .decoder
                .decode(message.payload().unwrap())
                .await
                .expect("decodes");
            if orders.contains(&event.order_id) {
                self.events.push(event);
            }
        }
    }
}

/// When an agent took a package, and when it delivered it.
type Trip = (DateTime<Utc>, DateTime<Utc>);

/// A package as the delivery database has it.
#[derive(Debug, Clone, sqlx::FromRow)]
struct PackageRow {
    id: Uuid,
    order_id: Uuid,
    status: String,
    agent_id: Option<Uuid>,
    assigned_at: Option<DateTime<Utc>>,
    delivered_at: Option<DateTime<Utc>>,
}

#[tokio::test(flavor = "multi_thread")]
async fn ten_packages_three_agents_never_two_packages_on_one_agent() {
    let _shared = crate::helpers::shared_delivery_topics().await;
    let mut settings = people_settings();
    apply_catalogue(&settings.kafka).await;
    start_groups_at_end(&settings).await;
    let mut events = DeliveryEvents::from_end(&settings.kafka).await;

    let shop = Shop::start_with(settings.clone()).await;
    settings = shop.settings.clone();
    settings.delivery_orders_url = shop.orders.address.clone();
    let cleanup = Cleanup::new(&settings);
    let users = Running::start(&settings, Service::Users).await;
    // Two instances, one database and one consumer group: two dispatchers compete.
    let delivery = [
        Running::start(&settings, Service::Delivery).await,
        Running::start(&settings, Service::Delivery).await,
    ];
    let client = Client::default();
    let pool = delivery[0].pool.clone();

    let mut agents = Vec::new();
    for n in 0..AGENTS {
        let (status, agent) = client
            .post(
                &format!("{}/users", users.address),
                &user_body(n, "DELIVERY_AGENT"),
            )
            .await;
        assert_eq!(status, StatusCode::CREATED, "{agent}");
        agents.push(agent["id"].as_str().unwrap().parse::<Uuid>().unwrap());
    }
    testkit::eventually("the delivery service knows the agents", WAIT, || {
        let pool = pool.clone();
        async move {
            let count: i64 =
                sqlx::query_scalar("SELECT count(*) FROM agents WHERE status = 'FREE'")
                    .fetch_one(&pool)
                    .await
                    .unwrap();
            count == AGENTS as i64
        }
    })
    .await;

    let product = shop.product(PACKAGES as i64).await;
    let mut orders = Vec::new();
    for _ in 0..PACKAGES {
        let (status, order) = shop.order(7, product, 1).await;
        assert_eq!(status, StatusCode::CREATED, "{order}");
        orders.push(order["id"].as_str().unwrap().to_owned());
    }
    let shipped = join_all(orders.iter().map(|id| shop.set_status(id, "Shipped"))).await;
    for (status, order) in shipped {
        assert_eq!(status, StatusCode::OK, "{order}");
    }
    let order_ids: HashSet<Uuid> = orders.iter().map(|o| o.parse().unwrap()).collect();

    // Before anything is delivered: three packages on the road, seven queued.
    testkit::eventually("three packages assigned, seven queued", WAIT, || {
        let pool = pool.clone();
        async move {
            let counts: Vec<(String, i64)> = sqlx::query_as(
                "SELECT status, count(*) FROM packages GROUP BY status ORDER BY status",
            )
            .fetch_all(&pool)
            .await
            .unwrap();
            let assigned = counts
                .iter()
                .find(|(s, _)| s == "ASSIGNED")
                .map_or(0, |c| c.1);
            assert!(assigned <= AGENTS as i64, "{counts:?}");
            counts
                == [
                    ("ASSIGNED".to_owned(), AGENTS as i64),
                    ("QUEUED".to_owned(), (PACKAGES - AGENTS) as i64),
                ]
        }
    })
    .await;

    // Agents deliver whatever they carry, until every package is delivered.
    let deadline = Instant::now() + WAIT;
    loop {
        let rows: Vec<PackageRow> = sqlx::query_as(
            "SELECT id, order_id, status, agent_id, assigned_at, delivered_at FROM packages",
        )
        .fetch_all(&pool)
        .await
        .unwrap();
        let open: Vec<&PackageRow> = rows.iter().filter(|p| p.status == "ASSIGNED").collect();
        assert!(open.len() <= AGENTS, "{open:?}");
        if rows.len() == PACKAGES && rows.iter().all(|p| p.status == "DELIVERED") {
            break;
        }
        assert!(Instant::now() < deadline, "packages left: {rows:?}");
        let delivered = join_all(open.iter().enumerate().map(|(i, p)| {
            let (client, url) = (
                client.clone(),
                format!("{}/packages/{}/delivery", delivery[i % 2].address, p.id),
            );
            async move { client.post(&url, &json!({})).await }
        }))
        .await;
        for (status, package) in delivered {
            assert_eq!(status, StatusCode::OK, "{package}");
            assert_eq!(package["status"], "DELIVERED");
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }

    // One package per agent at a time: an agent's packages were carried one after another.
    let rows: Vec<PackageRow> = sqlx::query_as(
        "SELECT id, order_id, status, agent_id, assigned_at, delivered_at FROM packages",
    )
    .fetch_all(&pool)
    .await
    .unwrap();
    let mut carried: HashMap<Uuid, Vec<Trip>> = HashMap::new();
    for row in &rows {
        assert!(order_ids.contains(&row.order_id));
        carried
            .entry(row.agent_id.unwrap())
            .or_default()
            .push((row.assigned_at.unwrap(), row.delivered_at.unwrap()));
    }
    assert!(carried.keys().all(|a| agents.contains(a)));
    for (agent, trips) in &mut carried {
        trips.sort();
        for pair in trips.windows(2) {
            assert!(
                pair[0].1 < pair[1].0,
                "agent {agent} got a package before delivering the last: {trips:?}"
            );
        }
    }
    let free: i64 = sqlx::query_scalar(
        "SELECT count(*) FROM agents WHERE status = 'FREE' AND package_id IS NULL",
    )
    .fetch_one(&pool)
    .await
    .unwrap();
    assert_eq!(free, AGENTS as i64, "every agent is FREE again");

    // Every step was an event: created, assigned, delivered, per package, in that order.
    events.until_delivered(&order_ids).await;
    let mut fold = testkit::fold::Fold::default();
    for event in &events.events {
        fold.push(&event.package_id.to_string(), &event.event_id.to_string());
    }
    assert_eq!(fold.len(), PACKAGES);
    assert_eq!(fold.events(), PACKAGES * 3);
    for package in rows.iter().map(|r| r.id) {
        let kinds: Vec<DeliveryEventKind> = events
            .events
            .iter()
            .filter(|e| e.package_id == package)
            .map(|e| e.kind)
            .collect();
        assert_eq!(
            kinds,
            [
                DeliveryEventKind::PackageCreated,
                DeliveryEventKind::PackageAssigned,
                DeliveryEventKind::PackageDelivered
            ]
        );
    }

    // The orders are Delivered; the read models and the users service agree.
    for id in &orders {
        testkit::eventually("the order is Delivered", WAIT, || async {
            let (_, order) = client.get(&shop.orders_url(&format!("/orders/{id}"))).await;
            order["status"] == "Delivered"
        })
        .await;
    }
    for row in &rows {
        let url = format!("{}/packages/{}", delivery[1].address, row.id);
        testkit::eventually("the package read model has the delivery", WAIT, || async {
            let (status, package) = client.get(&url).await;
            status == StatusCode::OK
                && package["status"] == "DELIVERED"
                && package["history"]["events"] == 3
                && package["agentId"] == json!(row.agent_id)
        })
        .await;
    }
    let mut total = 0;
    for agent in &agents {
        let (status, list) = client
            .get(&format!(
                "{}/deliveries?agentId={agent}",
                delivery[0].address
            ))
            .await;
        assert_eq!(status, StatusCode::OK, "{list}");
        let list = list.as_array().unwrap();
        assert_eq!(list.len(), carried.get(agent).map_or(0, Vec::len));
        total += list.len();
        let url = format!("{}/users/{agent}", users.address);
        testkit::eventually("the users service reports the agent FREE", WAIT, || async {
            let (_, user) = client.get(&url).await;
            user["deliveryAgentStatus"] == "FREE"
        })
        .await;
    }
    assert_eq!(total, PACKAGES);

    // Bad input.
    let base = &delivery[0].address;
    assert_error(
        &client.get(&format!("{base}/packages/nope")).await,
        StatusCode::BAD_REQUEST,
        "package id must be a UUID",
    );
    assert_error(
        &client
            .get(&format!("{base}/packages/{}", Uuid::new_v4()))
            .await,
        StatusCode::NOT_FOUND,
        "no package",
    );
    assert_error(
        &client.get(&format!("{base}/deliveries")).await,
        StatusCode::BAD_REQUEST,
        "agentId is required",
    );
    assert_error(
        &client.get(&format!("{base}/deliveries?agent=1")).await,
        StatusCode::BAD_REQUEST,
        "unknown parameter",
    );
    let again = client
        .post(
            &format!("{base}/packages/{}/delivery", rows[0].id),
            &json!({}),
        )
        .await;
    assert_eq!(
        again.0,
        StatusCode::OK,
        "delivering twice answers the delivery"
    );

    for instance in delivery {
        instance.stop().await;
    }
    users.stop().await;
    shop.stop().await;
    drop_people(&settings).await;
    cleanup.disarm();
}
