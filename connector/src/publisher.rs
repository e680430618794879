//! Kafka side: an idempotent producer (acks=all), topic creation, and the
//! schema registry (Confluent-compatible HTTP API) with a per-schema cache.

use std::collections::{HashMap, HashSet};
use std::sync::Mutex;
use std::time::Duration;

use backon::{ExponentialBuilder, Retryable};
use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
use rdkafka::client::DefaultClientContext;
use rdkafka::config::ClientConfig;
use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use rdkafka::producer::{DeliveryFuture, FutureProducer, FutureRecord, Producer};
use serde_json::Value as Json;

use crate::config::Config;
use crate::error::{one_line, Error, Result};

pub struct Publisher {
    /// The connector's `name`, for the failure counter's label.
    name: String,
    producer: FutureProducer,
    admin: AdminClient<DefaultClientContext>,
    registry: Registry,
    partitions: i32,
    replication: i32,
    known_topics: Mutex<HashSet<String>>,
}

impl Publisher {
    /// Connects and checks that the brokers answer, so that a wrong address
    /// fails at startup with one line instead of buffering forever.
    pub async fn connect(cfg: &Config) -> Result<Self> {
        let mut client = ClientConfig::new();
        client
            .set("bootstrap.servers", &cfg.kafka_bootstrap_servers)
            .set("enable.idempotence", "true")
            .set("acks", "all")
            // Never give up on a record: during a Kafka outage the connector
            // waits (and stops reading WAL once the queue is full) instead of
            // dropping changes.
            .set("message.timeout.ms", "0")
            .set("linger.ms", cfg.linger_ms.to_string())
            .set("compression.type", "lz4")
            .set("queue.buffering.max.messages", "200000")
            // Java's murmur2 on the key bytes, like the Java producer Debezium
            // runs in: a key lands on the same partition as with Debezium.
            .set("partitioner", "murmur2_random")
            .set("log_level", "3");
        let producer: FutureProducer = client.create()?;
        let admin: AdminClient<DefaultClientContext> = client.create()?;

        let servers = cfg.kafka_bootstrap_servers.clone();
        let timeout = Duration::from_millis(cfg.kafka_connect_timeout_ms);
        let p = producer.clone();
        tokio::task::spawn_blocking(move || p.client().fetch_metadata(None, timeout))
            .await
            .map_err(|e| Error::Kafka(e.to_string()))?
            .map_err(|e| Error::KafkaUnreachable {
                servers,
                reason: one_line(&e),
            })?;

        Ok(Publisher {
            name: cfg.name.clone(),
            producer,
            admin,
            registry: Registry::new(&cfg.schema_registry_url)?,
            partitions: cfg.topic_partitions,
            replication: cfg.topic_replication_factor,
            known_topics: Mutex::new(HashSet::new()),
        })
    }

    pub fn producer(&self) -> &FutureProducer {
        &self.producer
    }

    pub fn registry(&self) -> &Registry {
        &self.registry
    }

    /// Creates the topic once per process; "already exists" is success.
    pub async fn ensure_topic(&self, topic: &str, compacted: bool) -> Result<()> {
        if self.known_topics.lock().expect("poisoned").contains(topic) {
            return Ok(());
        }
        let mut new = NewTopic::new(
            topic,
            self.partitions,
            TopicReplication::Fixed(self.replication),
        );
        if compacted {
            new = NewTopic::new(topic, 1, TopicReplication::Fixed(self.replication))
                .set("cleanup.policy", "compact");
        }
        let opts = AdminOptions::new().operation_timeout(Some(Duration::from_secs(30)));
        let results = self.admin.create_topics([&new], &opts).await?;
        for r in results {
            match r {
                Ok(_) | Err((_, RDKafkaErrorCode::TopicAlreadyExists)) => {}
                Err((t, code)) => return Err(Error::Kafka(format!("creating topic {t}: {code}"))),
            }
        }
        self.known_topics
            .lock()
            .expect("poisoned")
            .insert(topic.to_string());
        Ok(())
    }

    /// Hands the record to librdkafka and returns the delivery future. When
    /// the local queue is full (Kafka slow or down) this waits, which is the
    /// back-pressure that stops WAL consumption until Kafka catches up.
    pub async fn send(
        &self,
        topic: &str,
        key: Option<&[u8]>,
        value: Option<&[u8]>,
    ) -> Result<DeliveryFuture> {
        self.send_with_headers(topic, key, value, &[]).await
    }

    /// [`Publisher::send`] with record headers.
    pub async fn send_with_headers(
        &self,
        topic: &str,
        key: Option<&[u8]>,
        value: Option<&[u8]>,
        headers: &[(&str, &[u8])],
    ) -> Result<DeliveryFuture> {
        loop {
            let mut record: FutureRecord<'_, [u8], [u8]> = FutureRecord::to(topic);
            if let Some(k) = key {
                record = record.key(k);
            }
            if let Some(v) = value {
                record = record.payload(v);
            }
            if !headers.is_empty() {
                let mut h = rdkafka::message::OwnedHeaders::new_with_capacity(headers.len());
                for (name, v) in headers {
                    h = h.insert(rdkafka::message::Header {
                        key: name,
                        value: Some(*v),
                    });
                }
                record = record.headers(h);
            }
            match self.producer.send_result(record) {
                Ok(f) => return Ok(f),
                Err((KafkaError::MessageProduction(RDKafkaErrorCode::QueueFull), _)) => {
                    tokio::time::sleep(Duration::from_millis(20)).await;
                }
                Err((e, _)) => {
                    crate::offsets::publish_failure(&self.name, "send");
                    return Err(e.into());
                }
            }
        }
    }

