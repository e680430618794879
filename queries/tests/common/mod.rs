//! The real stack for the queries' tests: the four commerce services (each its own database,
//! created by the service's migrations), a connector per database, and the `queries` engine,
//! every one a child process under names and ports of this test alone; plus an oracle that
//! computes each query's answer with SQL over the source databases.
#![allow(dead_code)]

use std::collections::HashMap;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use queries::avro::Schemas;
use queries::declared;
use queries::query::Query;
use queries::results::{self, Op, ResultChange};
use queries::row::{Cell, Row};
use sqlx::postgres::PgPoolOptions;
use sqlx::{PgPool, Row as _};
use topics::registry::Registry;
use topics::settings::KafkaSettings;

pub const SERVICES: [&str; 4] = ["products", "customers", "orders", "reviews"];

fn target_dir() -> PathBuf {
    std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../target"))
}

/// A binary of another workspace crate (built by `scripts/test`'s workspace build; built here
/// when it is missing).
fn workspace_bin(name: &str) -> PathBuf {
    let path = target_dir().join("debug").join(name);
    if !path.exists() {
        let status = Command::new(env!("CARGO"))
            .args(["build", "--quiet", "-p", name, "--bin", name])
            .current_dir(concat!(env!("CARGO_MANIFEST_DIR"), "/.."))
            .status()
            .expect("cargo build runs");
        assert!(status.success(), "building {name}");
    }
    path
}

/// A child process killed (SIGKILL) when dropped; its stderr in a file, shown if the test fails.
pub struct Proc {
    pub name: String,
    child: Child,
    log: PathBuf,
}

impl Proc {
    fn spawn(name: &str, mut cmd: Command) -> Self {
        let log = std::env::temp_dir().join(format!("{}.log", testkit::unique(name)));
        let file = std::fs::File::create(&log).expect("log file");
        cmd.env_remove("COMMERCE_CONFIG")
            .env_remove("CONNECTOR_CONFIG")
            .env_remove("QUERIES_CONFIG")
            .stdout(Stdio::null())
            .stderr(file);
        let child = cmd.spawn().unwrap_or_else(|e| panic!("spawn {name}: {e}"));
        Self {
            name: name.to_owned(),
            child,
            log,
        }
    }

