//! Helpers for the integration tests: a private database per test, the
//! connector binary as a child process, and a Kafka reader that decodes the
//! Confluent-framed Avro the connector writes.
#![allow(dead_code)]

use std::collections::HashMap;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::{ClientConfig, Message, Offset, TopicPartitionList};
use serde_json::Value as Json;
use tokio_postgres::{Client, NoTls};

pub fn env_or(name: &str, default: &str) -> String {
    std::env::var(name).unwrap_or_else(|_| default.to_string())
}

pub fn kafka() -> String {
    env_or("KAFKA_BOOTSTRAP_SERVERS", "127.0.0.1:9092")
}

pub fn registry() -> String {
    env_or(
        "SCHEMA_REGISTRY_URL",
        "http://127.0.0.1:8081/apis/ccompat/v7",
    )
}

pub fn postgres_admin_url() -> String {
    env_or(
        "POSTGRES_URL",
        "postgres://platform:platform@127.0.0.1:5432/platform",
    )
}

pub use testkit::unique;

pub async fn connect(url: &str) -> Client {
    let (client, conn) = tokio_postgres::connect(url, NoTls).await.expect("connect");
    tokio::spawn(async move {
        let _ = conn.await;
    });
    client
}

/// `postgres://u:p@h:port/db?x` with the database replaced.
pub use testkit::env::with_database as with_db;

/// A private database plus the unique names a connector run needs.
pub struct TestEnv {
    pub db: String,
    pub url: String,
    pub prefix: String,
    pub slot: String,
    pub publication: String,
    pub offsets_topic: String,
    pub kafka: String,
    /// The server's `platform` database, where the test database is made.
    pub admin_url: String,
    pub client: Client,
    /// Set by `cleanup`; otherwise (a failed assertion) `Drop` cleans up, so
    /// that no slot is left holding WAL on the shared server.
    cleaned: bool,
}

impl TestEnv {
    pub async fn new() -> TestEnv {
        Self::with_kafka(kafka()).await
    }

    pub async fn with_kafka(kafka: String) -> TestEnv {
        Self::on(kafka, postgres_admin_url()).await
    }

    /// On another PostgreSQL server (its `platform` database URL).
    pub async fn on(kafka: String, admin_url: String) -> TestEnv {
        let db = unique("connector_test");
        let admin = connect(&admin_url).await;
        admin
            .batch_execute(&format!("CREATE DATABASE {db}"))
            .await
            .expect("create database");
        let url = with_db(&admin_url, &db);
        let client = connect(&url).await;
        let prefix = db.replace("connector_test_", "t");
        TestEnv {
            slot: format!("{db}_slot"),
            publication: format!("{db}_pub"),
            offsets_topic: format!("{prefix}.offsets"),
            db,
            url,
            prefix,
            kafka,
            admin_url,
            client,
            cleaned: false,
        }
    }

    pub fn topic(&self, table: &str) -> String {
        format!("{}.public.{table}", self.prefix)
    }

    /// Environment for the connector child process.
    pub fn connector_env(&self, tables: &[&str]) -> Vec<(String, String)> {
        let tables: Vec<String> = tables.iter().map(|t| format!("public.{t}")).collect();
        vec![
            ("POSTGRES_URL".into(), self.url.clone()),
            ("KAFKA_BOOTSTRAP_SERVERS".into(), self.kafka.clone()),
            ("SCHEMA_REGISTRY_URL".into(), registry()),
            ("CONNECTOR_NAME".into(), self.prefix.clone()),
            ("CONNECTOR_SLOT_NAME".into(), self.slot.clone()),
            (
                "CONNECTOR_PUBLICATION_NAME".into(),
                self.publication.clone(),
            ),
            ("CONNECTOR_TABLES".into(), tables.join(",")),
            ("CONNECTOR_OFFSETS_TOPIC".into(), self.offsets_topic.clone()),
            ("CONNECTOR_HEARTBEAT_INTERVAL_MS".into(), "500".into()),
            ("CONNECTOR_LINGER_MS".into(), "1".into()),
        ]
    }

    pub fn spawn(&self, tables: &[&str], extra: &[(&str, &str)]) -> Connector {
        Connector::spawn(&self.env_with(tables, extra))
    }

