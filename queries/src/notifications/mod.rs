//! The `notifications` service (default 127.0.0.1:3015): the low-stock and critical-stock
//! business events, newest first (`GET /notifications`); `GET /metrics` (Prometheus text).
//!
//! A business event is a product *entering* a condition: an `added` result change of the
//! low-stock or critical-stock query (changes while inside it do not exist; leaving it is a
//! `deleted` change, which ends the condition but is no notification). The list is rebuilt at
//! start from the queries' **history** topics (`queries.<query>.history`): every change, as
//! on the compacted result topic and written in the same transaction, but not compacted, so
//! every entry into a condition is still listed after compaction has kept only the newest
//! change per product on the result topic.

use std::sync::{Arc, RwLock};

use axum::extract::State;
use axum::routing::get;
use axum::{Json, Router};
use serde::{Deserialize, Serialize};
use serde_json::Value;
use topics::registry::Registry;
use topics::settings::KafkaSettings;

use crate::avro::Schemas;
use crate::declared::{CRITICAL_STOCK, LOW_STOCK};
use crate::results::{self, Op, ResultChange};
use crate::row::row_json;
use crate::settings::history_topic;

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Settings {
    #[serde(flatten)]
    pub kafka: KafkaSettings,
    pub notifications_listen_addr: String,
    pub queries_topic_prefix: String,
}

impl Default for Settings {
    fn default() -> Self {
        Self {
            kafka: KafkaSettings::default(),
            notifications_listen_addr: "127.0.0.1:3015".to_owned(),
            queries_topic_prefix: "queries".to_owned(),
        }
    }
}

/// One business event.
#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Notification {
    /// `low-stock` or `critical-stock`.
    pub kind: &'static str,
    pub seq: u64,
    pub product: Value,
    pub at: i64,
}

/// The notification a result change is, if it is one.
pub fn notification(kind: &'static str, change: &ResultChange) -> Option<Notification> {
    let query = crate::declared::find(kind)?;
    match (change.op, &change.after) {
        (Op::Added, Some(row)) => Some(Notification {
            kind,
            seq: change.seq,
            product: row_json(query.columns, row),
            at: change.emitted_at_ms,
        }),
        _ => None,
    }
}

type List = Arc<RwLock<Vec<Notification>>>;

pub async fn serve(
    settings: Settings,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
) -> anyhow::Result<()> {
    let schemas = Schemas::new(Registry::new(&settings.kafka.schema_registry_url));
    let kinds = [&LOW_STOCK, &CRITICAL_STOCK];
    let mut feed = results::follow(
        &settings.kafka,
        schemas,
        kinds
            .iter()
            .map(|q| {
                let topic = history_topic(&settings.queries_topic_prefix, q)
                    .expect("the stock queries have a history topic (checked by declared::tests)");
                (*q, topic)
            })
            .collect(),
    )?;
    let list: List = Arc::default();
    let filling = list.clone();
    tokio::spawn(async move {
        while let Some((index, change)) = feed.recv().await {
            if let Some(n) = notification(kinds[index].name, &change) {
                filling.write().unwrap_or_else(|p| p.into_inner()).push(n);
            }
        }
    });
    let app = telemetry::http::instrument(
        Router::new()
            .route("/notifications", get(newest_first))
            .route("/health", get(|| async { "ok" }))
            .with_state(list),
    );
    let listener = tokio::net::TcpListener::bind(&settings.notifications_listen_addr).await?;
    tracing::info!(addr = %settings.notifications_listen_addr, "notifications serving");
    axum::serve(listener, app)
        .with_graceful_shutdown(shutdown)
        .await?;
    Ok(())
}

/// `GET /notifications`: newest first.
async fn newest_first(State(list): State<List>) -> Json<Vec<Notification>> {
    let mut all = list.read().unwrap_or_else(|p| p.into_inner()).clone();
    all.sort_by(|a, b| (b.at, b.seq, b.kind).cmp(&(a.at, a.seq, a.kind)));
    Json(all)
}