    pub fn kill9(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    pub fn exited(&mut self) -> bool {
        matches!(self.child.try_wait(), Ok(Some(_)))
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        self.kill9();
        if std::thread::panicking() {
            let log = self.log();
            let tail: Vec<&str> = log.lines().rev().take(40).collect();
            eprintln!("--- {} (last lines)", self.name);
            for line in tail.iter().rev() {
                eprintln!("{line}");
            }
        }
        let _ = std::fs::remove_file(&self.log);
    }
}

/// Everything one test runs on.
pub struct Stack {
    pub prefix: String,
    pub kafka: KafkaSettings,
    pub pools: HashMap<&'static str, PgPool>,
    pub urls: HashMap<&'static str, String>,
    pub services: Vec<Proc>,
    pub connectors: Vec<Proc>,
    pub engine: Option<Proc>,
    pub engine_env: Vec<(String, String)>,
    /// The engine's `GET /metrics` base URL (`QUERIES_METRICS_ADDR`, a free port).
    pub engine_metrics: String,
    pub schemas: Schemas,
    admin_url: String,
    databases: Vec<String>,
    slots: Vec<String>,
}

impl Stack {
    /// Services and connectors up, result contracts registered for this test's topics; the
    /// engine not yet (see [`Stack::start_engine`]).
    pub async fn start(engine_env: &[(&str, &str)]) -> Self {
        let prefix = testkit::unique("q");
        let admin_url = testkit::env::postgres_url();
        let kafka = KafkaSettings {
            kafka_bootstrap_servers: testkit::env::kafka_bootstrap(),
            schema_registry_url: testkit::env::registry_url(),
        };
        let registry = Registry::new(&kafka.schema_registry_url);
        for q in declared::ALL {
            let topic = format!("{prefix}.queries.{}", q.name);
            let history = q.history.map(|_| format!("{topic}.history"));
            for topic in std::iter::once(topic).chain(history) {
                registry
                    .register(
                        &topics::spec::value_subject(&topic),
                        q.topic.value_schema.unwrap(),
                    )
                    .await
                    .expect("register the result contract");
            }
        }
        let mut services = Vec::new();
        let mut urls = HashMap::new();
        let mut databases = Vec::new();
        let mut ports = HashMap::new();
        for service in SERVICES {
            let port = testkit::free_port();
            ports.insert(service, port);
            let database = format!("{prefix}_{service}");
            let upper = service.to_uppercase();
            let mut cmd = Command::new(workspace_bin("commerce"));
            cmd.arg(service)
                .env("POSTGRES_URL", &admin_url)
                .env("KAFKA_BOOTSTRAP_SERVERS", &kafka.kafka_bootstrap_servers)
                .env("SCHEMA_REGISTRY_URL", &kafka.schema_registry_url)
                .env(format!("{upper}_DATABASE"), &database)
                .env(format!("{upper}_LISTEN_ADDR"), format!("127.0.0.1:{port}"))
                .env("COMMERCE_POOL_SIZE", "4")
                .env("RUST_LOG", "warn");
            if service == "orders" {
                cmd.env(
                    "ORDERS_PRODUCTS_URL",
                    format!("http://127.0.0.1:{}", ports["products"]),
                );
            }
            services.push(Proc::spawn(&format!("commerce-{service}"), cmd));
            urls.insert(service, format!("http://127.0.0.1:{port}"));
            databases.push(database);
        }
        let http = reqwest::Client::new();
        for (service, url) in &urls {
            testkit::eventually(
                &format!("the {service} service answers"),
                Duration::from_secs(90),
                || {
                    let url = format!("{url}/health");
                    let http = http.clone();
                    async move {
                        http.get(url)
                            .send()
                            .await
                            .is_ok_and(|r| r.status().is_success())
                    }
                },
            )
            .await;
        }
        let mut pools = HashMap::new();
        let mut connectors = Vec::new();
        let mut slots = Vec::new();
        for (service, database) in SERVICES.iter().zip(&databases) {
            let url = testkit::env::with_database(&admin_url, database);
            pools.insert(
                *service,
                PgPoolOptions::new()
                    .max_connections(4)
                    .connect(&url)
                    .await
                    .expect("connect to a service's database"),
            );
            let slot = format!("{database}_slot");
            let mut cmd = Command::new(workspace_bin("connector"));
            cmd.args([
                "-c",
                concat!(
                    env!("CARGO_MANIFEST_DIR"),
                    "/../commerce/connector/products.toml"
                ),
            ])
            .current_dir(std::env::temp_dir())
            .env("POSTGRES_URL", &url)
            .env("KAFKA_BOOTSTRAP_SERVERS", &kafka.kafka_bootstrap_servers)
            .env("SCHEMA_REGISTRY_URL", &kafka.schema_registry_url)
            .env("CONNECTOR_NAME", format!("{prefix}.{service}"))
            .env("CONNECTOR_SLOT_NAME", &slot)
            .env("CONNECTOR_PUBLICATION_NAME", format!("{database}_pub"))
            .env("CONNECTOR_TABLES", format!("public.{service}"))
            .env(
                "CONNECTOR_OFFSETS_TOPIC",
                format!("{prefix}.connector-offsets"),
            )
            .env("CONNECTOR_LINGER_MS", "1")
            .env("RUST_LOG", "warn");
            connectors.push(Proc::spawn(&format!("connector-{service}"), cmd));
            slots.push(slot);
        }
        let engine_metrics = format!("127.0.0.1:{}", testkit::free_port());
        let mut env: Vec<(String, String)> = vec![
            (
                "KAFKA_BOOTSTRAP_SERVERS".into(),
                kafka.kafka_bootstrap_servers.clone(),
            ),
            (
                "SCHEMA_REGISTRY_URL".into(),
                kafka.schema_registry_url.clone(),
            ),
            ("QUERIES_TOPIC_PREFIX".into(), format!("{prefix}.queries")),
            (
                "QUERIES_TRANSACTIONAL_ID".into(),
                format!("{prefix}-engine"),
            ),
            ("QUERIES_TICK_MS".into(), "200".into()),
            (
                "QUERIES_DEAD_LETTER_TOPIC".into(),
                format!("{prefix}.queries.dead-letter"),
            ),
            ("QUERIES_METRICS_ADDR".into(), engine_metrics.clone()),
            ("RUST_LOG".into(), "info,rdkafka=warn".into()),
        ];
        for service in SERVICES {
            env.push((
                format!("QUERIES_{}_TOPIC", service.to_uppercase()),
                format!("{prefix}.{service}.public.{service}"),
            ));
        }
        for (k, v) in engine_env {
            env.push((k.to_string(), v.to_string()));
        }
        Self {
            schemas: Schemas::new(registry),
            prefix,
            kafka,
            pools,
            urls,
            services,
            connectors,
            engine: None,
            engine_env: env,
            engine_metrics: format!("http://{engine_metrics}"),
            admin_url,
            databases,
            slots,
        }
    }

