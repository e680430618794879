//! `commerce watch`: waits for a domain event on its topic and prints it decoded, as JSON
//! (for `scripts/demo` and for operators looking at what the services publish).

use std::time::Duration;

use anyhow::{bail, Context};
use rdkafka::consumer::{Consumer, StreamConsumer};
use rdkafka::message::Message;
use rdkafka::{Offset, TopicPartitionList};
use serde::Serialize;
use tokio::time::Instant;
use topics::codec::Decoder;
use topics::commerce::{OrderEvent, StockEvent};
use topics::events::Event;
use topics::kafka::consumer_config;
use topics::registry::Registry;
use topics::settings::KafkaSettings;

#[derive(Debug, Clone, Copy, clap::ValueEnum)]
pub enum Topic {
    /// `commerce.order-events`, keyed by order id.
    OrderEvents,
    /// `commerce.stock-events`, keyed by product id.
    StockEvents,
}

#[derive(Debug, clap::Args)]
pub struct Watch {
    #[arg(value_enum)]
    topic: Topic,
    /// The record key: an order id or a product id.
    #[arg(long)]
    key: String,
    /// Only stock events of this order.
    #[arg(long)]
    order: Option<uuid::Uuid>,
    /// Give up after this many seconds.
    #[arg(long, default_value_t = 30)]
    timeout: u64,
}

impl Watch {
    /// Reads the topic from its beginning and prints the first matching event.
    pub async fn run(self, kafka: &KafkaSettings) -> anyhow::Result<()> {
        match self.topic {
            Topic::OrderEvents => self.first::<OrderEvent>(kafka, |_| true).await,
            Topic::StockEvents => {
                let order = self.order;
                self.first::<StockEvent>(kafka, move |e| order.is_none() || e.order_id == order)
                    .await
            }
        }
    }

    async fn first<E: Event + Serialize>(
        &self,
        kafka: &KafkaSettings,
        wanted: impl Fn(&E) -> bool,
    ) -> anyhow::Result<()> {
        let group = format!("commerce-watch-{}", uuid::Uuid::new_v4().simple());
        let consumer: StreamConsumer = consumer_config(kafka, &group).create()?;
        let mut assignment = TopicPartitionList::new();
        for partition in 0..E::TOPIC.partitions {
            assignment.add_partition_offset(E::TOPIC.name, partition, Offset::Beginning)?;
        }
        consumer.assign(&assignment)?;
        let decoder = Decoder::<E>::new(Registry::new(&kafka.schema_registry_url));
        let deadline = Instant::now() + Duration::from_secs(self.timeout);
        loop {
            let Ok(message) = tokio::time::timeout_at(deadline, consumer.recv()).await else {
                bail!(
                    "no matching event for key {} on {} within {} s",
                    self.key,
                    E::TOPIC.name,
                    self.timeout
                );
            };
            let message = message.context("reading the topic")?;
            if message.key() != Some(self.key.as_bytes()) {
                continue;
            }
            let event = decoder
                .decode(message.payload().unwrap_or_default())
                .await
                .context("decoding with the registry's schema")?;
            if wanted(&event) {
                println!(
                    "{} partition {} offset {}: {}",
                    E::TOPIC.name,
                    message.partition(),
                    message.offset(),
                    serde_json::to_string(&event)?
                );
                return Ok(());
            }
        }
    }
}