    /// [`TestEnv::spawn`] with the connector's log (stderr) kept for
    /// [`Connector::log`].
    pub fn spawn_logged(&self, tables: &[&str], extra: &[(&str, &str)]) -> Connector {
        Connector::spawn_logged(&self.env_with(tables, extra))
    }

    pub fn env_with(&self, tables: &[&str], extra: &[(&str, &str)]) -> Vec<(String, String)> {
        let mut env = self.connector_env(tables);
        for (k, v) in extra {
            env.push((k.to_string(), v.to_string()));
        }
        env
    }

    /// The pid of the walsender streaming the slot (START_REPLICATION
    /// running), if one is.
    pub async fn streaming_walsender(&self) -> Option<i32> {
        self.client
            .query_opt(
                "SELECT r.pid FROM pg_replication_slots s
                   JOIN pg_stat_replication r ON r.pid = s.active_pid
                  WHERE s.slot_name = $1 AND s.active AND r.state IN ('catchup', 'streaming')",
                &[&self.slot],
            )
            .await
            .unwrap()
            .map(|row| row.get(0))
    }

    pub async fn slot_exists(&self) -> bool {
        self.client
            .query_opt(
                "SELECT 1 FROM pg_replication_slots WHERE slot_name = $1",
                &[&self.slot],
            )
            .await
            .unwrap()
            .is_some()
    }

    /// Drops the slot (once no connector holds it), the database, and the
    /// test's topics and registry subjects.
    pub async fn cleanup(mut self) {
        self.cleaned = true;
        remove(
            &self.admin_url,
            &self.slot,
            &self.db,
            &self.kafka,
            &self.prefix,
        )
        .await;
    }
}

impl Drop for TestEnv {
    fn drop(&mut self) {
        if self.cleaned {
            return;
        }
        // Panicking inside an async test: clean up on a runtime of our own.
        let (admin_url, slot, db, kafka, prefix) = (
            self.admin_url.clone(),
            self.slot.clone(),
            self.db.clone(),
            self.kafka.clone(),
            self.prefix.clone(),
        );
        let _ = std::thread::spawn(move || {
            if let Ok(rt) = tokio::runtime::Runtime::new() {
                rt.block_on(remove(&admin_url, &slot, &db, &kafka, &prefix));
            }
        })
        .join();
    }
}

async fn remove(admin_url: &str, slot: &str, db: &str, kafka: &str, prefix: &str) {
    let Ok((admin, conn)) = tokio_postgres::connect(admin_url, NoTls).await else {
        return; // an isolated server that is gone already
    };
    tokio::spawn(async move {
        let _ = conn.await;
    });
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let r = admin
            .execute(
                "SELECT pg_drop_replication_slot(slot_name) FROM pg_replication_slots WHERE slot_name = $1",
                &[&slot],
            )
            .await;
        if r.is_ok() || Instant::now() > deadline {
            break;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let _ = admin
        .batch_execute(&format!("DROP DATABASE IF EXISTS {db} WITH (FORCE)"))
        .await;
    delete_topics(kafka, prefix).await;
    delete_subjects(prefix).await;
}

pub fn bin() -> &'static str {
    env!("CARGO_BIN_EXE_connector")
}

/// The connector as a child process; killed (SIGKILL) when dropped.
pub struct Connector {
    pub child: Child,
    log: Option<std::path::PathBuf>,
}

impl Connector {
    pub fn spawn(env: &[(String, String)]) -> Connector {
        Self::start(env, None)
    }

    /// Spawns with stderr written to a file, read back by [`Connector::log`].
    pub fn spawn_logged(env: &[(String, String)]) -> Connector {
        let path = std::env::temp_dir().join(format!("{}.log", unique("connector")));
        Self::start(env, Some(path))
    }

    fn start(env: &[(String, String)], log: Option<std::path::PathBuf>) -> Connector {
        let dir = std::env::temp_dir();
        let mut cmd = Command::new(bin());
        let stderr = match &log {
            Some(path) => Stdio::from(std::fs::File::create(path).expect("log file")),
            None => Stdio::inherit(),
        };
        cmd.current_dir(dir)
            .env_remove("CONNECTOR_CONFIG")
            .env("RUST_LOG", env_or("CONNECTOR_TEST_LOG", "warn"))
            .stdout(Stdio::null())
            .stderr(stderr);
        for (k, v) in env {
            cmd.env(k, v);
        }
        Connector {
            child: cmd.spawn().expect("spawn connector"),
            log,
        }
    }