    pub fn start_engine(&mut self) {
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_queries"));
        cmd.arg("run").envs(self.engine_env.iter().cloned());
        self.engine = Some(Proc::spawn("queries", cmd));
    }

    /// Starts `queries <command>` (a service reading this test's result topics) on a free
    /// port; returns its base URL once `/health` answers.
    pub async fn start_service(&mut self, command: &str, extra: &[(&str, String)]) -> String {
        let port = testkit::free_port();
        let upper = command.to_uppercase();
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_queries"));
        cmd.arg(command)
            .envs(self.engine_env.iter().cloned())
            .env(format!("{upper}_LISTEN_ADDR"), format!("127.0.0.1:{port}"));
        for (k, v) in extra {
            cmd.env(k, v);
        }
        self.services.push(Proc::spawn(command, cmd));
        let url = format!("http://127.0.0.1:{port}");
        let http = reqwest::Client::new();
        testkit::eventually(
            &format!("the {command} service answers"),
            Duration::from_secs(60),
            || {
                let url = format!("{url}/health");
                let http = http.clone();
                async move {
                    http.get(url)
                        .send()
                        .await
                        .is_ok_and(|r| r.status().is_success())
                }
            },
        )
        .await;
        url
    }

    /// kill -9 of the engine.
    pub fn kill_engine(&mut self) {
        if let Some(mut engine) = self.engine.take() {
            engine.kill9();
        }
    }

    pub fn pool(&self, service: &str) -> &PgPool {
        &self.pools[service]
    }

    pub fn url(&self, service: &str) -> &str {
        &self.urls[service]
    }

    pub fn result_topic(&self, query: &Query) -> String {
        format!("{}.queries.{}", self.prefix, query.name)
    }

