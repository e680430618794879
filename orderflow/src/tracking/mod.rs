//! Order tracking, the order flow's read model: every order's status as the order events
//! tell it, folded by the projector runtime from `commerce.order-events` into the MySQL store
//! (namespace `tracking_namespace`), and served over HTTP (`orderflow tracking`, default
//! 127.0.0.1:3021):
//!
//! - `GET /orders/{id}`: the order's document (status, customer, product, quantity, times,
//!   and `history`: how many of its events were folded and a hash chain over their ids).
//! - `GET /customers/{id}/orders`: the customer's orders (by order id), how many are in each
//!   status, and a [`Summary`]: orders, events and one hash chain over the orders' histories.
//! - `GET /health`: the projector's partitions, applied count and what it waits for.
//!
//! The document is keyed by the record's key (the order id), so the runtime's per-key
//! sequence guard skips events the relay sent twice, and the store records each partition's
//! offset with the documents in one transaction: a `kill -9` at any point redelivers, never
//! loses. The per-customer view is a query over the per-order documents rather than a second
//! document: a customer's orders are spread over partitions, so a per-customer hash chain
//! folded in arrival order would depend on how the partitions interleaved; chaining the
//! orders' own chains in order-id order does not, and still depends on every event.
//!
//! Test hook: `tracking_break = offset-first` records each batch's offset before its
//! documents are written, which then lag up to [`DEFERRED_FLUSH`] behind (the bug of a
//! projector that commits before it writes); `scripts/chaos` must catch it.

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;
use std::time::Duration;

use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::{Json, Router};
use projectors::digest::Digest;
use projectors::runtime::ProjectorStatus;
use projectors::store::mysql::{table_prefix, MysqlStore};
use projectors::store::{PartitionBatch, Store, Stored, StoredJson};
use projectors::{Change, Projection, Projector, ProjectorSettings};
use serde::{Deserialize, Serialize};
use serde_json::{json, Value};
use sqlx::mysql::MySqlPool;
use tokio::net::TcpListener;
use tokio::sync::watch;
use topics::commerce::{OrderEvent, OrderEventKind};
use topics::events::Event;
use uuid::Uuid;

use crate::configuration::Settings;
use crate::error::{Error, Result};

/// How long documents wait behind their offset under `tracking_break = offset-first`.
pub const DEFERRED_FLUSH: Duration = Duration::from_secs(2);

/// One order as the read model has it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct OrderView {
    pub order_id: Uuid,
    pub customer_id: i64,
    pub product_id: i64,
    pub quantity: i32,
    pub status: String,
    /// When it was placed (ms since the epoch), once a PLACED event was folded.
    pub placed_at: Option<i64>,
    /// The last event's time (ms since the epoch).
    pub updated_at: i64,
    /// The order's events folded so far, and a hash chain over their ids.
    pub history: Digest,
}

pub struct TrackingProjection;

impl Projection for TrackingProjection {
    type Event = OrderEvent;
    type Document = OrderView;

    fn name(&self) -> &str {
        "order-tracking"
    }

    /// The order id: the record's key, so re-sent events are skipped by their sequence.
    fn key(&self, event: &OrderEvent) -> String {
        event.order_id.to_string()
    }

    fn fold(&self, state: Option<&OrderView>, event: &OrderEvent) -> Option<OrderView> {
        let mut view = state.cloned().unwrap_or_else(|| OrderView {
            order_id: event.order_id,
            customer_id: event.customer_id,
            product_id: event.product_id,
            quantity: event.quantity,
            status: String::new(),
            placed_at: None,
            updated_at: event.occurred_at,
            history: Digest::default(),
        });
        view.status = event.status.as_str().to_owned();
        view.updated_at = event.occurred_at;
        if event.kind == OrderEventKind::Placed {
            view.placed_at = Some(event.occurred_at);
        }
        view.history = view.history.push(&event.event_id.to_string());
        Some(view)
    }
}

/// A customer's orders in one figure: how many orders and events, and a hash chain over
/// `"<order id>:<events>:<chain>"` of each order in order-id order. Equal summaries mean
/// the same events of the same orders, each once, in their order.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Summary {
    pub orders: u64,
    pub events: u64,
    pub chain: String,
}

impl Summary {
    /// The summary of orders given as (order id, its history), in any order.
    pub fn of<'a>(orders: impl IntoIterator<Item = (Uuid, &'a Digest)>) -> Self {
        let sorted: BTreeMap<Uuid, &Digest> = orders.into_iter().collect();
        let mut chain = Digest::default();
        let mut events = 0;
        for (order, history) in &sorted {
            events += history.events;
            chain = chain.push(&format!("{order}:{}:{}", history.events, history.chain));
        }
        Self {
            orders: sorted.len() as u64,
            events,
            chain: chain.chain,
        }
    }
}

