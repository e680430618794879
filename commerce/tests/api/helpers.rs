use std::future::Future;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use commerce::configuration::Settings;
use commerce::startup::Application;
use commerce::Service;
use rdkafka::consumer::{Consumer, StreamConsumer};
use rdkafka::{Offset, TopicPartitionList};
use reqwest::StatusCode;
use serde_json::{json, Value};
use sqlx::{Connection, PgConnection, PgPool};
use tokio::sync::oneshot;
use tokio::task::JoinHandle;
use topics::spec::TopicSpec;

/// Settings from the environment with databases of the test's own, ephemeral ports and no
/// seed.
/// `topic`'s high watermarks now, as offsets: a consumer assigned them (or a group that
/// committed them) follows only what comes next, not the other tests' earlier records.
pub fn end_offsets(consumer: &StreamConsumer, topic: &TopicSpec) -> TopicPartitionList {
    let mut offsets = TopicPartitionList::new();
    for partition in 0..topic.partitions {
        let (_, high) = consumer
            .fetch_watermarks(topic.name, partition, Duration::from_secs(10))
            .expect("watermarks");
        offsets
            .add_partition_offset(topic.name, partition, Offset::Offset(high))
            .unwrap();
    }
    offsets
}

/// Held by the tests that put Shipped orders or delivery agents on the shared
/// `commerce.order-events` / `commerce.user-events` topics, or run a delivery service that
/// follows them: a delivery service turns every Shipped order it reads into a package and
/// every agent into a courier, so another test's, read meanwhile, breaks the delivery test's
/// exact counts (seen: an agent created by the users test made four FREE agents of three).
pub async fn shared_delivery_topics() -> tokio::sync::MutexGuard<'static, ()> {
    static LOCK: std::sync::LazyLock<tokio::sync::Mutex<()>> =
        std::sync::LazyLock::new(|| tokio::sync::Mutex::new(()));
    LOCK.lock().await
}

pub fn test_settings() -> Settings {
    if std::env::var_os("TEST_LOG").is_some() {
        let _log = commerce::telemetry::init();
    }
    let mut settings = commerce::configuration::load().expect("settings load");
    settings.products_database = testkit::unique("commerce_test_products");
    settings.customers_database = testkit::unique("commerce_test_customers");
    settings.orders_database = testkit::unique("commerce_test_orders");
    settings.reviews_database = testkit::unique("commerce_test_reviews");
    for addr in [
        &mut settings.products_listen_addr,
        &mut settings.customers_listen_addr,
        &mut settings.orders_listen_addr,
        &mut settings.reviews_listen_addr,
    ] {
        *addr = "127.0.0.1:0".to_owned();
    }
    settings.commerce_seed = false;
    settings
}

/// One service running in this process.
pub struct Running {
    pub address: String,
    pub pool: PgPool,
    pub seeded: bool,
    stop: Option<oneshot::Sender<()>>,
    task: Option<JoinHandle<anyhow::Result<()>>>,
}

impl Running {
    pub async fn start(settings: &Settings, service: Service) -> Self {
        let app = Application::build(settings.clone(), service)
            .await
            .expect("service builds");
        let address = format!("http://127.0.0.1:{}", app.port());
        let pool = app.pool().clone();
        let seeded = app.seeded();
        let (stop, stopped) = oneshot::channel();
        let task = tokio::spawn(app.run_until(async {
            let _ = stopped.await;
        }));
        Self {
            address,
            pool,
            seeded,
            stop: Some(stop),
            task: Some(task),
        }
    }

    pub async fn stop(mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        if let Some(task) = self.task.take() {
            task.await.expect("service task").expect("service served");
        }
    }
}

/// Products and orders, wired to each other.
pub struct Shop {
    pub settings: Settings,
    pub products: Running,
    pub orders: Running,
    pub client: Client,
}

impl Shop {
    pub async fn start() -> Self {
        Self::start_with(test_settings()).await
    }