    /// Every record on the engine's dead-letter topic so far: (key, reason header, source
    /// topic header).
    pub async fn dead_letters(&self) -> Vec<(String, String, String)> {
        use rdkafka::consumer::{BaseConsumer, Consumer};
        use rdkafka::message::{Headers, Message};
        let topic = format!("{}.queries.dead-letter", self.prefix);
        let kafka = self.kafka.clone();
        tokio::task::spawn_blocking(move || {
            let consumer: BaseConsumer = topics::kafka::consumer_config(&kafka, "queries-test-dl")
                .create()
                .expect("consumer");
            let timeout = Duration::from_secs(10);
            let Ok((_, high)) = consumer.fetch_watermarks(&topic, 0, timeout) else {
                return Vec::new();
            };
            let mut assignment = rdkafka::TopicPartitionList::new();
            assignment
                .add_partition_offset(&topic, 0, rdkafka::Offset::Beginning)
                .unwrap();
            consumer.assign(&assignment).expect("assigned");
            let header = |m: &rdkafka::message::BorrowedMessage<'_>, name: &str| {
                m.headers()
                    .and_then(|h| h.iter().find(|h| h.key == name))
                    .and_then(|h| h.value)
                    .map(|v| String::from_utf8_lossy(v).into_owned())
                    .unwrap_or_default()
            };
            let mut records = Vec::new();
            let deadline = std::time::Instant::now() + Duration::from_secs(30);
            let mut next = 0;
            while next < high && std::time::Instant::now() < deadline {
                let Some(Ok(m)) = consumer.poll(Duration::from_millis(200)) else {
                    continue;
                };
                next = m.offset() + 1;
                records.push((
                    String::from_utf8_lossy(m.key().unwrap_or_default()).into_owned(),
                    header(&m, projectors::runtime::DEAD_LETTER_REASON),
                    header(&m, projectors::runtime::DEAD_LETTER_TOPIC),
                ));
            }
            assert!(
                next >= high,
                "the dead-letter topic read to its end ({next} of {high})"
            );
            records
        })
        .await
        .unwrap()
    }

    /// Every change published on a query's topic so far.
    pub async fn changes(&self, query: &'static Query) -> Vec<ResultChange> {
        results::read_all(&self.kafka, &self.schemas, query, &self.result_topic(query))
            .await
            .expect("read the result topic")
    }

    /// The answer the published changes add up to, after checking they never contradict
    /// each other: sequence numbers strictly increase, each change's `before` is the row last
    /// published for its key, and its op fits.
    pub async fn published(&self, query: &'static Query) -> HashMap<String, Row> {
        let changes = self.changes(query).await;
        check_consistent(query, &changes);
        results::fold(&changes).0
    }

    /// Drops the replication slots and databases (after killing every process).
    pub async fn cleanup(mut self) {
        self.kill_engine();
        for p in self.connectors.iter_mut().chain(self.services.iter_mut()) {
            p.kill9();
        }
        for pool in self.pools.values() {
            pool.close().await;
        }
        let admin = PgPoolOptions::new()
            .max_connections(1)
            .connect(&self.admin_url)
            .await
            .expect("admin connection");
        // A killed connector's walsender can hold its slot for a moment (and a slot keeps its
        // database from being dropped): end it, then drop the slot once it is free.
        for slot in &self.slots {
            testkit::eventually("the test's replication slot dropped", Duration::from_secs(30), || async {
                let _ = sqlx::query(
                    "SELECT pg_terminate_backend(active_pid) FROM pg_replication_slots WHERE slot_name = $1 AND active",
                )
                .bind(slot)
                .execute(&admin)
                .await;
                let _ = sqlx::query(
                    "SELECT pg_drop_replication_slot(slot_name) FROM pg_replication_slots WHERE slot_name = $1 AND NOT active",
                )
                .bind(slot)
                .execute(&admin)
                .await;
                sqlx::query_scalar::<_, bool>("SELECT NOT EXISTS (SELECT 1 FROM pg_replication_slots WHERE slot_name = $1)")
                    .bind(slot)
                    .fetch_one(&admin)
                    .await
                    .unwrap_or(false)
            })
            .await;
        }
        for db in &self.databases {
            let _ = sqlx::query(&format!("DROP DATABASE IF EXISTS \"{db}\" WITH (FORCE)"))
                .execute(&admin)
                .await;
        }
    }
}

pub fn check_consistent(query: &Query, changes: &[ResultChange]) {
    let mut last: HashMap<&str, Option<&Row>> = HashMap::new();
    let mut seq = 0;
    for c in changes {
        assert!(c.seq > seq, "{}: seq {} after {seq}", query.name, c.seq);
        assert_eq!(c.seq, seq + 1, "{}: a sequence number skipped", query.name);
        seq = c.seq;
        let previous = last.get(c.key.as_str()).copied().flatten();
        assert_eq!(
            c.before.as_ref(),
            previous,
            "{}: change {} of {} contradicts the row published before",
            query.name,
            c.seq,
            c.key
        );
        let op = match (&c.before, &c.after) {
            (None, Some(_)) => Op::Added,
            (Some(_), Some(_)) => Op::Updated,
            (Some(_), None) => Op::Deleted,
            (None, None) => panic!("{}: an empty change", query.name),
        };
        assert_eq!(c.op, op, "{}: change {}", query.name, c.seq);
        last.insert(&c.key, c.after.as_ref());
    }
}

