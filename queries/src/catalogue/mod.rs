//! The product catalogue read model and the `catalogue` service (default 127.0.0.1:3014).
//!
//! The product-catalogue query's result changes are folded by the projector runtime
//! (`projectors`: store-owned offsets, dead letters, Redis or MySQL by `CATALOGUE_STORE`) into
//! two read models: one document per product ([`ProductDocuments`]) and one document holding
//! the whole catalogue ([`CatalogueIndex`]), because a store answers by key and has no scan.
//!
//! `GET /catalogue` lists every product (by id); `GET /catalogue/{productId}` is one, or 404;
//! `GET /metrics` the request and projector metrics (Prometheus text).

use std::collections::{BTreeMap, HashMap};
use std::sync::OnceLock;

use apache_avro::Schema;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::{Json, Router};
use projectors::store::any::{AnyStore, StoreKind};
use projectors::{Projection, Projector, ProjectorSettings, Store};
use serde::{Deserialize, Serialize};
use serde_json::{json, Value};
use topics::events::Event;
use topics::settings::KafkaSettings;
use topics::spec::{self, TopicSpec};

/// The key of the document holding the whole catalogue.
pub const INDEX_KEY: &str = "catalogue";

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Settings {
    #[serde(flatten)]
    pub kafka: KafkaSettings,
    pub catalogue_listen_addr: String,
    /// Result topics are `<prefix>.<query>`, as the engine's `queries_topic_prefix`.
    pub queries_topic_prefix: String,
    pub catalogue_store: StoreKind,
    pub redis_url: String,
    pub mysql_url: String,
    /// The read models' namespace in the store, and the consumer groups' prefix.
    pub catalogue_namespace: String,
    pub catalogue_max_batch: usize,
}

impl Default for Settings {
    fn default() -> Self {
        Self {
            kafka: KafkaSettings::default(),
            catalogue_listen_addr: "127.0.0.1:3014".to_owned(),
            queries_topic_prefix: "queries".to_owned(),
            catalogue_store: StoreKind::Redis,
            redis_url: "redis://127.0.0.1:6379".to_owned(),
            mysql_url: "mysql://platform:platform@127.0.0.1:3306/platform".to_owned(),
            catalogue_namespace: "catalogue".to_owned(),
            catalogue_max_batch: 500,
        }
    }
}

/// A catalogue row as the contract has it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ProductCatalogueRow {
    pub product_id: i64,
    pub name: String,
    pub price: String,
    pub stock: i64,
    pub review_count: i64,
    pub average_rating: Option<f64>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum ProductCatalogueOp {
    Added,
    Updated,
    Deleted,
}

/// A change of the product-catalogue result (the `queries.product-catalogue` contract).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ProductCatalogueChange {
    pub seq: i64,
    pub op: ProductCatalogueOp,
    pub key: String,
    pub before: Option<ProductCatalogueRow>,
    pub after: Option<ProductCatalogueRow>,
    pub source_offsets: HashMap<String, i64>,
    pub emitted_at: i64,
}

impl Event for ProductCatalogueChange {
    const TOPIC: &'static TopicSpec = &spec::QUERIES_PRODUCT_CATALOGUE;

    fn schema() -> &'static Schema {
        static SCHEMA: OnceLock<Schema> = OnceLock::new();
        SCHEMA.get_or_init(|| {
            Schema::parse_str(Self::TOPIC.value_schema.unwrap_or_default())
                .expect("the catalogue contract parses (checked by topics' spec tests)")
        })
    }

    fn key(&self) -> &str {
        &self.key
    }

    /// The change's sequence number is unique within the query.
    fn event_id(&self) -> uuid::Uuid {
        uuid::Uuid::from_u64_pair(0x7175_6572_6965_7301, self.seq as u64)
    }
}

/// One document per product, keyed by product id.
pub struct ProductDocuments;

impl Projection for ProductDocuments {
    type Event = ProductCatalogueChange;
    type Document = Value;

    fn name(&self) -> &str {
        "catalogue-products"
    }

    fn key(&self, change: &ProductCatalogueChange) -> String {
        change.key.clone()
    }

    fn fold(&self, _state: Option<&Value>, change: &ProductCatalogueChange) -> Option<Value> {
        change.after.as_ref().map(|row| json!(row))
    }

    fn reads_state(&self) -> bool {
        false
    }
}

/// The whole catalogue in one document ([`INDEX_KEY`]): product id → row.
pub struct CatalogueIndex;

impl Projection for CatalogueIndex {
    type Event = ProductCatalogueChange;
    /// Product id → its row.
    type Document = BTreeMap<String, Value>;

    fn name(&self) -> &str {
        "catalogue-index"
    }

    fn key(&self, _change: &ProductCatalogueChange) -> String {
        INDEX_KEY.to_owned()
    }

    fn fold(
        &self,
        state: Option<&BTreeMap<String, Value>>,
        change: &ProductCatalogueChange,
    ) -> Option<BTreeMap<String, Value>> {
        let mut rows = state.cloned().unwrap_or_default();
        match &change.after {
            Some(row) => rows.insert(change.key.clone(), json!(row)),
            None => rows.remove(&change.key),
        };
        Some(rows)
    }
}