/// The store under the read model: [`MysqlStore`], or, under the `offset-first` test hook,
/// the same store with each batch's offset recorded before its documents are written.
#[derive(Clone)]
pub struct TrackingStore {
    inner: MysqlStore,
    /// `Some` under the `offset-first` hook: documents whose offsets are recorded already.
    deferred: Option<Arc<tokio::sync::Mutex<Vec<Change>>>>,
    documents: String,
}

impl TrackingStore {
    pub async fn connect(settings: &Settings) -> Result<Self> {
        let inner = MysqlStore::connect(&settings.mysql_url, &settings.tracking_namespace)
            .await
            .map_err(projector_error)?;
        let deferred = match settings.tracking_break.trim() {
            "" => None,
            "offset-first" => {
                tracing::warn!("tracking_break=offset-first: offsets recorded before documents (broken on purpose)");
                Some(Arc::default())
            }
            other => {
                return Err(Error::Permanent(format!(
                    "tracking_break must be empty or offset-first, not {other:?}"
                )))
            }
        };
        let store = Self {
            inner,
            deferred,
            documents: documents_table(&settings.tracking_namespace),
        };
        if store.deferred.is_some() {
            let flusher = store.clone();
            tokio::spawn(async move {
                loop {
                    tokio::time::sleep(DEFERRED_FLUSH).await;
                    if let Err(e) = flusher.flush().await {
                        tracing::warn!(error = %e, "deferred documents not written");
                    }
                }
            });
        }
        Ok(store)
    }

    pub fn pool(&self) -> &MySqlPool {
        self.inner.pool()
    }

    /// Writes the deferred documents (the `offset-first` hook only), each on its own.
    async fn flush(&self) -> projectors::Result<()> {
        let Some(deferred) = &self.deferred else {
            return Ok(());
        };
        let mut deferred = deferred.lock().await;
        for change in deferred.iter() {
            let (key, json) = match change {
                Change::Put { key, document } => (key, document.to_string()),
                Change::PutJson { key, json } => (key, json.clone()),
                Change::Delete { .. } => continue,
            };
            sqlx::query(&format!(
                "INSERT INTO {} (doc_key, document) VALUES (?, ?)
                 ON DUPLICATE KEY UPDATE document = VALUES(document)",
                self.documents
            ))
            .bind(key)
            .bind(json)
            .execute(self.inner.pool())
            .await?;
        }
        deferred.clear();
        Ok(())
    }
}

fn projector_error(e: projectors::Error) -> Error {
    Error::Permanent(format!("tracking store: {e}"))
}

impl Store for TrackingStore {
    async fn write(&self, batch: &PartitionBatch) -> projectors::Result<i64> {
        let Some(deferred) = &self.deferred else {
            return self.inner.write(batch).await;
        };
        // BROKEN ON PURPOSE (test hook): the offset first, the documents later.
        self.flush().await?;
        let offset_only = PartitionBatch {
            changes: Vec::new(),
            ..batch.clone()
        };
        let recorded = self.inner.write(&offset_only).await?;
        deferred
            .lock()
            .await
            .extend(batch.changes.iter().map(|w| w.change.clone()));
        Ok(recorded)
    }

    fn refuses(&self, change: &Change) -> Option<String> {
        self.inner.refuses(change)
    }

    async fn applied_offset(&self, topic: &str, partition: i32) -> projectors::Result<Option<i64>> {
        self.inner.applied_offset(topic, partition).await
    }

    async fn get(&self, key: &str) -> projectors::Result<Option<Value>> {
        self.flush().await?;
        self.inner.get(key).await
    }

    async fn load(&self, keys: &[&str]) -> projectors::Result<Vec<Stored>> {
        self.flush().await?;
        self.inner.load(keys).await
    }

    async fn load_json(&self, keys: &[&str]) -> projectors::Result<Vec<StoredJson>> {
        self.flush().await?;
        self.inner.load_json(keys).await
    }

    async fn clear(&self) -> projectors::Result<()> {
        self.inner.clear().await
    }

    async fn current_generation(&self, model: &str) -> projectors::Result<Option<u32>> {
        self.inner.current_generation(model).await
    }

    async fn set_current_generation(&self, model: &str, generation: u32) -> projectors::Result<()> {
        self.inner.set_current_generation(model, generation).await
    }
}