    /// What the connector wrote to stderr so far (`spawn_logged` only).
    pub fn log(&self) -> String {
        self.log
            .as_ref()
            .and_then(|p| std::fs::read_to_string(p).ok())
            .unwrap_or_default()
    }

    /// The exit status, once the process has ended.
    pub fn exited(&mut self) -> Option<std::process::ExitStatus> {
        self.child.try_wait().unwrap()
    }

    pub fn kill9(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    /// SIGTERM, then wait for a clean exit.
    pub fn stop(&mut self) {
        let _ = Command::new("kill")
            .args(["-TERM", &self.child.id().to_string()])
            .status();
        let deadline = Instant::now() + Duration::from_secs(30);
        while Instant::now() < deadline {
            if let Ok(Some(_)) = self.child.try_wait() {
                return;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        self.kill9();
    }
}

impl Drop for Connector {
    fn drop(&mut self) {
        self.kill9();
        if let Some(p) = &self.log {
            if std::thread::panicking() {
                eprintln!("connector log:\n{}", self.log());
            }
            let _ = std::fs::remove_file(p);
        }
    }
}

/// Runs the connector binary to completion and returns (exit ok, stderr).
pub fn run_to_end(env: &[(String, String)], args: &[&str]) -> (bool, String) {
    let mut cmd = Command::new(bin());
    cmd.current_dir(std::env::temp_dir())
        .env_remove("CONNECTOR_CONFIG")
        .env("RUST_LOG", "off")
        .args(args);
    for (k, v) in env {
        cmd.env(k, v);
    }
    let out = cmd.output().expect("run connector");
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stderr).to_string() + &String::from_utf8_lossy(&out.stdout),
    )
}

#[derive(Debug, Clone)]
pub struct Record {
    pub key: Option<Json>,
    pub value: Option<Json>,
    pub offset: i64,
}

impl Record {
    pub fn op(&self) -> Option<&str> {
        self.value.as_ref().and_then(|v| v["op"].as_str())
    }
    pub fn lsn(&self) -> Option<i64> {
        self.value
            .as_ref()
            .and_then(|v| v["source"]["lsn"].as_i64())
    }
}

/// Reads a topic from the beginning, decoding Avro through the registry.
pub struct TopicReader {
    consumer: BaseConsumer,
    schemas: HashMap<u32, apache_avro::Schema>,
    http: reqwest::Client,
    registry: String,
    pub records: Vec<Record>,
}

impl TopicReader {
    pub async fn new(bootstrap: &str, topic: &str) -> TopicReader {
        Self::with_registry(bootstrap, topic, &registry()).await
    }

    pub async fn with_registry(bootstrap: &str, topic: &str, registry: &str) -> TopicReader {
        let consumer: BaseConsumer = ClientConfig::new()
            .set("bootstrap.servers", bootstrap)
            .set("group.id", unique("reader"))
            .set("enable.auto.commit", "false")
            .set("log_level", "0")
            .create()
            .expect("consumer");
        // The topic appears when the connector first sees the table.
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            let md = consumer.fetch_metadata(Some(topic), Duration::from_secs(5));
            if let Ok(md) = md {
                if md
                    .topics()
                    .iter()
                    .any(|t| t.name() == topic && t.error().is_none() && !t.partitions().is_empty())
                {
                    break;
                }
            }
            assert!(Instant::now() < deadline, "topic {topic} never appeared");
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
        let mut tpl = TopicPartitionList::new();
        tpl.add_partition_offset(topic, 0, Offset::Beginning)
            .unwrap();
        consumer.assign(&tpl).unwrap();
        TopicReader {
            consumer,
            schemas: HashMap::new(),
            http: reqwest::Client::new(),
            registry: registry.to_string(),
            records: Vec::new(),
        }
    }

