//! Read models in Redis: one string key per document (`<namespace>:doc:<key>`, JSON) and one
//! hash of applied offsets per read model (`<namespace>:offsets`, field `<topic>:<partition>`).

use redis::aio::ConnectionManager;
use redis::{AsyncCommands, Script};
use serde_json::Value;

use crate::error::{Error, Result};
use crate::projection::Change;
use crate::store::{PartitionBatch, Store};

/// Applies a batch and its offset in one script run, which Redis executes atomically.
/// ARGV: offsets field, document key prefix, last offset, then (offset, op, key, value)
/// quadruples. Changes at or below the recorded offset were applied by an earlier delivery.
const APPLY_BATCH: &str = r"
local applied = tonumber(redis.call('HGET', KEYS[1], ARGV[1]) or '-1')
local prefix = ARGV[2]
for i = 4, #ARGV, 4 do
  if tonumber(ARGV[i]) > applied then
    if ARGV[i + 1] == 'put' then
      redis.call('SET', prefix .. ARGV[i + 2], ARGV[i + 3])
    else
      redis.call('DEL', prefix .. ARGV[i + 2])
    end
  end
end
local last = tonumber(ARGV[3])
if last > applied then
  redis.call('HSET', KEYS[1], ARGV[1], ARGV[3])
  return last
end
return applied
";

#[derive(Clone)]
pub struct RedisStore {
    connection: ConnectionManager,
    offsets_key: String,
    document_prefix: String,
    script: Script,
}

/// The key holding the generation reads of `model` are served from.
fn generation_key(model: &str) -> String {
    format!("{model}:generation")
}

impl RedisStore {
    /// A store for the read model `namespace` (e.g. `iot:mandates`).
    pub async fn connect(url: &str, namespace: &str) -> Result<Self> {
        let client = redis::Client::open(url)?;
        let connection = ConnectionManager::new(client).await?;
        Ok(Self {
            connection,
            offsets_key: format!("{namespace}:offsets"),
            document_prefix: format!("{namespace}:doc:"),
            script: Script::new(APPLY_BATCH),
        })
    }
}

impl Store for RedisStore {
    async fn write(&self, batch: &PartitionBatch) -> Result<i64> {
        let mut invocation = self.script.key(&self.offsets_key);
        invocation
            .arg(format!("{}:{}", batch.topic, batch.partition))
            .arg(&self.document_prefix)
            .arg(batch.last_offset);
        for (offset, change) in &batch.changes {
            match change {
                Change::Put { key, document } => invocation
                    .arg(offset)
                    .arg("put")
                    .arg(key)
                    .arg(document.to_string()),
                Change::Delete { key } => invocation.arg(offset).arg("del").arg(key).arg(""),
            };
        }
        let mut connection = self.connection.clone();
        Ok(invocation.invoke_async(&mut connection).await?)
    }

    async fn applied_offset(&self, topic: &str, partition: i32) -> Result<Option<i64>> {
        let mut connection = self.connection.clone();
        let field = format!("{topic}:{partition}");
        Ok(connection.hget(&self.offsets_key, field).await?)
    }

    async fn get(&self, key: &str) -> Result<Option<Value>> {
        let mut connection = self.connection.clone();
        let text: Option<String> = connection
            .get(format!("{}{key}", self.document_prefix))
            .await?;
        text.map(|t| serde_json::from_str(&t))
            .transpose()
            .map_err(|e| Error::Store {
                backend: "redis",
                message: format!("document {key}: {e}"),
            })
    }

    async fn clear(&self) -> Result<()> {
        let mut connection = self.connection.clone();
        // Offsets go first: a clear interrupted half-way must leave documents without
        // offsets (a replay restores them), never offsets that skip deleted documents.
        let _: () = connection.del(&self.offsets_key).await?;
        let pattern = format!("{}*", self.document_prefix);
        let mut cursor: u64 = 0;
        // SCAN in pages: a namespace of millions of keys must not block Redis in one call.
        loop {
            let (next, keys): (u64, Vec<String>) = redis::cmd("SCAN")
                .arg(cursor)
                .arg("MATCH")
                .arg(&pattern)
                .arg("COUNT")
                .arg(1000)
                .query_async(&mut connection)
                .await?;
            if !keys.is_empty() {
                let _: () = connection.unlink(keys).await?;
            }
            if next == 0 {
                return Ok(());
            }
            cursor = next;
        }
    }

    async fn current_generation(&self, model: &str) -> Result<Option<u32>> {
        let mut connection = self.connection.clone();
        Ok(connection.get(generation_key(model)).await?)
    }

    async fn set_current_generation(&self, model: &str, generation: u32) -> Result<()> {
        let mut connection = self.connection.clone();
        let _: () = connection.set(generation_key(model), generation).await?;
        Ok(())
    }
}
