//! The HTTP API over the mandates read model.

use std::collections::HashMap;
use std::sync::atomic::Ordering;
use std::sync::Arc;

use axum::extract::{Path, Query, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::{Json, Router};
use projectors::runtime::ProjectorStatus;
use projectors::Store;
use serde_json::json;

pub struct AppState<S> {
    pub store: S,
    pub projector: Arc<ProjectorStatus>,
}

pub fn router<S: Store>(state: Arc<AppState<S>>) -> Router {
    Router::new()
        .route("/mandates/{connection_id}", get(mandate::<S>))
        .route("/", get(classic_mandate::<S>))
        .route("/health", get(health::<S>))
        .with_state(state)
}

/// `GET /mandates/{connectionId}`
async fn mandate<S: Store>(
    State(state): State<Arc<AppState<S>>>,
    Path(connection_id): Path<String>,
) -> Response {
    lookup(&state.store, &connection_id).await
}

/// `GET /?connectionId=X`, as the classic service answered it.
async fn classic_mandate<S: Store>(
    State(state): State<Arc<AppState<S>>>,
    Query(query): Query<HashMap<String, String>>,
) -> Response {
    match query.get("connectionId").map(|id| id.trim()) {
        Some(id) if !id.is_empty() => lookup(&state.store, id).await,
        _ => error(
            StatusCode::BAD_REQUEST,
            "query parameter connectionId is required",
        ),
    }
}

async fn lookup<S: Store>(store: &S, connection_id: &str) -> Response {
    match store.get(connection_id).await {
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

/// What this instance's projector owns and has done.
async fn health<S: Store>(State(state): State<Arc<AppState<S>>>) -> Response {
    Json(json!({
        "assignedPartitions": state.projector.assigned(),
        "applied": state.projector.applied.load(Ordering::Relaxed),
        "deadLettered": state.projector.dead_lettered.load(Ordering::Relaxed),
    }))
    .into_response()
}

fn error(status: StatusCode, message: &str) -> Response {
    (status, Json(json!({ "error": message }))).into_response()
}