    #[allow(deprecated)] // the one-call datum reader is enough here
    async fn decode(&mut self, bytes: Option<&[u8]>) -> Option<Json> {
        let bytes = bytes?;
        if bytes.first() == Some(&b'{') {
            return Some(serde_json::from_slice(bytes).expect("json"));
        }
        assert_eq!(bytes[0], 0, "Confluent magic byte");
        let id = u32::from_be_bytes(bytes[1..5].try_into().unwrap());
        if !self.schemas.contains_key(&id) {
            let body: Json = self
                .http
                .get(format!("{}/schemas/ids/{id}", self.registry))
                .send()
                .await
                .unwrap()
                .json()
                .await
                .unwrap();
            let schema = apache_avro::Schema::parse_str(body["schema"].as_str().unwrap()).unwrap();
            self.schemas.insert(id, schema);
        }
        let mut r = &bytes[5..];
        let v = apache_avro::from_avro_datum(&self.schemas[&id], &mut r, None).expect("avro");
        Some(Json::try_from(v).unwrap())
    }

    /// Reads whatever is available now.
    pub async fn poll(&mut self) {
        self.poll_for(None).await;
    }

    /// Reads what is available now, for at most `budget`: under a steady stream "available
    /// now" never ends, and a caller waiting for a condition must look at it meanwhile.
    async fn poll_for(&mut self, budget: Option<Duration>) {
        let started = Instant::now();
        while budget.is_none_or(|b| started.elapsed() < b) {
            let raw = match self.consumer.poll(Duration::from_millis(100)) {
                None => return,
                Some(Err(_)) => continue,
                Some(Ok(m)) => (
                    m.key().map(<[u8]>::to_vec),
                    m.payload().map(<[u8]>::to_vec),
                    m.offset(),
                ),
            };
            let key = self.decode(raw.0.as_deref()).await;
            let value = self.decode(raw.1.as_deref()).await;
            self.records.push(Record {
                key,
                value,
                offset: raw.2,
            });
        }
    }

    /// Polls until `done(records)` or the deadline (then panics with `what`).
    pub async fn until(&mut self, secs: u64, what: &str, done: impl Fn(&[Record]) -> bool) {
        let deadline = Instant::now() + Duration::from_secs(secs);
        loop {
            self.poll_for(Some(Duration::from_millis(200))).await;
            if done(&self.records) {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "timed out waiting for {what}; got {} records",
                self.records.len()
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
}

/// Replays change events into key → latest `after` (deletes remove).
pub fn materialize(records: &[Record]) -> HashMap<String, Json> {
    let mut state = HashMap::new();
    for r in records {
        let key = r.key.as_ref().map(|k| k.to_string()).unwrap_or_default();
        match &r.value {
            None => {
                state.remove(&key);
            }
            Some(v) => match v["op"].as_str().unwrap() {
                "d" => {
                    state.remove(&key);
                }
                _ => {
                    state.insert(key, v["after"].clone());
                }
            },
        }
    }
    state
}

/// Polls `check` until it returns true or `secs` pass.
pub async fn wait_for<F, Fut>(secs: u64, what: &str, mut check: F)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let deadline = Instant::now() + Duration::from_secs(secs);
    while !check().await {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// The broker is shared: remove every topic this test's prefix created.
pub async fn delete_topics(bootstrap: &str, prefix: &str) {
    use rdkafka::admin::{AdminClient, AdminOptions};
    use rdkafka::client::DefaultClientContext;
    let Ok(admin) = ClientConfig::new()
        .set("bootstrap.servers", bootstrap)
        .set("log_level", "0")
        .create::<AdminClient<DefaultClientContext>>()
    else {
        return;
    };
    let Ok(md) = admin.inner().fetch_metadata(None, Duration::from_secs(5)) else {
        return;
    };
    let names: Vec<String> = md
        .topics()
        .iter()
        .map(|t| t.name().to_string())
        .filter(|n| n.starts_with(prefix))
        .collect();
    if !names.is_empty() {
        let refs: Vec<&str> = names.iter().map(String::as_str).collect();
        let _ = admin.delete_topics(&refs, &AdminOptions::new()).await;
    }
}

/// Removes the registry subjects of this test's topics (soft, then hard delete).
pub async fn delete_subjects(prefix: &str) {
    let http = reqwest::Client::new();
    let Ok(resp) = http.get(format!("{}/subjects", registry())).send().await else {
        return;
    };
    let subjects: Vec<String> = resp.json().await.unwrap_or_default();
    for s in subjects.iter().filter(|s| s.starts_with(prefix)) {
        let url = format!("{}/subjects/{s}", registry());
        let _ = http.delete(&url).send().await;
        let _ = http.delete(format!("{url}?permanent=true")).send().await;
    }
}
