//! Domain events leave through the shared transactional outbox (`outbox` crate): a service
//! writes them in the transaction of the change they describe, and its relay publishes them
//! as Avro in the Confluent wire format. The products database carries stock events, the
//! orders database order events; each has its own `outbox` table and relay.

use std::marker::PhantomData;
use std::time::{Duration, Instant};

use outbox::{BoxError, Encode, NewEvent, Outbox, Relay, RelayConfig, Row};
use sqlx::{Postgres, Transaction};
use tokio::sync::watch;
use tokio::task::JoinHandle;
use topics::codec::Encoder;
use topics::events::Event;
use topics::registry::Registry;

use crate::configuration::Settings;
use crate::Service;

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

/// Starts the outbox relay of `service`'s database, publishing its `E` events as Avro, unless
/// the settings turn relays off (`commerce_outbox_relay`). One relay role per database:
/// instances of one service fence each other, while two databases (say, two test runs)
/// never do.
pub fn spawn_relay<E: Event + Send + Sync + 'static>(
    settings: &Settings,
    service: Service,
    outbox: Outbox,
    stopped: &watch::Receiver<bool>,
    tasks: &mut Vec<JoinHandle<()>>,
) -> anyhow::Result<()> {
    if !settings.commerce_outbox_relay {
        return Ok(());
    }
    let role = format!("commerce-{}-outbox-relay", settings.database_name(service));
    tasks.push(tokio::spawn(
        Relay::new(
            RelayConfig::new(role, outbox),
            settings.database_options(service)?,
            settings.kafka.clone(),
            AvroEncoder::<E>::new(&settings.kafka.schema_registry_url),
            stopped.clone(),
        )
        .run(),
    ));
    Ok(())
}