    pub async fn start_with(mut settings: Settings) -> Self {
        let products = Running::start(&settings, Service::Products).await;
        settings.orders_products_url = products.address.clone();
        let orders = Running::start(&settings, Service::Orders).await;
        Self {
            settings,
            products,
            orders,
            client: Client::default(),
        }
    }

    pub fn products_url(&self, path: &str) -> String {
        format!("{}{path}", self.products.address)
    }

    pub fn orders_url(&self, path: &str) -> String {
        format!("{}{path}", self.orders.address)
    }

    /// Creates a product with `stock`; returns its id.
    pub async fn product(&self, stock: i64) -> i64 {
        let (status, body) = self
            .client
            .post(
                &self.products_url("/products"),
                &product_body("Test product", stock),
            )
            .await;
        assert_eq!(status, StatusCode::CREATED, "{body}");
        body["id"].as_i64().unwrap()
    }

    pub async fn stock(&self, product: i64) -> i64 {
        let (status, body) = self
            .client
            .get(&self.products_url(&format!("/products/{product}")))
            .await;
        assert_eq!(status, StatusCode::OK, "{body}");
        body["stock"].as_i64().unwrap()
    }

    pub async fn order(&self, customer: i64, product: i64, quantity: i64) -> (StatusCode, Value) {
        self.client
            .post(
                &self.orders_url("/orders"),
                &order_body(customer, product, quantity),
            )
            .await
    }

    pub async fn set_status(&self, id: &str, status: &str) -> (StatusCode, Value) {
        self.client
            .put(
                &self.orders_url(&format!("/orders/{id}/status")),
                &json!({ "status": status }),
            )
            .await
    }

    pub async fn stop(self) {
        self.orders.stop().await;
        self.products.stop().await;
        drop_databases(&self.settings).await;
    }
}

pub fn product_body(name: &str, stock: i64) -> Value {
    json!({ "name": name, "description": "for a test", "price": 12.5, "stock": stock })
}

pub fn order_body(customer: i64, product: i64, quantity: i64) -> Value {
    json!({ "customerId": customer, "productId": product, "quantity": quantity })
}

/// A JSON client whose answers are (status, body).
#[derive(Clone, Default)]
pub struct Client {
    pub http: reqwest::Client,
}

impl Client {
    async fn send(request: reqwest::RequestBuilder) -> (StatusCode, Value) {
        let response = request.send().await.expect("request sent");
        let status = response.status();
        let text = response.text().await.expect("body read");
        let body = if text.is_empty() {
            Value::Null
        } else {
            serde_json::from_str(&text).unwrap_or_else(|_| panic!("{status}: not JSON: {text}"))
        };
        (status, body)
    }

    pub async fn get(&self, url: &str) -> (StatusCode, Value) {
        Self::send(self.http.get(url)).await
    }

    pub async fn post(&self, url: &str, body: &Value) -> (StatusCode, Value) {
        Self::send(self.http.post(url).json(body)).await
    }

    pub async fn put(&self, url: &str, body: &Value) -> (StatusCode, Value) {
        Self::send(self.http.put(url).json(body)).await
    }

    /// A raw body with a JSON content type (for malformed JSON).
    pub async fn send_raw(
        &self,
        method: reqwest::Method,
        url: &str,
        body: &str,
    ) -> (StatusCode, Value) {
        Self::send(
            self.http
                .request(method, url)
                .header("content-type", "application/json")
                .body(body.to_owned()),
        )
        .await
    }
}

/// Asserts a 4xx JSON error whose message mentions `needle`.
pub fn assert_error(answer: &(StatusCode, Value), status: StatusCode, needle: &str) {
    assert_eq!(answer.0, status, "{}", answer.1);
    let message = answer.1["error"].as_str().unwrap_or_default();
    assert!(
        message.contains(needle),
        "error {message:?} does not mention {needle:?}"
    );
}

