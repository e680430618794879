//! HTTP server telemetry for axum: [`instrument`] a router once and every route gets a
//! server span (continuing an incoming W3C `traceparent`), a request counter and a latency
//! histogram per method, route pattern and status, and the router answers `GET /metrics`.
//! Each request's handler runs in a task of its own, to completion even when the client
//! hangs up ([`track`]).

use std::time::Instant;

use axum::extract::{MatchedPath, Request};
use axum::http::HeaderMap;
use axum::middleware::Next;
use axum::response::Response;
use axum::Router;
use opentelemetry::propagation::{Extractor, TextMapPropagator};
use opentelemetry_sdk::propagation::TraceContextPropagator;
use tracing::field::Empty;
use tracing::Instrument;
use tracing_opentelemetry::OpenTelemetrySpanExt;

use crate::names::{HTTP_DURATION, HTTP_REQUESTS};

/// `router` plus `GET /metrics`, with [`track`] on every route (`/metrics` included).
pub fn instrument<S: Clone + Send + Sync + 'static>(router: Router<S>) -> Router<S> {
    router
        .merge(crate::metrics_router())
        .layer(axum::middleware::from_fn(track))
}

/// The middleware behind [`instrument`]: `Router::layer(axum::middleware::from_fn(track))`.
/// Requests no route matched are labelled `route="unmatched"`; the span name keeps axum's
/// pattern (`PUT /customers/{id}`), the metric label writes it `/customers/:id`.
pub async fn track(request: Request, next: Next) -> Response {
    let started = Instant::now();
    let method = request.method().as_str().to_owned();
    let route = request
        .extensions()
        .get::<MatchedPath>()
        .map_or_else(|| "unmatched".to_owned(), |p| p.as_str().to_owned());
    // The build without tracing (measurement only, see `crate::enabled`) keeps no span, as
    // before this layer (tower-http's DEBUG span, off at the services' default INFO).
    let span = if cfg!(telemetry_compiled_out) {
        tracing::Span::none()
    } else {
        tracing::info_span!(
            "http request",
            otel.name = %format_args!("{method} {route}"),
            otel.kind = "server",
            otel.status_code = Empty,
            http.request.method = %method,
            http.route = %route,
            url.path = %request.uri().path(),
            http.response.status_code = Empty,
        )
    };
    if crate::enabled() {
        let parent = TraceContextPropagator::new().extract(&Headers(request.headers()));
        let _ = span.set_parent(parent);
    }
    // In a task of its own, so a client that hangs up does not cancel the handler halfway
    // through its database work. That is not safe with sqlx 0.8: a `pool.begin()` dropped
    // while its `BEGIN` is in flight returns the connection to the pool inside a transaction
    // nobody tracks, and the next borrowers' statements run in it, are answered as done, and
    // are discarded when the connection closes (transact-rs/sqlx#4393). Seen in commerce's
    // kill -9 test: a reservation answered 201 that never committed.
    let response = match tokio::spawn(next.run(request).instrument(span.clone())).await {
        Ok(response) => response,
        Err(e) => {
            tracing::error!(parent: &span, error = %e, "request handler panicked");
            axum::response::IntoResponse::into_response((
                axum::http::StatusCode::INTERNAL_SERVER_ERROR,
                axum::Json(serde_json::json!({ "error": "the request handler failed" })),
            ))
        }
    };
    let status = response.status();
    span.record("http.response.status_code", status.as_u16());
    if status.is_server_error() {
        span.record("otel.status_code", "error");
    }
    let labels = [
        ("method", method),
        ("route", label(&route)),
        ("status", status.as_u16().to_string()),
    ];
    metrics::counter!(HTTP_REQUESTS, &labels).increment(1);
    metrics::histogram!(HTTP_DURATION, &labels).record(started.elapsed().as_secs_f64());
    response
}

/// A client span for an outgoing call (`otel.name` = `POST /reservations`, kind client),
/// child of the current span; record `http.response.status_code` on it when the answer
/// comes. [`Span::none`](tracing::Span::none) when tracing is off, so an untraced process
/// pays nothing. Take [`outgoing_headers`] inside it (`span.in_scope(outgoing_headers)`) so
/// the callee's server span becomes its child.
#[cfg_attr(telemetry_compiled_out, inline(always))]
pub fn client_span(method: &str, route: &str) -> tracing::Span {
    if !crate::enabled() {
        return tracing::Span::none();
    }
    tracing::info_span!(
        "http call",
        otel.name = %format_args!("{method} {route}"),
        otel.kind = "client",
        otel.status_code = Empty,
        http.request.method = %method,
        url.template = %route,
        http.response.status_code = Empty,
    )
}

/// Outgoing calls (one service calling another): `traceparent` / `tracestate` of the current
/// span, to add to the request's headers. Empty when tracing is off.
#[cfg_attr(telemetry_compiled_out, inline(always))]
pub fn outgoing_headers() -> Vec<(&'static str, String)> {
    let Some(trace) = crate::TraceContext::current() else {
        return Vec::new();
    };
    let mut headers = vec![(crate::context::TRACEPARENT, trace.traceparent)];
    if let Some(state) = trace.tracestate {
        headers.push((crate::context::TRACESTATE, state));
    }
    headers
}

/// The route pattern as a label value, parameters written `:name` (`/customers/:id`):
/// `{` and `}` are valid in a quoted label value, but common text parsers (the
/// `prometheus-parse` crate among them) cut a sample's labels at the first `}`.
fn label(route: &str) -> String {
    route.replace('{', ":").replace('}', "")
}

struct Headers<'h>(&'h HeaderMap);

impl Extractor for Headers<'_> {
    fn get(&self, key: &str) -> Option<&str> {
        self.0.get(key).and_then(|v| v.to_str().ok())
    }

    fn keys(&self) -> Vec<&str> {
        self.0.keys().map(|k| k.as_str()).collect()
    }
}
