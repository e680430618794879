//! The HTTP glue every service shares: the JSON body extractor, the error type and how it
//! maps to statuses, and id parsing. Every error leaves as JSON `{"error": "..."}`; internal
//! details are logged, never sent to the client.

use axum::extract::rejection::JsonRejection;
use axum::extract::{FromRequest, Request};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde::de::DeserializeOwned;
use serde_json::json;

/// Bodies of this API are a few hundred bytes; anything near this is not one of them.
pub const MAX_BODY_BYTES: usize = 64 * 1024;

#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    /// The request can never succeed as sent: malformed JSON, a missing field, a bad value.
    #[error("{0}")]
    BadRequest(String),

    #[error("{0}")]
    NotFound(String),

    /// The request contradicts the current state: not enough stock, an illegal status
    /// transition, an idempotency key reused for another order.
    #[error("{0}")]
    Conflict(String),

    /// Another service this one needs did not answer in time; retrying may succeed.
    #[error("{0}")]
    Unavailable(String),

    #[error("database: {0}")]
    Database(#[from] sqlx::Error),

    #[error("outbox: {0}")]
    Outbox(#[from] outbox::Error),
}

impl ApiError {
    /// Whether the same request may succeed later without being changed.
    pub fn is_retryable(&self) -> bool {
        match self {
            ApiError::Unavailable(_) | ApiError::Database(_) => true,
            ApiError::Outbox(e) => e.is_retryable(),
            ApiError::BadRequest(_) | ApiError::NotFound(_) | ApiError::Conflict(_) => false,
        }
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let (status, message) = match &self {
            ApiError::BadRequest(message) => (StatusCode::BAD_REQUEST, message.clone()),
            ApiError::NotFound(message) => (StatusCode::NOT_FOUND, message.clone()),
            ApiError::Conflict(message) => (StatusCode::CONFLICT, message.clone()),
            ApiError::Unavailable(message) => {
                tracing::warn!(%message, "request failed on another service");
                (StatusCode::SERVICE_UNAVAILABLE, message.clone())
            }
            ApiError::Database(_) | ApiError::Outbox(_) => {
                tracing::error!(error = %self, "request failed on the database");
                (
                    StatusCode::INTERNAL_SERVER_ERROR,
                    "internal error; try again later".to_owned(),
                )
            }
        };
        (status, Json(json!({ "error": message }))).into_response()
    }
}

/// `axum::Json`, except that every way a body can be unusable is a 400 with a JSON message:
/// axum itself answers 413, 415 or 422 for some of them.
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
        JsonRejection::JsonDataError(e) => match std::error::Error::source(e) {
            Some(source) => format!("invalid body: {source}"),
            None => format!("invalid body: {}", e.body_text()),
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

/// A positive numeric id from a path segment; `what` names it in the message.
pub fn numeric_id(what: &str, text: &str) -> Result<i64, ApiError> {
    text.trim()
        .parse::<i64>()
        .ok()
        .filter(|id| *id > 0)
        .ok_or_else(|| {
            ApiError::BadRequest(format!("{what} id must be a positive number, not {text:?}"))
        })
}

/// Text that must not be blank and has a length limit; returns it trimmed.
pub fn bounded_text(field: &str, value: &str, max: usize) -> Result<String, String> {
    let value = value.trim();
    if value.is_empty() {
        return Err(format!("{field} must not be empty"));
    }
    if value.chars().count() > max {
        return Err(format!("{field} must be at most {max} characters"));
    }
    Ok(value.to_owned())
}

/// `GET /health` of every service.
pub async fn health() -> StatusCode {
    StatusCode::OK
}
