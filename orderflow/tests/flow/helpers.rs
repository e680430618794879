use std::process::Stdio;
use std::time::Duration;

use commerce::startup::Application;
use commerce::Service;
use orderflow::configuration::Settings;
use orderflow::payments::{Behaviour, Payments};
use reqwest::StatusCode;
use serde_json::{json, Value};
use sqlx::{Connection, PgConnection, PgPool};
use tokio::process::{Child, Command};
use tokio::sync::oneshot;
use tokio::task::JoinHandle;
use topics::commerce::OrderEvent;
use topics::events::Event;
use topics::groups::ResetTarget;
use uuid::Uuid;

pub const WAIT: Duration = Duration::from_secs(90);

fn init_logs() {
    if std::env::var_os("TEST_LOG").is_some() {
        let _logs = orderflow::telemetry::init("test");
    }
}

/// One commerce service running in this process.
pub struct Running {
    pub address: String,
    stop: Option<oneshot::Sender<()>>,
    task: Option<JoinHandle<anyhow::Result<()>>>,
}

impl Running {
    async fn start(settings: &commerce::configuration::Settings, service: Service) -> Self {
        let app = Application::build(settings.clone(), service)
            .await
            .expect("service builds");
        let address = format!("http://127.0.0.1:{}", app.port());
        let (stop, stopped) = oneshot::channel();
        let task = tokio::spawn(app.run_until(async {
            let _ = stopped.await;
        }));
        Self {
            address,
            stop: Some(stop),
            task: Some(task),
        }
    }

    async fn stop(mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        if let Some(task) = self.task.take() {
            let _ = task.await;
        }
    }
}

/// Products, customers and orders (with their outbox relays), on databases of their own.
pub struct Shop {
    pub settings: commerce::configuration::Settings,
    pub products: Running,
    pub customers: Running,
    pub orders: Running,
    pub http: reqwest::Client,
}

impl Shop {
    pub async fn start() -> Self {
        init_logs();
        let mut settings = commerce::configuration::load().expect("commerce settings");
        settings.products_database = testkit::unique("orderflow_test_products");
        settings.customers_database = testkit::unique("orderflow_test_customers");
        settings.orders_database = testkit::unique("orderflow_test_orders");
        settings.products_listen_addr = "127.0.0.1:0".to_owned();
        settings.customers_listen_addr = "127.0.0.1:0".to_owned();
        settings.orders_listen_addr = "127.0.0.1:0".to_owned();
        settings.commerce_seed = false;
        let products = Running::start(&settings, Service::Products).await;
        settings.orders_products_url = products.address.clone();
        let customers = Running::start(&settings, Service::Customers).await;
        let orders = Running::start(&settings, Service::Orders).await;
        Self {
            settings,
            products,
            customers,
            orders,
            http: reqwest::Client::new(),
        }
    }

    async fn send(&self, request: reqwest::RequestBuilder) -> (StatusCode, Value) {
        let response = request.send().await.expect("request sent");
        let status = response.status();
        let text = response.text().await.expect("body");
        (status, serde_json::from_str(&text).unwrap_or(Value::Null))
    }

    /// A product of `stock` items at 12.50; its id.
    pub async fn product(&self, stock: i64) -> i64 {
        let (status, body) = self
            .send(self.http.post(format!("{}/products", self.products.address)).json(
                &json!({ "name": "Chair", "description": "", "price": 12.5, "stock": stock }),
            ))
            .await;
        assert_eq!(status, StatusCode::CREATED, "{body}");
        body["id"].as_i64().unwrap()
    }

    pub async fn set_stock(&self, product: i64, stock: i64) {
        let (status, body) = self
            .send(
                self.http
                    .put(format!("{}/products/{product}", self.products.address))
                    .json(&json!({ "name": "Chair", "description": "", "price": 12.5, "stock": stock })),
            )
            .await;
        assert_eq!(status, StatusCode::OK, "{body}");
    }

    pub async fn stock(&self, product: i64) -> i64 {
        let (status, body) = self
            .send(
                self.http
                    .get(format!("{}/products/{product}", self.products.address)),
            )
            .await;
        assert_eq!(status, StatusCode::OK, "{body}");
        body["stock"].as_i64().unwrap()
    }

    /// A customer; its id.
    pub async fn customer(&self) -> i64 {
        let (status, body) = self
            .send(
                self.http
                    .post(format!("{}/customers", self.customers.address))
                    .json(&json!({ "name": "Ada", "email": "ada@example.com", "tier": "Gold" })),
            )
            .await;
        assert_eq!(status, StatusCode::CREATED, "{body}");
        body["id"].as_i64().unwrap()
    }

