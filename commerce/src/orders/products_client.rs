//! The orders service's client of the products service's reservation API. Each call is a
//! client span (when tracing is on) whose W3C `traceparent` / `tracestate` go in the
//! request's headers, so the products service's server span, and the stock event it writes,
//! continue the order's trace.

use std::time::Duration;

use serde_json::{json, Value};
use tracing::Instrument;
use uuid::Uuid;

use super::domain::NewOrder;
use crate::products::domain::{SettledBody, Unsettled};

/// What the products service answered to a reservation.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ReserveOutcome {
    /// The order holds the stock (reserved now, or already by an earlier attempt).
    Reserved,
    /// Not enough stock, or the order's reservation was released before it arrived.
    Refused(String),
    UnknownProduct(String),
}

/// The products service did not give a usable answer; what it did is unknown.
#[derive(Debug, thiserror::Error)]
#[error("products service: {0}")]
pub struct Unavailable(pub String);

#[derive(Clone)]
pub struct ProductsClient {
    http: reqwest::Client,
    base_url: String,
}

impl ProductsClient {
    pub fn new(base_url: &str, timeout: Duration) -> Result<Self, reqwest::Error> {
        Ok(Self {
            http: reqwest::Client::builder()
                .timeout(timeout)
                .pool_max_idle_per_host(256)
                .build()?,
            base_url: base_url.trim_end_matches('/').to_owned(),
        })
    }

    pub async fn reserve(
        &self,
        order_id: Uuid,
        order: &NewOrder,
    ) -> Result<ReserveOutcome, Unavailable> {
        let request = self
            .http
            .post(format!("{}/reservations", self.base_url))
            .json(&json!({
                "orderId": order_id,
                "customerId": order.customer_id,
                "productId": order.product_id,
                "quantity": order.quantity,
            }));
        let response = traced(request, "POST", "/reservations").await?;
        let status = response.status();
        let message = || async {
            response
                .json::<Value>()
                .await
                .ok()
                .and_then(|body| body["error"].as_str().map(str::to_owned))
                .unwrap_or_else(|| format!("answered {status}"))
        };
        match status.as_u16() {
            200 | 201 => Ok(ReserveOutcome::Reserved),
            409 => Ok(ReserveOutcome::Refused(message().await)),
            404 => Ok(ReserveOutcome::UnknownProduct(message().await)),
            _ => Err(Unavailable(message().await)),
        }
    }

    /// Releases whatever the order holds; succeeds once it holds nothing.
    pub async fn release(&self, order_id: Uuid) -> Result<bool, Unavailable> {
        let request = self
            .http
            .post(format!("{}/reservations/{order_id}/release", self.base_url));
        let response = traced(request, "POST", "/reservations/{orderId}/release").await?;
        if !response.status().is_success() {
            return Err(Unavailable(format!(
                "release answered {}",
                response.status()
            )));
        }
        let body: Value = response
            .json()
            .await
            .map_err(|e| Unavailable(e.to_string()))?;
        Ok(body["released"].as_bool().unwrap_or(false))
    }
}

impl ProductsClient {
    /// Held reservations older than `older_than` that no order was confirmed for yet.
    pub async fn unsettled(
        &self,
        older_than: Duration,
        limit: usize,
    ) -> Result<Vec<Unsettled>, Unavailable> {
        let request = self.http.get(format!(
            "{}/reservations/unsettled?olderThanMs={}&limit={limit}",
            self.base_url,
            older_than.as_millis()
        ));
        let response = traced(request, "GET", "/reservations/unsettled").await?;
        if !response.status().is_success() {
            return Err(Unavailable(format!(
                "unsettled reservations answered {}",
                response.status()
            )));
        }
        response
            .json()
            .await
            .map_err(|e| Unavailable(e.to_string()))
    }

    /// Tells the products service these orders exist, so their reservations are settled.
    pub async fn settled(&self, order_ids: &[Uuid]) -> Result<(), Unavailable> {
        let request = self
            .http
            .post(format!("{}/reservations/settled", self.base_url))
            .json(&SettledBody {
                order_ids: order_ids.to_vec(),
            });
        let response = traced(request, "POST", "/reservations/settled").await?;
        if !response.status().is_success() {
            return Err(Unavailable(format!(
                "settling reservations answered {}",
                response.status()
            )));
        }
        Ok(())
    }
}

/// Sends `request` in a client span named `method route`, with the span's trace context in
/// its headers (nothing added when tracing is off).
async fn traced(
    request: reqwest::RequestBuilder,
    method: &str,
    route: &str,
) -> Result<reqwest::Response, Unavailable> {
    let span = telemetry::http::client_span(method, route);
    let request = span
        .in_scope(telemetry::http::outgoing_headers)
        .into_iter()
        .fold(request, |request, (name, value)| {
            request.header(name, value)
        });
    let response = request.send().instrument(span.clone()).await;
    match &response {
        Ok(response) => {
            span.record("http.response.status_code", response.status().as_u16());
            if response.status().is_server_error() {
                span.record("otel.status_code", "error");
            }
        }
        Err(_) => {
            span.record("otel.status_code", "error");
        }
    }
    response.map_err(|e| Unavailable(e.to_string()))
}
