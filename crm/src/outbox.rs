//! The CRM's glue to the shared [`outbox`] crate: its outbox names, enqueueing mandate
//! events, and the encoder that turns outbox rows into Avro `connection-mandates` records.
//!
//! What the outbox guarantees (per-key commit order, `event-id` / `event-seq` headers,
//! Kafka transactions under a fenced relay role, per-key hold-back) is documented in the
//! `outbox` crate; this module only plugs the CRM in.

use std::time::{Duration, Instant};

use outbox::{BoxError, NewEvent, Outbox, Relay, RelayConfig, Row};
use sqlx::postgres::PgConnectOptions;
use sqlx::{Postgres, Transaction};
use tokio::sync::watch;
use topics::codec::Encoder;
use topics::events::{ConnectionMandateChanged, Event};
use topics::registry::Registry;
use topics::settings::KafkaSettings;

/// The CRM's outbox: its NOTIFY channel, the relay's session lock ("crm_out") and the space
/// of the writers' per-connection locks ("crm").
pub const OUTBOX: Outbox = Outbox::new("crm_outbox", 0x0063_726d_5f6f_7574, 0x0063_726d);

/// How often the relay looks its schema id up again (see [`MandateEncoder`]).
const SCHEMA_RECHECK: Duration = Duration::from_secs(60);
/// How long a schema lookup may take before the relay keeps the id it has (or waits).
const REGISTRY_TIMEOUT: Duration = Duration::from_secs(5);

/// Writes `events` to the outbox of `tx`, holding each connection's advisory lock until
/// commit, so per connection the outbox id order is the commit order.
pub async fn enqueue(
    tx: &mut Transaction<'_, Postgres>,
    events: &[ConnectionMandateChanged],
) -> Result<(), sqlx::Error> {
    OUTBOX.enqueue(tx, &rows(events)?).await.map_err(into_sqlx)
}

/// [`enqueue`] without the per-connection locks, for the seed import: it writes hundreds of
/// connections in one transaction under the seed lock, before this instance serves requests.
pub async fn enqueue_unlocked(
    tx: &mut Transaction<'_, Postgres>,
    events: &[ConnectionMandateChanged],
) -> Result<(), sqlx::Error> {
    OUTBOX
        .enqueue_unlocked(tx, &rows(events)?)
        .await
        .map_err(into_sqlx)
}

/// The outbox rows of `events`, in their order.
pub(crate) fn rows(events: &[ConnectionMandateChanged]) -> Result<Vec<NewEvent>, sqlx::Error> {
    events
        .iter()
        .map(NewEvent::from_event)
        .collect::<Result<_, _>>()
        .map_err(into_sqlx)
}

fn into_sqlx(e: outbox::Error) -> sqlx::Error {
    match e {
        outbox::Error::Database(e) => e,
        other => sqlx::Error::Encode(Box::new(other)),
    }
}

/// The CRM's relay under `role` (its Kafka `transactional.id`).
pub fn relay(
    role: &str,
    database: PgConnectOptions,
    kafka: KafkaSettings,
    shutdown: watch::Receiver<bool>,
) -> Relay<MandateEncoder> {
    let encoder = MandateEncoder::new(&kafka.schema_registry_url);
    Relay::new(
        RelayConfig::new(role, OUTBOX),
        database,
        kafka,
        encoder,
        shutdown,
    )
}

/// Encodes outbox rows (JSON `ConnectionMandateChanged`) as Avro in the Confluent wire format
/// under the schema id `topics apply` registered.
///
/// Until the registry answers, the relay waits and events stay in the outbox while the API
/// keeps accepting writes. The platform's registry keeps schemas in memory: after a restart
/// `topics apply` registers them again, possibly under another id, so the id is looked up
/// again every minute; when the registry does not answer then, the id that worked is kept.
pub struct MandateEncoder {
    registry: Registry,
    encoder: Option<Encoder<ConnectionMandateChanged>>,
    checked: Instant,
}

impl MandateEncoder {
    pub fn new(registry_url: &str) -> Self {
        Self {
            registry: Registry::new(registry_url),
            encoder: None,
            checked: Instant::now(),
        }
    }

    async fn lookup(&self) -> Result<Encoder<ConnectionMandateChanged>, BoxError> {
        let lookup = Encoder::<ConnectionMandateChanged>::connect(&self.registry);
        match tokio::time::timeout(REGISTRY_TIMEOUT, lookup).await {
            Ok(Ok(encoder)) => Ok(encoder),
            Ok(Err(e)) => Err(Box::new(e)),
            Err(_) => {
                Err(format!("schema registry did not answer within {REGISTRY_TIMEOUT:?}").into())
            }
        }
    }
}

impl outbox::Encode for MandateEncoder {
    async fn prepare(&mut self) -> Result<(), BoxError> {
        match &self.encoder {
            None => {
                self.encoder = Some(self.lookup().await?);
                self.checked = Instant::now();
            }
            Some(current) if self.checked.elapsed() >= SCHEMA_RECHECK => {
                let old = current.schema_id();
                self.checked = Instant::now();
                match self.lookup().await {
                    Ok(fresh) => {
                        if fresh.schema_id() != old {
                            tracing::warn!(
                                old,
                                new = fresh.schema_id(),
                                "the registry has the mandate schema under a new id; using it"
                            );
                        }
                        self.encoder = Some(fresh);
                    }
                    Err(e) => {
                        tracing::warn!(error = %e, schema_id = old, "schema id not rechecked; keeping it");
                    }
                }
            }
            Some(_) => {}
        }
        Ok(())
    }

    fn encode(&self, row: &Row) -> Result<Vec<u8>, BoxError> {
        if row.topic != ConnectionMandateChanged::TOPIC.name {
            return Err(format!("the CRM publishes no events to topic {}", row.topic).into());
        }
        let encoder = self
            .encoder
            .as_ref()
            .ok_or("the mandate schema id is not known yet")?;
        let event: ConnectionMandateChanged = serde_json::from_value(row.payload.clone())?;
        Ok(encoder.encode(&event)?)
    }
}
