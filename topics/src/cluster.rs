//! What the Kafka cluster holds: topics, their partitions and configs, and creating them.

use std::collections::HashMap;
use std::time::Duration;

use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, ResourceSpecifier, TopicReplication};
use rdkafka::client::DefaultClientContext;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use rdkafka::metadata::Metadata;

use crate::error::{Error, Result};
use crate::kafka;
use crate::settings::KafkaSettings;
use crate::spec::TopicSpec;

const TIMEOUT: Duration = Duration::from_secs(10);

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PartitionState {
    pub id: i32,
    pub leader: i32,
    pub replicas: Vec<i32>,
    pub in_sync: Vec<i32>,
    /// Offsets of the first and one past the last record.
    pub low_watermark: i64,
    pub high_watermark: i64,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TopicState {
    pub name: String,
    pub partitions: Vec<PartitionState>,
    /// The topic's configs as the broker reports them (e.g. `cleanup.policy`).
    pub configs: HashMap<String, String>,
}

impl TopicState {
    pub fn replication_factor(&self) -> usize {
        self.partitions.first().map_or(0, |p| p.replicas.len())
    }
}

pub struct Cluster {
    admin: AdminClient<DefaultClientContext>,
    /// Metadata and watermarks come from a plain client; it never joins a group.
    client: BaseConsumer,
    bootstrap: String,
}

impl Cluster {
    pub fn connect(settings: &KafkaSettings) -> Result<Self> {
        let client = rdkafka::ClientConfig::new()
            .set("bootstrap.servers", &settings.kafka_bootstrap_servers)
            .create()?;
        Ok(Self {
            admin: kafka::admin_client(settings)?,
            client,
            bootstrap: settings.kafka_bootstrap_servers.clone(),
        })
    }

    /// Metadata of one topic or all; the first call to fail tells whether the cluster is there.
    fn metadata(&self, topic: Option<&str>) -> Result<Metadata> {
        self.client
            .fetch_metadata(topic, TIMEOUT)
            .map_err(|source| Error::KafkaUnreachable {
                bootstrap: self.bootstrap.clone(),
                source,
            })
    }

    pub fn broker_count(&self) -> Result<usize> {
        Ok(self.metadata(None)?.brokers().len())
    }

    /// Names of all topics, internal ones (`__consumer_offsets`) left out.
    pub fn topic_names(&self) -> Result<Vec<String>> {
        let metadata = self.metadata(None)?;
        let mut names: Vec<String> = metadata
            .topics()
            .iter()
            .map(|t| t.name().to_owned())
            .filter(|name| !name.starts_with("__"))
            .collect();
        names.sort();
        Ok(names)
    }

    /// The topic as the cluster has it, or `None` when it does not exist.
    pub async fn topic(&self, name: &str) -> Result<Option<TopicState>> {
        let Some(partitions) = self.partitions(name).await? else {
            return Ok(None);
        };
        let configs = self.configs(name).await?;
        Ok(Some(TopicState {
            name: name.to_owned(),
            partitions,
            configs,
        }))
    }

    /// The topic's partitions with their watermarks, or `None` when it does not exist; what
    /// lag needs, without the config round trip of [`Cluster::topic`].
    pub async fn partitions(&self, name: &str) -> Result<Option<Vec<PartitionState>>> {
        let metadata = self.metadata(Some(name))?;
        let Some(topic) = metadata.topics().iter().find(|t| t.name() == name) else {
            return Ok(None);
        };
        match topic.error().map(RDKafkaErrorCode::from) {
            None => {}
            Some(RDKafkaErrorCode::UnknownTopicOrPartition) => return Ok(None),
            Some(code) => return Err(KafkaError::MetadataFetch(code).into()),
        }
        // Metadata holds raw pointers, so take what is needed before awaiting anything.
        let mut partitions: Vec<PartitionState> = topic
            .partitions()
            .iter()
            .map(|p| PartitionState {
                id: p.id(),
                leader: p.leader(),
                replicas: p.replicas().to_vec(),
                in_sync: p.isr().to_vec(),
                low_watermark: 0,
                high_watermark: 0,
            })
            .collect();
        drop(metadata);
        for partition in &mut partitions {
            (partition.low_watermark, partition.high_watermark) =
                self.watermarks(name, partition.id).await?;
        }
        partitions.sort_by_key(|p| p.id);
        Ok(Some(partitions))
    }

    /// A partition's watermarks; a partition whose leadership is still settling (just created,
    /// or after a broker restart) answers "not leader" for a moment, which is waited out.
    async fn watermarks(&self, topic: &str, partition: i32) -> Result<(i64, i64)> {
        let deadline = std::time::Instant::now() + TIMEOUT;
        loop {
            match self.client.fetch_watermarks(topic, partition, TIMEOUT) {
                Err(KafkaError::MetadataFetch(
                    RDKafkaErrorCode::NotLeaderForPartition | RDKafkaErrorCode::LeaderNotAvailable,
                )) if std::time::Instant::now() < deadline => {
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
                result => return Ok(result?),
            }
        }
    }

    async fn configs(&self, topic: &str) -> Result<HashMap<String, String>> {
        let results = self
            .admin
            .describe_configs([&ResourceSpecifier::Topic(topic)], &AdminOptions::new())
            .await?;
        let mut configs = HashMap::new();
        for result in results {
            let resource = result.map_err(KafkaError::AdminOp)?;
            for entry in resource.entries {
                if let Some(value) = entry.value {
                    configs.insert(entry.name, value);
                }
            }
        }
        Ok(configs)
    }

    pub async fn create(&self, spec: &TopicSpec, replication_factor: i32) -> Result<()> {
        let retention = spec.retention.as_config();
        let topic = NewTopic::new(
            spec.name,
            spec.partitions,
            TopicReplication::Fixed(replication_factor),
        )
        .set("cleanup.policy", spec.cleanup_policy.as_config())
        .set("retention.ms", &retention);
        let options = AdminOptions::new().operation_timeout(Some(TIMEOUT));
        for result in self.admin.create_topics([&topic], &options).await? {
            match result {
                Ok(_) | Err((_, RDKafkaErrorCode::TopicAlreadyExists)) => {}
                Err((_, code)) => return Err(KafkaError::AdminOp(code).into()),
            }
        }
        self.await_leaders(spec.name).await
    }

    /// Waits until every partition of a new topic has a leader: before that, reads and
    /// writes to it fail with "not leader" errors that callers would have to retry.
    async fn await_leaders(&self, name: &str) -> Result<()> {
        let deadline = std::time::Instant::now() + TIMEOUT;
        loop {
            let metadata = self.metadata(Some(name))?;
            let ready = metadata.topics().iter().any(|t| {
                t.name() == name
                    && t.error().is_none()
                    && !t.partitions().is_empty()
                    && t.partitions()
                        .iter()
                        .all(|p| p.error().is_none() && p.leader() >= 0)
            });
            if ready {
                return Ok(());
            }
            if std::time::Instant::now() > deadline {
                return Err(KafkaError::MetadataFetch(RDKafkaErrorCode::LeaderNotAvailable).into());
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
}