/// Each query's answer computed with SQL over the source databases (cross-database joins in
/// Rust, as no one database holds both sides).
pub struct Oracle;

impl Oracle {
    pub async fn answers(
        stack: &Stack,
        gold_delay_ms: i64,
    ) -> HashMap<&'static str, HashMap<String, Row>> {
        let products = sqlx::query(
            "SELECT id, name, price::text AS price, stock::bigint AS stock FROM products",
        )
        .fetch_all(stack.pool("products"))
        .await
        .unwrap();
        let stats: HashMap<i64, (i64, i64)> = sqlx::query(
            "SELECT product_id, count(*) AS n, sum(rating)::bigint AS total FROM reviews GROUP BY product_id",
        )
        .fetch_all(stack.pool("reviews"))
        .await
        .unwrap()
        .iter()
        .map(|r| (r.get("product_id"), (r.get("n"), r.get("total"))))
        .collect();
        let mut catalogue = HashMap::new();
        let mut low = HashMap::new();
        let mut critical = HashMap::new();
        let mut stock_of = HashMap::new();
        for p in &products {
            let id: i64 = p.get("id");
            let name: String = p.get("name");
            let stock: i64 = p.get("stock");
            stock_of.insert(id, stock);
            let (count, average) = match stats.get(&id) {
                Some((n, total)) => (*n, Cell::Double(*total as f64 / *n as f64)),
                None => (0, Cell::Null),
            };
            catalogue.insert(
                id.to_string(),
                vec![
                    Cell::Long(id),
                    Cell::Text(name.clone()),
                    Cell::Text(p.get("price")),
                    Cell::Long(stock),
                    Cell::Long(count),
                    average,
                ],
            );
            let row = vec![Cell::Long(id), Cell::Text(name)];
            if stock > 0 && stock < 20 {
                low.insert(id.to_string(), row.clone());
            }
            if stock < 5 {
                critical.insert(id.to_string(), row);
            }
        }
        let processing = sqlx::query(
            "SELECT id::text AS id, customer_id, product_id, quantity::bigint AS quantity,
                    floor(extract(epoch FROM created_at) * 1000)::bigint AS created_ms,
                    created_at <= now() - make_interval(secs => $1::float8 / 1000) AS delayed
               FROM orders WHERE status = 'Processing'",
        )
        .bind(gold_delay_ms as f64)
        .fetch_all(stack.pool("orders"))
        .await
        .unwrap();
        let gold: HashMap<i64, String> =
            sqlx::query("SELECT id, name FROM customers WHERE tier = 'Gold'")
                .fetch_all(stack.pool("customers"))
                .await
                .unwrap()
                .iter()
                .map(|r| (r.get("id"), r.get("name")))
                .collect();
        let mut at_risk = HashMap::new();
        let mut delayed = HashMap::new();
        for o in &processing {
            let id: String = o.get("id");
            let customer: i64 = o.get("customer_id");
            let product: i64 = o.get("product_id");
            let quantity: i64 = o.get("quantity");
            if let Some(stock) = stock_of.get(&product) {
                if *stock < quantity {
                    at_risk.insert(
                        id.clone(),
                        vec![
                            Cell::Text(id.clone()),
                            Cell::Long(customer),
                            Cell::Long(product),
                            Cell::Long(quantity),
                            Cell::Long(*stock),
                        ],
                    );
                }
            }
            if let (Some(name), true) = (gold.get(&customer), o.get::<bool, _>("delayed")) {
                delayed.insert(
                    id.clone(),
                    vec![
                        Cell::Text(id.clone()),
                        Cell::Long(customer),
                        Cell::Text(name.clone()),
                        Cell::Long(product),
                        Cell::Long(quantity),
                        Cell::Long(o.get("created_ms")),
                    ],
                );
            }
        }
        HashMap::from([
            (declared::PRODUCT_CATALOGUE.name, catalogue),
            (declared::LOW_STOCK.name, low),
            (declared::CRITICAL_STOCK.name, critical),
            (declared::AT_RISK_ORDERS.name, at_risk),
            (declared::DELAYED_GOLD_ORDERS.name, delayed),
        ])
    }
}

