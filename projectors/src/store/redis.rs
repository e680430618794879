//! Read models in Redis: one string key per document (`<namespace>:doc:<key>`, JSON), one
//! hash of applied offsets per read model (`<namespace>:offsets`, field `<topic>:<partition>`)
//! and one hash of per-key sequences (`<namespace>:seqs`, field = document key).

use redis::aio::ConnectionManager;
use redis::{AsyncCommands, Script};
use serde_json::Value;

use crate::error::{Error, Result};
use crate::projection::Change;
use crate::store::{PartitionBatch, Store, Stored, StoredJson};

/// Applies a batch and its offset in one script run, which Redis executes atomically.
/// KEYS: offsets hash, sequences hash. ARGV: offsets field, document key prefix, last offset,
/// expected recorded offset ('' = none), then (offset, sequence or '', op, key, value)
/// quintuples. Returns {1, recorded} when applied, {0, recorded} when the recorded offset is
/// not the expected one. Changes at or below the recorded offset were applied by an earlier
/// delivery; changes at or below their key's stored sequence are re-sent events.
///
/// The changes are decided in order in Lua (sequences read with one HMGET per 500 keys) and
/// then written with one MSET, DEL and HSET per 500 keys, instead of a call per change: the
/// calls, not the Lua, are most of the script's time.
const APPLY_BATCH: &str = r"
local recorded = redis.call('HGET', KEYS[1], ARGV[1]) or ''
if recorded ~= ARGV[4] then
  return {0, recorded}