    /// Places an order; its id.
    pub async fn order(&self, customer: i64, product: i64, quantity: i64) -> Uuid {
        let (status, body) = self
            .send(self.http.post(format!("{}/orders", self.orders.address)).json(
                &json!({ "customerId": customer, "productId": product, "quantity": quantity }),
            ))
            .await;
        assert_eq!(status, StatusCode::CREATED, "{body}");
        body["id"].as_str().unwrap().parse().unwrap()
    }

    pub async fn order_status(&self, order: Uuid) -> String {
        let (status, body) = self
            .send(
                self.http
                    .get(format!("{}/orders/{order}", self.orders.address)),
            )
            .await;
        assert_eq!(status, StatusCode::OK, "{body}");
        body["status"].as_str().unwrap().to_owned()
    }

    pub async fn cancel(&self, order: Uuid) {
        let (status, body) = self
            .send(
                self.http
                    .put(format!("{}/orders/{order}/status", self.orders.address))
                    .json(&json!({ "status": "Cancelled" })),
            )
            .await;
        assert_eq!(status, StatusCode::OK, "{body}");
    }

    pub async fn stop(self) {
        let names = [
            self.settings.products_database.clone(),
            self.settings.customers_database.clone(),
            self.settings.orders_database.clone(),
        ];
        self.orders.stop().await;
        self.customers.stop().await;
        self.products.stop().await;
        drop_databases(&names).await;
    }
}

pub async fn drop_databases(names: &[String]) {
    let mut server = PgConnection::connect(&testkit::env::postgres_url())
        .await
        .expect("server connects");
    for name in names {
        sqlx::query(&format!("DROP DATABASE IF EXISTS \"{name}\" WITH (FORCE)"))
            .execute(&mut server)
            .await
            .expect("test database dropped");
    }
}

/// The order flow's settings for a test: databases, groups and files of its own, wired to
/// `shop`, each consumer group starting at the end of the order events topic.
pub async fn flow_settings(shop: &Shop) -> Settings {
    let mut settings = orderflow::configuration::load().expect("orderflow settings");
    settings.orderflow_database = testkit::unique("orderflow_test_flow");
    settings.payments_database = testkit::unique("orderflow_test_payments");
    settings.loyalty_database = testkit::unique("orderflow_test_loyalty");
    settings.customers_url = shop.customers.address.clone();
    settings.products_url = shop.products.address.clone();
    settings.orders_url = shop.orders.address.clone();
    let dir = std::env::temp_dir().join(testkit::unique("orderflow_test"));
    settings.mail_log = dir.join("mail.log");
    settings.audit_dir = dir.join("audit");
    settings.saga_group = testkit::unique("orderflow_test_saga");
    settings.loyalty_group = testkit::unique("orderflow_test_loyalty");
    settings.audit_group = testkit::unique("orderflow_test_audit");
    settings.saga_poll_ms = 50;
    settings.retry_max_backoff_ms = 300;
    for group in [
        &settings.saga_group,
        &settings.loyalty_group,
        &settings.audit_group,
    ] {
        start_at_end(&settings, group).await;
    }
    settings
}

/// Commits the group's offsets at the end of the order events topic, so it reads only what
/// this test produces (the topic is shared with every other test).
pub async fn start_at_end(settings: &Settings, group: &str) {
    let kafka = settings.kafka.clone();
    let group = group.to_owned();
    tokio::task::spawn_blocking(move || {
        topics::groups::reset(
            &kafka,
            &group,
            Some(OrderEvent::TOPIC.name),
            ResetTarget::Latest,
        )
    })
    .await
    .unwrap()
    .expect("group starts at the end");
}

/// The group's remaining lag on the order events topic (`None` before its first commit).
pub async fn lag(settings: &Settings, group: &str) -> Option<i64> {
    let kafka = settings.kafka.clone();
    let group = group.to_owned();
    tokio::task::spawn_blocking(move || {
        topics::groups::lag(&kafka, &group, Some(OrderEvent::TOPIC.name))
            .ok()
            .map(|lags| lags.iter().map(|l| l.lag).sum())
    })
    .await
    .unwrap()
}

pub async fn cleanup(settings: &Settings) {
    drop_databases(&[
        settings.orderflow_database.clone(),
        settings.payments_database.clone(),
        settings.loyalty_database.clone(),
    ])
    .await;
    if let Some(dir) = settings.mail_log.parent() {
        let _ = std::fs::remove_dir_all(dir);
    }
}