    pub fn flush(&self, timeout: Duration) -> Result<()> {
        self.producer.flush(timeout).map_err(Into::into)
    }
}

/// Registers schemas under `<topic>-key` / `<topic>-value` (TopicNameStrategy)
/// and remembers the ids, so the registry is only asked when a table's
/// columns change.
pub struct Registry {
    base: String,
    http: reqwest::Client,
    cache: tokio::sync::Mutex<HashMap<(String, String), u32>>,
}

impl Registry {
    pub fn new(url: &str) -> Result<Self> {
        Ok(Registry {
            base: url.trim_end_matches('/').to_string(),
            http: reqwest::Client::builder()
                .connect_timeout(Duration::from_secs(5))
                .timeout(Duration::from_secs(30))
                .build()?,
            cache: tokio::sync::Mutex::new(HashMap::new()),
        })
    }

    pub fn url(&self) -> &str {
        &self.base
    }

    /// Registers `schema` for `table` under `subject` and returns its id.
    ///
    /// A registry that is down, times out or answers 5xx is waited for
    /// without limit (the stream is held back meanwhile, with a warning per
    /// attempt): skipping the change or exiting would both be worse. An
    /// incompatible schema (409) is final, with the column change named.
    pub async fn register(&self, subject: &str, table: &str, schema: &Json) -> Result<u32> {
        let text = schema.to_string();
        let key = (subject.to_string(), text);
        let mut cache = self.cache.lock().await;
        if let Some(id) = cache.get(&key) {
            return Ok(*id);
        }
        let body = serde_json::json!({"schema": key.1, "schemaType": "AVRO"});
        let backoff = ExponentialBuilder::default()
            .with_min_delay(Duration::from_millis(200))
            .with_max_delay(Duration::from_secs(5))
            .with_jitter()
            .without_max_times();
        let id = (|| self.post(subject, &body))
            .retry(backoff)
            .when(Error::is_retryable)
            .notify(|e, wait| {
                tracing::warn!(error = %e, %subject, retry_in_ms = wait.as_millis() as u64,
                    "schema registry unavailable; holding the stream until it answers");
            })
            .await;
        let id = match id {
            Err(Error::SchemaIncompatible { reason, .. }) => {
                let change = match self.latest(subject).await {
                    Some(old) => crate::schema::describe_change(&old, schema),
                    None => "its schema changes".to_string(),
                };
                return Err(Error::SchemaIncompatible {
                    table: table.to_string(),
                    subject: subject.to_string(),
                    change,
                    reason,
                });
            }
            other => other?,
        };
        cache.insert(key, id);
        Ok(id)
    }

    async fn post(&self, subject: &str, body: &Json) -> Result<u32> {
        let url = format!("{}/subjects/{}/versions", self.base, subject);
        let resp = self
            .http
            .post(&url)
            .header("Content-Type", "application/vnd.schemaregistry.v1+json")
            .json(body)
            .send()
            .await
            .map_err(|e| Error::RegistryUnavailable(format!("{}: {}", self.base, one_line(&e))))?;
        let status = resp.status();
        let text = resp
            .text()
            .await
            .map_err(|e| Error::RegistryUnavailable(one_line(&e)))?;
        let short = || one_line(&text.chars().take(300).collect::<String>());
        if status.is_server_error() || status.as_u16() == 429 || status.as_u16() == 408 {
            return Err(Error::RegistryUnavailable(format!(
                "registering {subject} returned {status}: {}",
                short()
            )));
        }
        if status.as_u16() == 409 {
            let reason = serde_json::from_str::<Json>(&text)
                .ok()
                .and_then(|v| v["message"].as_str().map(|m| one_line(&m)))
                .unwrap_or_else(short);
            return Err(Error::SchemaIncompatible {
                table: String::new(),
                subject: subject.to_string(),
                change: String::new(),
                reason,
            });
        }
        if !status.is_success() {
            return Err(Error::Registry(format!(
                "registering {subject} returned {status}: {}",
                short()
            )));
        }
        serde_json::from_str::<Json>(&text)
            .ok()
            .and_then(|v| v["id"].as_u64())
            .map(|id| id as u32)
            .ok_or_else(|| Error::Registry(format!("unexpected answer for {subject}: {}", short())))
    }

    /// The latest registered schema of `subject`, if the registry says.
    async fn latest(&self, subject: &str) -> Option<Json> {
        let url = format!("{}/subjects/{}/versions/latest", self.base, subject);
        let v: Json = self.http.get(&url).send().await.ok()?.json().await.ok()?;
        serde_json::from_str(v["schema"].as_str()?).ok()
    }

    /// `Ok` when the registry answers (for `status`).
    pub async fn check(&self) -> Result<()> {
        let resp = self
            .http
            .get(format!("{}/subjects", self.base))
            .timeout(Duration::from_secs(5))
            .send()
            .await
            .map_err(|e| Error::RegistryUnavailable(one_line(&e)))?;
        if resp.status().is_success() {
            Ok(())
        } else {
            Err(Error::RegistryUnavailable(format!(
                "GET /subjects returned {}",
                resp.status()
            )))
        }
    }
}
