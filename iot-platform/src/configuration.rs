//! The IoT platform's settings. Env names: `IOT_STORE` (redis|mysql), `MYSQL_URL`, `IOT_LISTEN_ADDR`, `IOT_GROUP`, `IOT_TOPIC`, `IOT_NAMESPACE`,
//! `IOT_MAX_BATCH`, `IOT_REBUILD_MAX_BATCH`, `REDIS_URL`, plus the platform-wide Kafka settings.

use projectors::store::any::StoreKind;
use serde::{Deserialize, Serialize};
use topics::settings::KafkaSettings;

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Settings {
    #[serde(flatten)]
    pub kafka: KafkaSettings,
    /// Where the read model lives: `redis` or `mysql`. Changing it means a rebuild into the
    /// new store (`iot-platform rebuild`), since the consumer group's offsets belong to the old.
    pub iot_store: StoreKind,
    pub redis_url: String,
    pub mysql_url: String,
    pub iot_listen_addr: String,
    /// Instances sharing the group split the topic's partitions and share the store.
    pub iot_group: String,
    /// The topic folded; the platform's contract says `connection-mandates`.
    pub iot_topic: String,
    /// The read model's key space in the store; a rebuild writes a new one.
    pub iot_namespace: String,
    /// The most records one batch folds while serving: filled only under a backlog.
    pub iot_max_batch: usize,
    /// The same for a rebuild, which starts with the whole topic as its backlog: larger
    /// batches take fewer store round trips per event.
    pub iot_rebuild_max_batch: usize,
    pub iot_dead_letter_topic: String,
}

impl Default for Settings {
    fn default() -> Self {
        Self {
            kafka: KafkaSettings::default(),
            iot_store: StoreKind::Redis,
            redis_url: "redis://127.0.0.1:6379".to_owned(),
            mysql_url: "mysql://platform:platform@127.0.0.1:3306/platform".to_owned(),
            iot_listen_addr: "127.0.0.1:3008".to_owned(),
            iot_group: "iot-platform".to_owned(),
            iot_topic: topics::spec::CONNECTION_MANDATES.name.to_owned(),
            iot_namespace: "iot:mandates".to_owned(),
            iot_max_batch: 2000,
            iot_rebuild_max_batch: 20_000,
            iot_dead_letter_topic: topics::spec::IOT_PLATFORM_DEAD_LETTERS.name.to_owned(),
        }
    }
}

impl Settings {
    pub fn load() -> topics::Result<Self> {
        topics::settings::load("iot-platform")
    }
}