/// The documents table of `namespace` in the MySQL store.
pub fn documents_table(namespace: &str) -> String {
    format!("`{}_documents`", table_prefix(namespace))
}

/// Reads of the read model, for the HTTP handlers and the chaos checks.
#[derive(Clone)]
pub struct Reader {
    pub pool: MySqlPool,
    pub documents: String,
}

/// A customer's orders as `GET /customers/{id}/orders` answers them.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct CustomerOrders {
    pub customer_id: i64,
    pub by_status: BTreeMap<String, u64>,
    pub summary: Summary,
    pub orders: Vec<OrderView>,
}

impl Reader {
    pub async fn order(&self, order: Uuid) -> Result<Option<OrderView>> {
        let row: Option<sqlx::types::Json<OrderView>> = sqlx::query_scalar(&format!(
            "SELECT document FROM {} WHERE doc_key = ?",
            self.documents
        ))
        .bind(order.to_string())
        .fetch_optional(&self.pool)
        .await
        .or_else(no_table)?;
        Ok(row.map(|d| d.0))
    }

    pub async fn customer(&self, customer: i64) -> Result<CustomerOrders> {
        let rows: Vec<sqlx::types::Json<OrderView>> = sqlx::query_scalar(&format!(
            "SELECT document FROM {} WHERE JSON_VALUE(document, '$.customerId') = ? ORDER BY doc_key",
            self.documents
        ))
        .bind(customer)
        .fetch_all(&self.pool)
        .await
        .or_else(no_table)?;
        let orders: Vec<OrderView> = rows.into_iter().map(|d| d.0).collect();
        let mut by_status = BTreeMap::new();
        for order in &orders {
            *by_status.entry(order.status.clone()).or_default() += 1;
        }
        Ok(CustomerOrders {
            customer_id: customer,
            by_status,
            summary: Summary::of(orders.iter().map(|o| (o.order_id, &o.history))),
            orders,
        })
    }
}

/// A table not created yet reads as empty.
fn no_table<T: Default>(e: sqlx::Error) -> std::result::Result<T, sqlx::Error> {
    match &e {
        sqlx::Error::Database(db) if db.code().as_deref() == Some("42S02") => Ok(T::default()),
        _ => Err(e),
    }
}

#[derive(Clone)]
struct Served {
    reader: Reader,
    status: Arc<ProjectorStatus>,
}

fn unavailable(e: Error) -> Response {
    tracing::warn!(error = %e, "tracking read failed");
    (
        StatusCode::SERVICE_UNAVAILABLE,
        Json(json!({ "error": "the tracking read model did not answer; try again" })),
    )
        .into_response()
}

fn bad_request(message: String) -> Response {
    (StatusCode::BAD_REQUEST, Json(json!({ "error": message }))).into_response()
}

async fn read_order(State(served): State<Served>, Path(id): Path<String>) -> Response {
    let Ok(order) = id.parse::<Uuid>() else {
        return bad_request(format!("order id {id:?} is not a UUID"));
    };
    match served.reader.order(order).await {
        Ok(Some(view)) => Json(view).into_response(),
        Ok(None) => (
            StatusCode::NOT_FOUND,
            Json(json!({ "error": format!("no order {order} in the read model (yet)") })),
        )
            .into_response(),
        Err(e) => unavailable(e),
    }
}

async fn read_customer(State(served): State<Served>, Path(id): Path<String>) -> Response {
    let Ok(customer) = id.parse::<i64>() else {
        return bad_request(format!("customer id {id:?} is not a number"));
    };
    match served.reader.customer(customer).await {
        Ok(orders) => Json(orders).into_response(),
        Err(e) => unavailable(e),
    }
}

async fn health(State(served): State<Served>) -> Json<Value> {
    let status = &served.status;
    let waiting = status.waiting();
    Json(json!({
        "status": if waiting.is_some() { "waiting" } else { "ok" },
        "waitingFor": waiting,
        "partitions": status.assigned(),
        "applied": status.applied.load(std::sync::atomic::Ordering::Relaxed),
        "duplicates": status.duplicates.load(std::sync::atomic::Ordering::Relaxed),
        "deadLettered": status.dead_lettered.load(std::sync::atomic::Ordering::Relaxed),
    }))
}

/// The read model's routes, with request metrics and `GET /metrics`.
pub fn router(reader: Reader, status: Arc<ProjectorStatus>) -> Router {
    let routes = Router::new()
        .route("/orders/{id}", get(read_order))
        .route("/customers/{id}/orders", get(read_customer))
        .route("/health", get(health));
    telemetry::http::instrument(routes).with_state(Served { reader, status })
}

