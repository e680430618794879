//! The HTTP API over the mandates read model.

use std::collections::HashMap;
use std::sync::atomic::Ordering;
use std::sync::{Arc, RwLock};

use axum::extract::{Path, Query, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::{Json, Router};
use projectors::runtime::ProjectorStatus;
use projectors::Store;
use serde_json::json;
use topics::events::ConnectionId;

/// What an instance serves: one generation of the read model, and the projector filling it.
#[derive(Clone)]
pub struct Serving<S> {
    pub generation: u32,
    pub store: S,
    pub projector: Arc<ProjectorStatus>,
}

/// Shared by the handlers; swapped whole when reads switch to a new generation.
pub struct AppState<S> {
    serving: RwLock<Serving<S>>,
}

impl<S: Clone> AppState<S> {
    pub fn new(serving: Serving<S>) -> Self {
        Self {
            serving: RwLock::new(serving),
        }
    }

    pub fn serving(&self) -> Serving<S> {
        self.serving
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    pub fn replace(&self, serving: Serving<S>) {
        *self.serving.write().unwrap_or_else(|p| p.into_inner()) = serving;
    }
}

pub fn router<S: Store + Clone>(state: Arc<AppState<S>>) -> Router {
    let routes = Router::new()
        .route("/mandates/{connection_id}", get(mandate::<S>))
        .route("/", get(classic_mandate::<S>))
        .route("/health", get(health::<S>));
    // A server span, request count and latency per route + status, and `GET /metrics`.
    telemetry::http::instrument(routes).with_state(state)
}

/// `GET /mandates/{connectionId}`
async fn mandate<S: Store + Clone>(
    State(state): State<Arc<AppState<S>>>,
    Path(connection_id): Path<String>,
) -> Response {
    match ConnectionId::parse(&connection_id) {
        Ok(id) => lookup(&state.serving().store, &id).await,
        Err(e) => error(StatusCode::BAD_REQUEST, &e.to_string()),
    }
}

/// `GET /?connectionId=X`, as the classic service answered it.
async fn classic_mandate<S: Store + Clone>(
    State(state): State<Arc<AppState<S>>>,
    Query(query): Query<HashMap<String, String>>,
) -> Response {
    match query.get("connectionId").map(|id| ConnectionId::parse(id)) {
        Some(Ok(id)) => lookup(&state.serving().store, &id).await,
        Some(Err(e)) => error(StatusCode::BAD_REQUEST, &e.to_string()),
        None => error(
            StatusCode::BAD_REQUEST,
            "query parameter connectionId is required",
        ),
    }
}

async fn lookup<S: Store>(store: &S, connection_id: &ConnectionId) -> Response {
    match store.get(connection_id.as_str()).await {
        Ok(Some(document)) => Json(document).into_response(),
        Ok(None) => error(
            StatusCode::NOT_FOUND,
            &format!("no mandate known for connection {connection_id}"),
        ),
        Err(e) => {
            tracing::error!(error = %e, "read model unavailable");
            error(
                StatusCode::SERVICE_UNAVAILABLE,
                "the read model is unavailable; try again",
            )
        }
    }
}

/// What this instance's projector owns and has done, and what it is waiting out (an
/// unreachable store or registry, a schema id the registry does not know yet), if anything.
async fn health<S: Store + Clone>(State(state): State<Arc<AppState<S>>>) -> Response {
    let serving = state.serving();
    let waiting = serving.projector.waiting();
    Json(json!({
        "status": if waiting.is_some() { "waiting" } else { "ok" },
        "waitingFor": waiting,
        "generation": serving.generation,
        "assignedPartitions": serving.projector.assigned(),
        "applied": serving.projector.applied.load(Ordering::Relaxed),
        "deadLettered": serving.projector.dead_lettered.load(Ordering::Relaxed),
        "duplicatesSkipped": serving.projector.duplicates.load(Ordering::Relaxed),
    }))
    .into_response()
}

fn error(status: StatusCode, message: &str) -> Response {
    (status, Json(json!({ "error": message }))).into_response()
}