/// An order flow component as a child process.
pub struct Component {
    pub child: Child,
    pub name: &'static str,
}

impl Component {
    pub fn start(name: &'static str, settings: &Settings, extra: &[(&str, &str)]) -> Self {
        let child = Command::new(env!("CARGO_BIN_EXE_orderflow"))
            .arg(name)
            .env_clear()
            .env("PATH", std::env::var("PATH").unwrap_or_default())
            .envs(settings.environment())
            .envs(extra.iter().map(|(k, v)| (k.to_string(), v.to_string())))
            .env(
                "RUST_LOG",
                std::env::var("TEST_LOG").unwrap_or_else(|_| "error".to_owned()),
            )
            .stdout(Stdio::null())
            .stderr(Stdio::inherit())
            .kill_on_drop(true)
            .spawn()
            .expect("component starts");
        Self { child, name }
    }

    /// `kill -9`.
    pub async fn kill(mut self) {
        self.child.kill().await.expect("killed");
    }

    /// Waits for the process to end by itself (a crash hook); its exit status.
    pub async fn exited(mut self) -> std::process::ExitStatus {
        tokio::time::timeout(WAIT, self.child.wait())
            .await
            .unwrap_or_else(|_| panic!("{} did not exit", self.name))
            .expect("wait")
    }
}

/// A payment provider in this process.
pub struct Provider {
    pub pool: PgPool,
    task: JoinHandle<anyhow::Result<()>>,
}

impl Provider {
    pub async fn start(settings: &mut Settings, behaviour: Behaviour) -> Self {
        settings.payments_listen_addr = "127.0.0.1:0".to_owned();
        let mut payments = Payments::build(settings).await.expect("payments build");
        payments.behaviour = behaviour;
        settings.payments_url = format!("http://127.0.0.1:{}", payments.port());
        let pool = payments.pool.clone();
        let task = tokio::spawn(payments.serve(std::future::pending()));
        Self { pool, task }
    }

    pub fn stop(self) {
        self.task.abort();
    }
}

pub fn flaky(decline_rate: f64) -> Behaviour {
    Behaviour {
        latency: Duration::from_millis(5),
        decline_rate,
        error_rate: 0.2,
    }
}

/// The saga's database, created and migrated (as the saga process would).
pub async fn saga_pool(settings: &Settings) -> PgPool {
    outbox::database::prepare(
        &settings.server_options().unwrap(),
        &settings.orderflow_database,
        &orderflow::saga::MIGRATOR,
        4,
    )
    .await
    .expect("saga database")
}

/// Records the end of the order events topic as applied in the tracking read model's store,
/// so its projector folds only what this test produces (the topic is shared with every
/// other test, and the store, not Kafka, says where a partition starts).
/// Returns the store and the first offset per partition it will fold.
pub async fn tracking_from_end(
    settings: &Settings,
) -> (
    orderflow::tracking::TrackingStore,
    std::collections::HashMap<i32, i64>,
) {
    use projectors::store::{PartitionBatch, Store};
    use rdkafka::consumer::{BaseConsumer, Consumer};

    let store = orderflow::tracking::TrackingStore::connect(settings)
        .await
        .expect("tracking store");
    let kafka = settings.kafka.clone();
    let ends: Vec<(i32, i64)> = tokio::task::spawn_blocking(move || {
        let consumer: BaseConsumer = topics::kafka::consumer_config(&kafka, "orderflow-test-ends")
            .create()
            .expect("consumer");
        let metadata = consumer
            .fetch_metadata(Some(OrderEvent::TOPIC.name), WAIT)
            .expect("metadata");
        metadata.topics()[0]
            .partitions()
            .iter()
            .map(|p| {
                let (_, high) = consumer
                    .fetch_watermarks(OrderEvent::TOPIC.name, p.id(), WAIT)
                    .expect("watermarks");
                (p.id(), high)
            })
            .collect()
    })
    .await
    .unwrap();
    for &(partition, high) in ends.iter().filter(|(_, high)| *high > 0) {
        store
            .write(&PartitionBatch {
                topic: OrderEvent::TOPIC.name.to_owned(),
                partition,
                expected_offset: None,
                last_offset: high - 1,
                changes: Vec::new(),
            })
            .await
            .expect("start offset recorded");
    }
    (store, ends.into_iter().collect())
}