/// `orderflow tracking`: the projector and the HTTP reads, until `shutdown` turns true.
pub async fn run(settings: &Settings, mut shutdown: watch::Receiver<bool>) -> anyhow::Result<()> {
    let store = TrackingStore::connect(settings).await?;
    let reader = Reader {
        pool: store.pool().clone(),
        documents: store.documents.clone(),
    };
    let projector = Projector::new(
        TrackingProjection,
        store,
        ProjectorSettings {
            kafka: settings.kafka.clone(),
            group_id: settings.tracking_group.clone(),
            topic: OrderEvent::TOPIC.name.to_owned(),
            dead_letter_topic: settings.tracking_dead_letter_topic.clone(),
            max_batch: 1000,
        },
    )?;
    let status = projector.status();
    let _lag = telemetry::lag::watch(
        settings.kafka.clone(),
        settings.tracking_group.clone(),
        OrderEvent::TOPIC.name.to_owned(),
        Duration::from_secs(5),
    );
    let listener = TcpListener::bind(&settings.tracking_listen_addr).await?;
    tracing::info!(address = %listener.local_addr()?, "tracking listening");
    let mut stop_http = shutdown.clone();
    let http = tokio::spawn(async move {
        axum::serve(listener, router(reader, status))
            .with_graceful_shutdown(async move {
                let _ = stop_http.wait_for(|s| *s).await;
            })
            .await
    });
    projector
        .run(async move {
            let _ = shutdown.wait_for(|s| *s).await;
        })
        .await?;
    http.await??;
    Ok(())
}

/// What the order events topic holds, read from `from` (per partition; the start where it
/// names none) to the end: per order, its customer and its event ids in log order, each
/// event once (the relay may have sent one twice). The fold the chaos run and the tests
/// compare the read model with.
pub async fn log_fold(
    kafka: &topics::settings::KafkaSettings,
    from: &HashMap<i32, i64>,
    within: Duration,
) -> anyhow::Result<HashMap<Uuid, (i64, Vec<Uuid>)>> {
    use rdkafka::consumer::{Consumer, StreamConsumer};
    use rdkafka::message::Message;
    use rdkafka::{Offset, TopicPartitionList};

    let topic = OrderEvent::TOPIC.name;
    let group = format!("orderflow-log-fold-{}", crate::chaos_id());
    let consumer: StreamConsumer = topics::kafka::consumer_config(kafka, &group).create()?;
    let metadata = consumer.fetch_metadata(Some(topic), Duration::from_secs(10))?;
    let partitions: Vec<i32> = metadata
        .topics()
        .iter()
        .flat_map(|t| t.partitions().iter().map(|p| p.id()))
        .collect();
    let mut ends = HashMap::new();
    let mut assignment = TopicPartitionList::new();
    for &partition in &partitions {
        let (_, high) = consumer.fetch_watermarks(topic, partition, Duration::from_secs(10))?;
        ends.insert(partition, high);
        let start = from
            .get(&partition)
            .map_or(Offset::Beginning, |o| Offset::Offset(*o));
        assignment.add_partition_offset(topic, partition, start)?;
    }
    consumer.assign(&assignment)?;
    let decoder = topics::codec::Decoder::<OrderEvent>::new(topics::registry::Registry::new(
        &kafka.schema_registry_url,
    ));
    let mut fold: HashMap<Uuid, (i64, Vec<Uuid>)> = HashMap::new();
    let mut seen = std::collections::HashSet::new();
    let deadline = tokio::time::Instant::now() + within;
    loop {
        let done = consumer.position().is_ok_and(|positions| {
            partitions.iter().all(|p| {
                matches!(
                    positions.find_partition(topic, *p).map(|e| e.offset()),
                    Some(Offset::Offset(next)) if next >= ends[p]
                ) || ends[p] <= from.get(p).copied().unwrap_or(0)
            })
        });
        if done {
            return Ok(fold);
        }
        anyhow::ensure!(
            tokio::time::Instant::now() < deadline,
            "the order events topic was not read to its end within {within:?}"
        );
        let Ok(message) = tokio::time::timeout(Duration::from_secs(1), consumer.recv()).await
        else {
            continue;
        };
        let message = message?;
        let Some(payload) = message.payload() else {
            continue;
        };
        let event = decoder.decode(payload).await?;
        if seen.insert(event.event_id) {
            fold.entry(event.order_id)
                .or_insert_with(|| (event.customer_id, Vec::new()))
                .1
                .push(event.event_id);
        }
    }
}