fn projector_settings(settings: &Settings, model: &str) -> ProjectorSettings {
    ProjectorSettings {
        kafka: settings.kafka.clone(),
        group_id: format!(
            "{}.{model}.{}",
            settings.catalogue_namespace, settings.catalogue_store
        ),
        topic: format!("{}.product-catalogue", settings.queries_topic_prefix),
        dead_letter_topic: format!("{}.catalogue.dead-letter", settings.queries_topic_prefix),
        max_batch: settings.catalogue_max_batch,
    }
}

/// Connects the stores and runs both projectors and the HTTP service until `shutdown`.
pub async fn serve(
    settings: Settings,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
) -> anyhow::Result<()> {
    let namespace = |model: &str| format!("{}.{model}", settings.catalogue_namespace);
    let (products_ns, index_ns) = (namespace("products"), namespace("index"));
    let products = AnyStore::connect(
        settings.catalogue_store,
        &settings.redis_url,
        &settings.mysql_url,
        &products_ns,
    )
    .await?;
    let index = AnyStore::connect(
        settings.catalogue_store,
        &settings.redis_url,
        &settings.mysql_url,
        &index_ns,
    )
    .await?;
    let (stop, _) = tokio::sync::broadcast::channel::<()>(1);
    let stopped = |stop: &tokio::sync::broadcast::Sender<()>| {
        let mut rx = stop.subscribe();
        async move {
            let _ = rx.recv().await;
        }
    };
    let p1 = Projector::new(
        ProductDocuments,
        products.clone(),
        projector_settings(&settings, "products"),
    )?;
    let p2 = Projector::new(
        CatalogueIndex,
        index.clone(),
        projector_settings(&settings, "index"),
    )?;
    let run1 = tokio::spawn(p1.run(stopped(&stop)));
    let run2 = tokio::spawn(p2.run(stopped(&stop)));
    let listener = tokio::net::TcpListener::bind(&settings.catalogue_listen_addr).await?;
    tracing::info!(addr = %settings.catalogue_listen_addr, store = %settings.catalogue_store, "catalogue serving");
    let app = router(Stores { products, index });
    let server = axum::serve(listener, app).with_graceful_shutdown(shutdown);
    let result = server.await;
    let _ = stop.send(());
    run1.await??;
    run2.await??;
    Ok(result?)
}

#[derive(Clone)]
struct Stores {
    products: AnyStore,
    index: AnyStore,
}

/// The routes, plus `GET /metrics` and request metrics (`telemetry::http::instrument`).
fn router(stores: Stores) -> Router {
    telemetry::http::instrument(
        Router::new()
            .route("/catalogue", get(list))
            .route("/catalogue/{product_id}", get(one))
            .route("/health", get(|| async { "ok" }))
            .with_state(stores),
    )
}

fn unavailable(e: impl std::fmt::Display) -> Response {
    (
        StatusCode::SERVICE_UNAVAILABLE,
        Json(json!({ "error": format!("read model unavailable: {e}") })),
    )
        .into_response()
}

/// `GET /catalogue`: every product, by id.
async fn list(State(stores): State<Stores>) -> Response {
    match stores.index.get(INDEX_KEY).await {
        Ok(Some(Value::Object(rows))) => {
            let mut rows: Vec<Value> = rows.into_iter().map(|(_, v)| v).collect();
            rows.sort_by_key(|r| r["productId"].as_i64());
            Json(rows).into_response()
        }
        Ok(_) => Json(Vec::<Value>::new()).into_response(),
        Err(e) => unavailable(e),
    }
}

/// `GET /catalogue/{productId}`.
async fn one(State(stores): State<Stores>, Path(product_id): Path<String>) -> Response {
    let Ok(id) = product_id.parse::<i64>() else {
        return (
            StatusCode::BAD_REQUEST,
            Json(json!({ "error": "productId must be an integer" })),
        )
            .into_response();
    };
    match stores.products.get(&id.to_string()).await {
        Ok(Some(doc)) => Json(doc).into_response(),
        Ok(None) => (
            StatusCode::NOT_FOUND,
            Json(json!({ "error": format!("no product {id} in the catalogue") })),
        )
            .into_response(),
        Err(e) => unavailable(e),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn change(key: &str, after: Option<i64>) -> ProductCatalogueChange {
        ProductCatalogueChange {
            seq: 1,
            op: ProductCatalogueOp::Added,
            key: key.into(),
            before: None,
            after: after.map(|stock| ProductCatalogueRow {
                product_id: key.parse().unwrap(),
                name: "Tent".into(),
                price: "10.00".into(),
                stock,
                review_count: 0,
                average_rating: None,
            }),
            source_offsets: HashMap::new(),
            emitted_at: 0,
        }
    }

    #[test]
    fn the_index_holds_every_product_and_forgets_deleted_ones() {
        let state = CatalogueIndex.fold(None, &change("1", Some(3)));
        let state = CatalogueIndex.fold(state.as_ref(), &change("2", Some(4)));
        let state = CatalogueIndex
            .fold(state.as_ref(), &change("1", None))
            .unwrap();
        assert_eq!(state.len(), 1);
        assert_eq!(state["2"]["stock"], 4);
        assert_eq!(ProductDocuments.fold(None, &change("1", None)), None);
    }
}
