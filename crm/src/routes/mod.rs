//! The HTTP API: one module per resource, and the JSON body extractor they share.

mod classic;
mod customers;

use axum::extract::rejection::JsonRejection;
use axum::extract::{DefaultBodyLimit, FromRequest, Request};
use axum::http::StatusCode;
use axum::routing::get;
use axum::Router;
use serde::de::DeserializeOwned;
use sqlx::PgPool;
use tower_http::trace::TraceLayer;

use crate::error::ApiError;

/// Customer bodies are a few hundred bytes; anything near this is not a customer.
pub const MAX_BODY_BYTES: usize = 64 * 1024;

pub fn router(pool: PgPool) -> Router {
    let routes = Router::new()
        .route("/", get(classic::customer_by_query))
        .route("/customers", get(customers::list).post(customers::create))
        .route(
            "/customers/{id}",
            get(customers::get).put(customers::replace),
        )
        .route("/health", get(|| async { StatusCode::OK }))
        .layer(DefaultBodyLimit::max(MAX_BODY_BYTES))
        .layer(TraceLayer::new_for_http());
    // A server span, request count and latency per route + status, and `GET /metrics`.
    telemetry::http::instrument(routes).with_state(pool)
}

/// `axum::Json`, except that every way a body can be unusable is a 400 with a JSON message:
/// axum itself answers 413, 415 or 422 for some of them, and the classic API used 400.
pub struct ApiJson<T>(pub T);

impl<S, T> FromRequest<S> for ApiJson<T>
where
    T: DeserializeOwned,
    S: Send + Sync,
{
    type Rejection = ApiError;

    async fn from_request(req: Request, state: &S) -> Result<Self, Self::Rejection> {
        match axum::Json::<T>::from_request(req, state).await {
            Ok(axum::Json(value)) => Ok(ApiJson(value)),
            Err(rejection) => Err(ApiError::BadRequest(rejection_message(&rejection))),
        }
    }
}

fn rejection_message(rejection: &JsonRejection) -> String {
    match rejection {
        JsonRejection::JsonSyntaxError(e) => match std::error::Error::source(e) {
            Some(source) => format!("malformed JSON: {source}"),
            None => format!("malformed JSON: {}", e.body_text()),
        },
        // The source says which field is wrong and why, without axum's generic preamble.
        JsonRejection::JsonDataError(e) => match std::error::Error::source(e) {
            Some(source) => format!("invalid customer: {source}"),
            None => format!("invalid customer: {}", e.body_text()),
        },
        JsonRejection::MissingJsonContentType(_) => {
            "expected a body with Content-Type: application/json".to_owned()
        }
        _ if rejection.status() == StatusCode::PAYLOAD_TOO_LARGE => {
            format!("request body is larger than {} KiB", MAX_BODY_BYTES / 1024)
        }
        other => other.body_text(),
    }
}

/// Parses a customer id from a path segment or query value.
fn customer_id(text: &str) -> Result<i64, ApiError> {
    text.trim()
        .parse()
        .map_err(|_| ApiError::BadRequest(format!("customer id must be a number, not {text:?}")))
}