end
local applied = tonumber(recorded) or -1
local prefix = ARGV[2]
local chunk = 500
local function each_chunk(list, width, call)
  for c = 1, #list, width do
    call(unpack(list, c, math.min(c + width - 1, #list)))
  end
end
local wanted, asked = {}, {}
for i = 5, #ARGV, 5 do
  local key = ARGV[i + 3]
  if ARGV[i + 1] ~= '' and not asked[key] and tonumber(ARGV[i]) > applied then
    asked[key] = true
    wanted[#wanted + 1] = key
  end
end
local seqs = {}
for c = 1, #wanted, chunk do
  local last = math.min(c + chunk - 1, #wanted)
  local values = redis.call('HMGET', KEYS[2], unpack(wanted, c, last))
  for j = c, last do
    local value = values[j - c + 1]
    if value then
      seqs[wanted[j]] = tonumber(value)
    end
  end
end
local docs, docs_order, new_seqs, seqs_order = {}, {}, {}, {}
for i = 5, #ARGV, 5 do
  if tonumber(ARGV[i]) > applied then
    local key = ARGV[i + 3]
    local fresh = true
    local seq = ARGV[i + 1]
    if seq ~= '' then
      local stored = seqs[key]
      if stored and stored >= tonumber(seq) then
        fresh = false
      else
        seqs[key] = tonumber(seq)
        if new_seqs[key] == nil then
          seqs_order[#seqs_order + 1] = key
        end
        new_seqs[key] = seq
      end
    end
    if fresh then
      if docs[key] == nil then
        docs_order[#docs_order + 1] = key
      end
      if ARGV[i + 2] == 'put' then
        docs[key] = ARGV[i + 4]
      else
        docs[key] = false
      end
    end
  end
end
local puts, dels, fields = {}, {}, {}
for _, key in ipairs(docs_order) do
  local value = docs[key]
  if value then
    puts[#puts + 1] = prefix .. key
    puts[#puts + 1] = value
  else
    dels[#dels + 1] = prefix .. key
  end
end
for _, key in ipairs(seqs_order) do
  fields[#fields + 1] = key
  fields[#fields + 1] = new_seqs[key]
end
each_chunk(puts, 2 * chunk, function(...) redis.call('MSET', ...) end)
each_chunk(dels, chunk, function(...) redis.call('DEL', ...) end)
each_chunk(fields, 2 * chunk, function(...) redis.call('HSET', KEYS[2], ...) end)
if tonumber(ARGV[3]) > applied then
  redis.call('HSET', KEYS[1], ARGV[1], ARGV[3])
  return {1, ARGV[3]}
end
return {1, recorded}
";

#[derive(Clone)]
pub struct RedisStore {
    connection: ConnectionManager,
    offsets_key: String,
    sequences_key: String,
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
            sequences_key: format!("{namespace}:seqs"),
            document_prefix: format!("{namespace}:doc:"),
            script: Script::new(APPLY_BATCH),
        })
    }
}

impl Store for RedisStore {
    async fn write(&self, batch: &PartitionBatch) -> Result<i64> {
        let mut invocation = self.script.key(&self.offsets_key);
        invocation
            .key(&self.sequences_key)
            .arg(format!("{}:{}", batch.topic, batch.partition))
            .arg(&self.document_prefix)
            .arg(batch.last_offset)
            .arg(
                batch
                    .expected_offset
                    .map(|o| o.to_string())
                    .unwrap_or_default(),
            );
        for write in &batch.changes {
            let sequence = write.sequence.map(|s| s.to_string()).unwrap_or_default();
            invocation.arg(write.offset).arg(sequence);
            match &write.change {
                Change::Put { key, document } => {
                    invocation.arg("put").arg(key).arg(document.to_string())
                }
                Change::PutJson { key, json } => invocation.arg("put").arg(key).arg(json),
                Change::Delete { key } => invocation.arg("del").arg(key).arg(""),
            };
        }
        let mut connection = self.connection.clone();
        let (applied, recorded): (i64, String) = invocation.invoke_async(&mut connection).await?;
        let recorded = recorded.parse::<i64>().ok();
        match (applied, recorded) {
            (1, Some(offset)) => Ok(offset),
            _ => Err(Error::OffsetMoved {
                topic: batch.topic.clone(),
                partition: batch.partition,
                expected: batch.expected_offset,
                found: recorded,
            }),
        }
    }

    /// Redis takes keys and values up to 512 MB: nothing a read model writes is refused.
    fn limits_documents(&self) -> bool {
        false
    }

    fn refuses(&self, _change: &Change) -> Option<String> {
        None
    }

    fn refuses_document(&self, _key: &str, _document: Option<&Value>) -> Option<String> {
        None
    }

    fn refuses_json(&self, _key: &str, _json: Option<&str>) -> Option<String> {
        None
    }

    async fn load_json(&self, keys: &[&str]) -> Result<Vec<StoredJson>> {
        if keys.is_empty() {
            return Ok(Vec::new());
        }
        let documents: Vec<String> = keys
            .iter()
            .map(|key| format!("{}{key}", self.document_prefix))
            .collect();
        let mut connection = self.connection.clone();
        let (texts, sequences): (Vec<Option<String>>, Vec<Option<i64>>) = redis::pipe()
            .cmd("MGET")
            .arg(&documents)
            .cmd("HMGET")
            .arg(&self.sequences_key)
            .arg(keys)
            .query_async(&mut connection)
            .await?;
        Ok(texts
            .into_iter()
            .zip(sequences)
            .map(|(json, sequence)| StoredJson { json, sequence })
            .collect())
    }

    async fn load(&self, keys: &[&str]) -> Result<Vec<Stored>> {
        if keys.is_empty() {
            return Ok(Vec::new());
        }
        let documents: Vec<String> = keys
            .iter()
            .map(|key| format!("{}{key}", self.document_prefix))
            .collect();
        let mut connection = self.connection.clone();
        let (texts, sequences): (Vec<Option<String>>, Vec<Option<i64>>) = redis::pipe()
            .cmd("MGET")
            .arg(&documents)
            .cmd("HMGET")
            .arg(&self.sequences_key)
            .arg(keys)
            .query_async(&mut connection)
            .await?;
        keys.iter()
            .zip(texts.into_iter().zip(sequences))
            .map(|(key, (text, sequence))| {
                let document = text
                    .map(|t| serde_json::from_str(&t))
                    .transpose()
                    .map_err(|e| Error::Store {
                        backend: "redis",
                        message: format!("document {key}: {e}"),
                    })?;
                Ok(Stored { document, sequence })
            })
            .collect()
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
        // Offsets and sequences go first: a clear interrupted half-way must leave documents
        // without offsets (a replay restores them), never offsets that skip deleted documents.
        let _: () = connection
            .del(&[&self.offsets_key, &self.sequences_key])
            .await?;
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