/// Drops every database of these settings.
pub async fn drop_databases(settings: &Settings) {
    let mut server = PgConnection::connect_with(&settings.server_options().unwrap())
        .await
        .expect("server connects");
    for name in [
        &settings.products_database,
        &settings.customers_database,
        &settings.orders_database,
        &settings.reviews_database,
    ] {
        sqlx::query(&format!("DROP DATABASE IF EXISTS \"{name}\" WITH (FORCE)"))
            .execute(&mut server)
            .await
            .expect("test database dropped");
    }
}

/// Runs `body` with one service started alone, then stops it and drops the databases.
pub async fn with_service<F, Fut>(service: Service, body: F)
where
    F: FnOnce(String, Client) -> Fut,
    Fut: Future<Output = ()>,
{
    let settings = test_settings();
    let running = Running::start(&settings, service).await;
    body(running.address.clone(), Client::default()).await;
    running.stop().await;
    drop_databases(&settings).await;
}

/// A commerce service in a process of its own (`commerce <service>`, so its metrics
/// registry and trace service name are its own), configured from `settings` (databases,
/// URLs, read models, groups; a free port), plus `env`. Stopped on drop: SIGTERM (the relay
/// ends its Kafka transaction), SIGKILL if it has not stopped within 10 s.
pub struct Process {
    pub base_url: String,
    child: Child,
}

impl Process {
    /// Starts it and waits until `GET /health` answers.
    pub async fn start(service: &str, settings: &Settings, env: &[(&str, String)]) -> Self {
        let port = testkit::free_port();
        let s = settings;
        let names = [
            ("PRODUCTS_DATABASE", &s.products_database),
            ("CUSTOMERS_DATABASE", &s.customers_database),
            ("ORDERS_DATABASE", &s.orders_database),
            ("REVIEWS_DATABASE", &s.reviews_database),
            ("USERS_DATABASE", &s.users_database),
            ("DELIVERY_DATABASE", &s.delivery_database),
            ("USERS_CHANGES_TOPIC", &s.users_changes_topic),
            ("USERS_READ_MODEL", &s.users_read_model),
            ("USERS_GROUP", &s.users_group),
            ("DELIVERY_READ_MODEL", &s.delivery_read_model),
            ("DELIVERY_GROUP", &s.delivery_group),
            ("DELIVERY_ORDERS_URL", &s.delivery_orders_url),
            ("ORDERS_PRODUCTS_URL", &s.orders_products_url),
            ("MYSQL_URL", &s.mysql_url),
            ("POSTGRES_URL", &s.postgres_url),
            ("KAFKA_BOOTSTRAP_SERVERS", &s.kafka.kafka_bootstrap_servers),
            ("SCHEMA_REGISTRY_URL", &s.kafka.schema_registry_url),
        ];
        let child = Command::new(env!("CARGO_BIN_EXE_commerce"))
            .arg(service)
            .envs(names)
            .env(
                format!("{}_LISTEN_ADDR", service.to_uppercase()),
                format!("127.0.0.1:{port}"),
            )
            .env("COMMERCE_SEED", s.commerce_seed.to_string())
            .env("RUST_LOG", "warn")
            .envs(env.iter().map(|(k, v)| (k, v)))
            .stdout(Stdio::null())
            .spawn()
            .expect("the commerce binary starts");
        let process = Self {
            base_url: format!("http://127.0.0.1:{port}"),
            child,
        };
        let health = format!("{}/health", process.base_url);
        testkit::eventually(
            &format!("commerce {service} answers {health}"),
            Duration::from_secs(60),
            || {
                let health = health.clone();
                async move {
                    reqwest::get(&health)
                        .await
                        .is_ok_and(|r| r.status().is_success())
                }
            },
        )
        .await;
        process
    }
}

impl Drop for Process {
    fn drop(&mut self) {
        let _ = Command::new("kill")
            .args(["-TERM", &self.child.id().to_string()])
            .status();
        for _ in 0..100 {
            if matches!(self.child.try_wait(), Ok(Some(_))) {
                return;
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
