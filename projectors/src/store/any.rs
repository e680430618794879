//! The store a service runs on, chosen by configuration rather than code: a service holds an
//! [`AnyStore`] and picks Redis or MySQL with a setting. Moving an existing read model to the
//! other store is a rebuild into it, since the data and offsets live in the old one.

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::error::{Error, Result};
use crate::projection::Change;
use crate::store::mysql::MysqlStore;
use crate::store::redis::RedisStore;
use crate::store::{PartitionBatch, Store, Stored, StoredJson};

/// Which backend holds a service's read models.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum StoreKind {
    #[default]
    Redis,
    Mysql,
}

impl StoreKind {
    pub fn as_str(self) -> &'static str {
        match self {
            StoreKind::Redis => "redis",
            StoreKind::Mysql => "mysql",
        }
    }
}

impl fmt::Display for StoreKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for StoreKind {
    type Err = Error;

    /// Case-insensitive, as environment variables are often written in capitals.
    fn from_str(s: &str) -> Result<Self> {
        match s.trim().to_ascii_lowercase().as_str() {
            "redis" => Ok(StoreKind::Redis),
            "mysql" => Ok(StoreKind::Mysql),
            other => Err(Error::Config(format!(
                "unknown store `{other}` (expected `redis` or `mysql`)"
            ))),
        }
    }
}

/// One of the stores, behind the [`Store`] trait.
#[derive(Clone)]
pub enum AnyStore {
    Redis(RedisStore),
    Mysql(MysqlStore),
}

impl AnyStore {
    /// Connects the store of `kind` for `namespace`; only that backend's URL is used.
    pub async fn connect(
        kind: StoreKind,
        redis_url: &str,
        mysql_url: &str,
        namespace: &str,
    ) -> Result<Self> {
        Ok(match kind {
            StoreKind::Redis => AnyStore::Redis(RedisStore::connect(redis_url, namespace).await?),
            StoreKind::Mysql => AnyStore::Mysql(MysqlStore::connect(mysql_url, namespace).await?),
        })
    }

    pub fn kind(&self) -> StoreKind {
        match self {
            AnyStore::Redis(_) => StoreKind::Redis,
            AnyStore::Mysql(_) => StoreKind::Mysql,
        }
    }
}

impl From<RedisStore> for AnyStore {
    fn from(store: RedisStore) -> Self {
        AnyStore::Redis(store)
    }
}

impl From<MysqlStore> for AnyStore {
    fn from(store: MysqlStore) -> Self {
        AnyStore::Mysql(store)
    }
}

impl Store for AnyStore {
    async fn write(&self, batch: &PartitionBatch) -> Result<i64> {
        match self {
            AnyStore::Redis(s) => s.write(batch).await,
            AnyStore::Mysql(s) => s.write(batch).await,
        }
    }

    fn refuses(&self, change: &Change) -> Option<String> {
        match self {
            AnyStore::Redis(s) => s.refuses(change),
            AnyStore::Mysql(s) => s.refuses(change),
        }
    }

    fn refuses_document(&self, key: &str, document: Option<&Value>) -> Option<String> {
        match self {
            AnyStore::Redis(s) => s.refuses_document(key, document),
            AnyStore::Mysql(s) => s.refuses_document(key, document),
        }
    }

    fn limits_documents(&self) -> bool {
        match self {
            AnyStore::Redis(s) => s.limits_documents(),
            AnyStore::Mysql(s) => s.limits_documents(),
        }
    }

    fn refuses_json(&self, key: &str, json: Option<&str>) -> Option<String> {
        match self {
            AnyStore::Redis(s) => s.refuses_json(key, json),
            AnyStore::Mysql(s) => s.refuses_json(key, json),
        }
    }

    async fn load_json(&self, keys: &[&str]) -> Result<Vec<StoredJson>> {
        match self {
            AnyStore::Redis(s) => s.load_json(keys).await,
            AnyStore::Mysql(s) => s.load_json(keys).await,
        }
    }

    async fn load(&self, keys: &[&str]) -> Result<Vec<Stored>> {
        match self {
            AnyStore::Redis(s) => s.load(keys).await,
            AnyStore::Mysql(s) => s.load(keys).await,
        }
    }

    async fn applied_offset(&self, topic: &str, partition: i32) -> Result<Option<i64>> {
        match self {
            AnyStore::Redis(s) => s.applied_offset(topic, partition).await,
            AnyStore::Mysql(s) => s.applied_offset(topic, partition).await,
        }
    }

    async fn get(&self, key: &str) -> Result<Option<Value>> {
        match self {
            AnyStore::Redis(s) => s.get(key).await,
            AnyStore::Mysql(s) => s.get(key).await,
        }
    }

    async fn clear(&self) -> Result<()> {
        match self {
            AnyStore::Redis(s) => s.clear().await,
            AnyStore::Mysql(s) => s.clear().await,
        }
    }

    async fn current_generation(&self, model: &str) -> Result<Option<u32>> {
        match self {
            AnyStore::Redis(s) => s.current_generation(model).await,
            AnyStore::Mysql(s) => s.current_generation(model).await,
        }
    }

    async fn set_current_generation(&self, model: &str, generation: u32) -> Result<()> {
        match self {
            AnyStore::Redis(s) => s.set_current_generation(model, generation).await,
            AnyStore::Mysql(s) => s.set_current_generation(model, generation).await,
        }
    }
}
