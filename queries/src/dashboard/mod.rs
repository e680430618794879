//! The `dashboard` service (default 127.0.0.1:3016): a static page showing every query's
//! result live, and `GET /events`, the queries' result changes as Server-Sent Events;
//! `GET /metrics` (Prometheus text).
//!
//! The service follows every query's changes from the beginning into one in-memory log; an
//! event's id is its position in that log, so a browser that reconnects with
//! `Last-Event-ID: n` gets exactly the changes after n (a fresh one gets all, and folds them).
//! A query with a history topic (the stock queries, whose entries are the page's
//! notifications) is followed there: the same changes as on its compacted result topic, but
//! all of them, so a restarted dashboard still lists every entry into a condition after
//! compaction kept only the newest change per product.

use std::convert::Infallible;
use std::sync::{Arc, RwLock};
use std::time::Duration;

use axum::extract::State;
use axum::http::HeaderMap;
use axum::response::sse::{Event, KeepAlive, Sse};
use axum::response::Html;
use axum::routing::get;
use axum::Router;
use futures::Stream;
use serde::{Deserialize, Serialize};
use serde_json::json;
use tokio::sync::Notify;
use topics::registry::Registry;
use topics::settings::KafkaSettings;

use crate::avro::Schemas;
use crate::declared::ALL;
use crate::results;
use crate::settings::{history_topic, result_topic};

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Settings {
    #[serde(flatten)]
    pub kafka: KafkaSettings,
    pub dashboard_listen_addr: String,
    pub queries_topic_prefix: String,
}

impl Default for Settings {
    fn default() -> Self {
        Self {
            kafka: KafkaSettings::default(),
            dashboard_listen_addr: "127.0.0.1:3016".to_owned(),
            queries_topic_prefix: "queries".to_owned(),
        }
    }
}

/// Every result change seen, as the JSON sent to browsers, in arrival order.
#[derive(Default)]
struct Log {
    events: RwLock<Vec<Arc<String>>>,
    grew: Notify,
}

pub async fn serve(
    settings: Settings,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
) -> anyhow::Result<()> {
    let schemas = Schemas::new(Registry::new(&settings.kafka.schema_registry_url));
    let mut feed = results::follow(
        &settings.kafka,
        schemas,
        ALL.iter()
            .map(|q| {
                let prefix = &settings.queries_topic_prefix;
                let topic = history_topic(prefix, q).unwrap_or_else(|| result_topic(prefix, q));
                (q, topic)
            })
            .collect(),
    )?;
    let log: Arc<Log> = Arc::default();
    let filling = log.clone();
    tokio::spawn(async move {
        while let Some((index, change)) = feed.recv().await {
            let text = change.to_json(&ALL[index]).to_string();
            filling
                .events
                .write()
                .unwrap_or_else(|p| p.into_inner())
                .push(Arc::new(text));
            filling.grew.notify_waiters();
        }
    });
    let app = telemetry::http::instrument(
        Router::new()
            .route("/", get(page))
            .route("/events", get(events))
            .route("/health", get(|| async { "ok" }))
            .with_state(log),
    );
    let listener = tokio::net::TcpListener::bind(&settings.dashboard_listen_addr).await?;
    tracing::info!(addr = %settings.dashboard_listen_addr, "dashboard serving");
    axum::serve(listener, app)
        .with_graceful_shutdown(shutdown)
        .await?;
    Ok(())
}

/// `GET /`: the page, with the queries' columns filled in.
async fn page() -> Html<String> {
    let queries: Vec<_> = ALL
        .iter()
        .map(|q| json!({"name": q.name, "columns": q.columns.iter().map(|c| c.name).collect::<Vec<_>>()}))
        .collect();
    Html(include_str!("index.html").replace("__QUERIES__", &json!(queries).to_string()))
}

/// `GET /events`: the changes after `Last-Event-ID` (all without one), then live ones.
async fn events(
    State(log): State<Arc<Log>>,
    headers: HeaderMap,
) -> Sse<impl Stream<Item = Result<Event, Infallible>>> {
    let after: usize = headers
        .get("last-event-id")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.trim().parse::<usize>().ok())
        .unwrap_or(0);
    let stream = futures::stream::unfold((log, after), |(log, next)| async move {
        let text = loop {
            // Register for the wake-up before looking, so a push in between is not missed.
            let grew = log.grew.notified();
            let event = log
                .events
                .read()
                .unwrap_or_else(|p| p.into_inner())
                .get(next)
                .cloned();
            match event {
                Some(text) => break text,
                None => grew.await,
            }
        };
        let id = next + 1;
        let event = Event::default()
            .event("change")
            .id(id.to_string())
            .data(text.as_str());
        Some((Ok(event), (log, id)))
    });
    Sse::new(stream).keep_alive(KeepAlive::new().interval(Duration::from_secs(15)))
}
