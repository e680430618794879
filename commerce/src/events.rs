//! Domain events leave through the shared transactional outbox (`outbox` crate): a service
//! writes them in the transaction of the change they describe, and its relay publishes them
//! as Avro in the Confluent wire format. The products database carries stock events, the
//! orders database order events; each has its own `outbox` table and relay.

use std::marker::PhantomData;
use std::time::{Duration, Instant};

use outbox::{BoxError, Encode, NewEvent, Outbox, Row};
use sqlx::{Postgres, Transaction};
use topics::codec::Encoder;
use topics::events::Event;
use topics::registry::Registry;

/// The products database's outbox: stock reserved, released, adjusted.
pub const PRODUCTS_OUTBOX: Outbox = Outbox::new(
    "commerce_products_outbox",
    0x636f_6d6d_7072_6f64, // "commprod"
    0x6370_726f,           // "cpro"
);

/// The orders database's outbox: orders placed, status changes.
pub const ORDERS_OUTBOX: Outbox = Outbox::new(
    "commerce_orders_outbox",
    0x636f_6d6d_6f72_6473, // "commords"
    0x636f_7264,           // "cord"
);

/// Writes `events` to `outbox` within `tx`; they exist exactly when `tx` commits.
pub async fn record<E: Event>(
    outbox: &Outbox,
    tx: &mut Transaction<'_, Postgres>,
    events: &[E],
) -> Result<(), outbox::Error> {
    let rows = events
        .iter()
        .map(NewEvent::from_event)
        .collect::<Result<Vec<_>, _>>()?;
    outbox.enqueue(tx, &rows).await
}

/// How often the relay's encoder looks its schema id up again: the platform's registry keeps
/// schemas in memory and may hand out another id after a restart and `topics apply`.
const SCHEMA_RECHECK: Duration = Duration::from_secs(60);

/// Encodes outbox rows of event type `E` as Avro under the id the registry has for `E`'s
/// schema. Rows whose payload is not an `E` hold their key back (the relay never skips).
pub struct AvroEncoder<E: Event> {
    registry: Registry,
    encoder: Option<(Encoder<E>, Instant)>,
    event: PhantomData<fn(&E)>,
}

impl<E: Event> AvroEncoder<E> {
    pub fn new(schema_registry_url: &str) -> Self {
        Self {
            registry: Registry::new(schema_registry_url),
            encoder: None,
            event: PhantomData,
        }
    }
}

impl<E: Event> Encode for AvroEncoder<E> {
    async fn prepare(&mut self) -> Result<(), BoxError> {
        let stale = self
            .encoder
            .as_ref()
            .is_none_or(|(_, checked)| checked.elapsed() >= SCHEMA_RECHECK);
        if stale {
            match Encoder::<E>::connect(&self.registry).await {
                Ok(encoder) => self.encoder = Some((encoder, Instant::now())),
                // Keep the id that worked so far when the registry does not answer.
                Err(e) if self.encoder.is_some() => {
                    tracing::warn!(error = %e, topic = E::TOPIC.name, "schema id not rechecked; keeping it");
                }
                Err(e) => return Err(e.into()),
            }
        }
        Ok(())
    }

    fn encode(&self, row: &Row) -> Result<Vec<u8>, BoxError> {
        let (encoder, _) = self
            .encoder
            .as_ref()
            .ok_or("the encoder has no schema id yet")?;
        let event: E = serde_json::from_value(row.payload.clone())?;
        Ok(encoder.encode(&event)?)
    }
}
