//! The Confluent wire format: magic byte 0, the schema id as a big-endian u32, then the Avro
//! datum. Encoding and decoding take apache-avro's schema-aware serde path and touch the
//! registry only the first time they meet a schema id.

use std::collections::HashMap;
use std::marker::PhantomData;
use std::sync::{Arc, RwLock};

use apache_avro::reader::datum::GenericDatumReader;
use apache_avro::writer::datum::GenericDatumWriter;
use apache_avro::{from_value, Schema};

use crate::error::{Error, Result};
use crate::events::Event;
use crate::registry::Registry;

const MAGIC_BYTE: u8 = 0;
const HEADER_LEN: usize = 5;

/// Splits a wire-format payload into its schema id and Avro datum.
pub fn split_header(payload: &[u8]) -> Result<(u32, &[u8])> {
    match payload {
        [MAGIC_BYTE, a, b, c, d, datum @ ..] => Ok((u32::from_be_bytes([*a, *b, *c, *d]), datum)),
        [] => Err(Error::WireFormat("empty payload".to_owned())),
        [MAGIC_BYTE, ..] => Err(Error::WireFormat(format!(
            "{} bytes is shorter than the {HEADER_LEN}-byte header",
            payload.len()
        ))),
        [other, ..] => Err(Error::WireFormat(format!("magic byte is {other}, not 0"))),
    }
}

/// A buffer holding the wire-format header for `schema_id`, with room for a `capacity`-byte
/// datum to be appended: the one place the header is written (this crate's [`Encoder`], the
/// connector's hand-written Avro).
pub fn framed(schema_id: u32, capacity: usize) -> Vec<u8> {
    let mut payload = Vec::with_capacity(HEADER_LEN + capacity);
    payload.push(MAGIC_BYTE);
    payload.extend_from_slice(&schema_id.to_be_bytes());
    payload
}

/// Encodes events of type `E` under the schema id their subject has in the registry.
pub struct Encoder<E: Event> {
    schema_id: u32,
    writer: GenericDatumWriter<'static>,
    event: PhantomData<fn(&E)>,
}

impl<E: Event> Encoder<E> {
    /// Binds to the id under which `E`'s schema is registered for its topic. Services never
    /// register schemas themselves: `topics apply` does, after checking compatibility.
    pub async fn connect(registry: &Registry) -> Result<Self> {
        let subject = E::TOPIC.value_subject();
        let registered = registry
            .lookup(&subject, E::TOPIC.value_schema.unwrap_or_default())
            .await?
            .ok_or_else(|| Error::Registry {
                url: registry.base_url().to_owned(),
                message: format!("{subject} does not have this schema yet; run `topics apply`"),
            })?;
        Self::with_schema_id(registered.id)
    }

    /// An encoder for a schema id the caller already knows.
    pub fn with_schema_id(schema_id: u32) -> Result<Self> {
        // Human-readable serde makes `Uuid` a string, as the schema's `uuid` logical type wants.
        let writer = GenericDatumWriter::builder(E::schema())
            .human_readable(true)
            .build()?;
        Ok(Self {
            schema_id,
            writer,
            event: PhantomData,
        })
    }

    pub fn schema_id(&self) -> u32 {
        self.schema_id
    }

    pub fn encode(&self, event: &E) -> Result<Vec<u8>> {
        let mut payload = framed(self.schema_id, 64);
        self.writer.write_ser(&mut payload, event)?;
        Ok(payload)
    }
}

/// A writer schema met on the topic, with a reader prepared for it.
struct WriterSchema {
    reader: GenericDatumReader<'static>,
    /// Whether records written with it can be deserialized straight into `E`, skipping
    /// schema resolution.
    same_as_reader: bool,
}

/// Decodes events of type `E` written with any schema the registry knows that resolves to
/// `E`'s schema (Avro schema evolution).
pub struct Decoder<E: Event> {
    registry: Registry,
    writers: RwLock<HashMap<u32, Arc<WriterSchema>>>,
    event: PhantomData<fn() -> E>,
}

impl<E: Event> Decoder<E> {
    pub fn new(registry: Registry) -> Self {
        Self {
            registry,
            writers: RwLock::default(),
            event: PhantomData,
        }
    }

    pub async fn decode(&self, payload: &[u8]) -> Result<E> {
        let (schema_id, mut datum) = split_header(payload)?;
        let writer = match self.cached(schema_id) {
            Some(writer) => writer,
            None => self.fetch(schema_id).await?,
        };
        if writer.same_as_reader {
            Ok(writer.reader.read_deser(&mut datum)?)
        } else {
            Ok(from_value(&writer.reader.read_value(&mut datum)?)?)
        }
    }

    fn cached(&self, schema_id: u32) -> Option<Arc<WriterSchema>> {
        self.writers
            .read()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
            .get(&schema_id)
            .cloned()
    }

    async fn fetch(&self, schema_id: u32) -> Result<Arc<WriterSchema>> {
        let text = self.registry.schema_by_id(schema_id).await?;
        // Readers borrow their schema. A topic sees a handful of schema versions in a
        // process's lifetime, so each is parsed once and kept for good.
        let schema: &'static Schema = Box::leak(Box::new(Schema::parse_str(&text)?));
        let same_as_reader = schema.canonical_form() == E::schema().canonical_form();
        let reader = if same_as_reader {
            GenericDatumReader::builder(schema)
                .human_readable(true)
                .build()?
        } else {
            GenericDatumReader::builder(schema)
                .reader_schema(E::schema())
                .human_readable(true)
                .build()?
        };
        let writer = Arc::new(WriterSchema {
            reader,
            same_as_reader,
        });
        self.writers
            .write()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
            .insert(schema_id, writer.clone());
        Ok(writer)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn header_is_split_from_datum() {
        let (id, datum) = split_header(&[0, 0, 0, 1, 2, 9, 9]).unwrap();
        assert_eq!(id, 258);
        assert_eq!(datum, &[9, 9]);
    }

    #[test]
    fn a_framed_buffer_splits_back_into_its_id_and_datum() {
        let mut payload = framed(0x0102_0304, 2);
        assert_eq!(payload, [0, 1, 2, 3, 4]);
        payload.extend_from_slice(&[7, 8]);
        assert_eq!(
            split_header(&payload).unwrap(),
            (0x0102_0304, &[7u8, 8][..])
        );
    }

    #[test]
    fn payloads_not_in_wire_format_are_refused() {
        assert!(split_header(&[]).is_err());
        assert!(split_header(&[0, 0, 1]).is_err());
        let err = split_header(b"{\"").unwrap_err();
        assert!(err.to_string().contains("magic byte is 123"), "{err}");
    }
}