/// Waits until every query's published answer equals the oracle's.
pub async fn await_oracle(stack: &Stack, gold_delay_ms: i64, within: Duration) {
    let deadline = std::time::Instant::now() + within;
    loop {
        let expected = Oracle::answers(stack, gold_delay_ms).await;
        let mut differing = Vec::new();
        for q in declared::ALL {
            let published = stack.published(q).await;
            if published != expected[q.name] {
                let missing = expected[q.name]
                    .iter()
                    .filter(|(k, v)| published.get(*k) != Some(v))
                    .count();
                let extra = published
                    .keys()
                    .filter(|k| !expected[q.name].contains_key(*k))
                    .count();
                differing.push(format!(
                    "{} ({} expected, {} published; {missing} missing or different, {extra} extra)",
                    q.name,
                    expected[q.name].len(),
                    published.len()
                ));
            }
        }
        if differing.is_empty() {
            return;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "the published answers never matched the SQL oracle: {}",
            differing.join("; ")
        );
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
}

/// `GET <base>/metrics`, parsed as the Prometheus text format (`None` until it answers).
pub async fn scrape(base_url: &str) -> Option<prometheus_parse::Scrape> {
    let response = reqwest::get(format!("{base_url}/metrics")).await.ok()?;
    if !response.status().is_success() {
        return None;
    }
    let text = response.text().await.ok()?;
    prometheus_parse::Scrape::parse(text.lines().map(|l| Ok(l.to_owned()))).ok()
}

/// The sum of metric `name` (a counter or gauge's value, a histogram's count) over the samples
/// whose labels include `labels`; `None` when there is no such sample.
pub fn total(
    scrape: &prometheus_parse::Scrape,
    name: &str,
    labels: &[(&str, &str)],
) -> Option<f64> {
    use prometheus_parse::Value;
    let mut found = None;
    for sample in scrape.samples.iter().filter(|s| s.metric == name) {
        if labels.iter().all(|(k, v)| sample.labels.get(k) == Some(*v)) {
            let value = match sample.value {
                Value::Counter(v) | Value::Gauge(v) | Value::Untyped(v) => v,
                Value::Histogram(ref buckets) => buckets.last().map_or(0.0, |b| b.count),
                Value::Summary(_) => continue,
            };
            *found.get_or_insert(0.0) += value;
        }
    }
    found
}

/// Creates a result topic before the engine does (it keeps an existing one), compacted as
/// eagerly as the broker allows: a new segment every 100 ms and any dirty share cleanable, so
/// a test sees compaction within the log cleaner's back-off (15 s) instead of days.
pub async fn create_eagerly_compacted(kafka: &KafkaSettings, topic: &str) {
    use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
    let admin: AdminClient<rdkafka::client::DefaultClientContext> = rdkafka::ClientConfig::new()
        .set("bootstrap.servers", &kafka.kafka_bootstrap_servers)
        .create()
        .expect("admin client");
    let new = NewTopic::new(topic, 1, TopicReplication::Fixed(1))
        .set("cleanup.policy", "compact")
        .set("segment.ms", "100")
        .set("min.cleanable.dirty.ratio", "0.01")
        .set("min.compaction.lag.ms", "0")
        .set("delete.retention.ms", "0");
    for result in admin
        .create_topics([&new], &AdminOptions::new())
        .await
        .expect("create topics")
    {
        result.unwrap_or_else(|(t, e)| panic!("creating {t}: {e}"));
    }
}
