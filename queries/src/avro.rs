//! Generic Avro decoding of Confluent-framed records: the writer schema is fetched from the
//! registry by the id in the record's header, once per id.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use apache_avro::reader::datum::GenericDatumReader;
use apache_avro::types::Value;
use apache_avro::Schema;
use topics::codec::split_header;
use topics::registry::Registry;

use crate::error::Result;

#[derive(Clone)]
pub struct Schemas {
    registry: Registry,
    cache: Arc<Mutex<HashMap<u32, Arc<Schema>>>>,
}

impl Schemas {
    pub fn new(registry: Registry) -> Self {
        Self {
            registry,
            cache: Arc::default(),
        }
    }

    pub fn registry(&self) -> &Registry {
        &self.registry
    }

    /// The record as a generic Avro value, read with the schema it was written with.
    pub async fn decode(&self, payload: &[u8]) -> Result<Value> {
        let (id, mut datum) = split_header(payload)?;
        let cached = self
            .cache
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .get(&id)
            .cloned();
        let schema = match cached {
            Some(schema) => schema,
            None => {
                let text = self.registry.schema_by_id(id).await?;
                let schema = Arc::new(Schema::parse_str(&text)?);
                self.cache
                    .lock()
                    .unwrap_or_else(|p| p.into_inner())
                    .insert(id, schema.clone());
                schema
            }
        };
        let reader = GenericDatumReader::builder(&schema).build()?;
        Ok(reader.read_value(&mut datum)?)
    }
}
