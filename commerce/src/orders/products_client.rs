//! The orders service's client of the products service's reservation API. Each call is a
//! client span (when tracing is on) whose W3C `traceparent` / `tracestate` go in the
//! request's headers, so the products service's server span, and the stock event it writes,
//! continue the order's trace.
//!
//! Reservations go through a batcher: placements running at the same time share one
//! `POST /reservations/batch` (one HTTP exchange and, mostly, one statement for all of them),
//! each entry carrying its placement's trace context for its stock event; a placement on its
//! own is sent as a `POST /reservations` in its own span. Up to [`BATCHES_IN_FLIGHT`] batches
//! are in flight; while they are, reservations queue for the next one.

use std::time::Duration;

use serde_json::{json, Value};
use tracing::Instrument;
use uuid::Uuid;

use std::sync::Arc;

use tokio::sync::{mpsc, oneshot, Semaphore};

use super::domain::NewOrder;
use crate::products::domain::{
    BatchAnswer, BatchBody, BatchEntry, SettledBody, Unsettled, MAX_BATCH,
};

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
    /// Reservations waiting for the batcher ([`ProductsClient::reserve`]).
    queue: mpsc::UnboundedSender<Queued>,
}

/// One placement's reservation, waiting to be sent.
struct Queued {
    order_id: Uuid,
    order: NewOrder,
    /// The placement's span, for a reservation sent on its own.
    span: tracing::Span,
    /// The placement's trace context, for one sent in a batch.
    trace: Option<telemetry::TraceContext>,
    answer: oneshot::Sender<Result<ReserveOutcome, Unavailable>>,
}

/// Batches in flight at once; while all are, reservations queue up for the next.
const BATCHES_IN_FLIGHT: usize = 4;

impl ProductsClient {
    /// A client and its batcher task (which ends when the last clone is dropped).
    pub fn new(base_url: &str, timeout: Duration) -> Result<Self, reqwest::Error> {
        let (queue, queued) = mpsc::unbounded_channel();
        let client = Self {
            http: reqwest::Client::builder()
                .timeout(timeout)
                .pool_max_idle_per_host(256)
                .build()?,
            base_url: base_url.trim_end_matches('/').to_owned(),
            queue,
        };
        tokio::spawn(batcher(
            client.http.clone(),
            client.base_url.clone(),
            queued,
        ));
        Ok(client)
    }

    /// Reserves the order's stock under `order_id`. Placements running at the same time share
    /// one `POST /reservations/batch` (whatever queued while earlier batches were in flight);
    /// one on its own is a `POST /reservations` in its own span.
    pub async fn reserve(
        &self,
        order_id: Uuid,
        order: &NewOrder,
    ) -> Result<ReserveOutcome, Unavailable> {
        let (answer, answered) = oneshot::channel();
        let queued = Queued {
            order_id,
            order: *order,
            span: tracing::Span::current(),
            trace: telemetry::TraceContext::current(),
            answer,
        };
        if self.queue.send(queued).is_err() {
            return Err(Unavailable("the reservation batcher stopped".to_owned()));
        }
        answered
            .await
            .unwrap_or_else(|_| Err(Unavailable("the reservation batcher stopped".to_owned())))
    }

    /// Releases whatever the order holds; succeeds once it holds nothing.
    pub async fn release(&self, order_id: Uuid) -> Result<bool, Unavailable> {
        let request = self
            .http
            .post(format!("{}/reservations/{order_id}/release", self.base_url));
        let body: Value = answer(request, "POST", "/reservations/{orderId}/release").await?;
        Ok(body["released"].as_bool().unwrap_or(false))
    }

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
        answer(request, "GET", "/reservations/unsettled").await
    }

    /// Tells the products service these orders exist, so their reservations are settled.
    pub async fn settled(&self, order_ids: &[Uuid]) -> Result<(), Unavailable> {
        let request = self
            .http
            .post(format!("{}/reservations/settled", self.base_url))
            .json(&SettledBody {
                order_ids: order_ids.to_vec(),
            });
        let _: Value = answer(request, "POST", "/reservations/settled").await?;
        Ok(())
    }
}

/// Takes what has queued (up to a batch) whenever a batch may go out, and sends it.
async fn batcher(
    http: reqwest::Client,
    base_url: String,
    mut queued: mpsc::UnboundedReceiver<Queued>,
) {
    let in_flight = Arc::new(Semaphore::new(BATCHES_IN_FLIGHT));
    loop {
        let Ok(permit) = in_flight.clone().acquire_owned().await else {
            return;
        };
        let Some(first) = queued.recv().await else {
            return;
        };
        // A placement that is gone (its client hung up) reserves nothing: the stock would
        // only be held until the sweeper gives the order up.
        let mut batch: Vec<Queued> = std::iter::once(first)
            .filter(|q| !q.answer.is_closed())
            .collect();
        while batch.len() < MAX_BATCH {
            match queued.try_recv() {
                Ok(more) if more.answer.is_closed() => {}
                Ok(more) => batch.push(more),
                Err(_) => break,
            }
        }
        if batch.is_empty() {
            continue;
        }
        let (http, base_url) = (http.clone(), base_url.clone());
        tokio::spawn(async move {
            if batch.len() == 1 {
                let one = batch.pop().expect("one queued");
                let span = one.span.clone();
                let outcome = reserve_one(&http, &base_url, one.order_id, &one.order)
                    .instrument(span)
                    .await;
                let _ = one.answer.send(outcome);
            } else {
                reserve_batch(&http, &base_url, batch).await;
            }
            drop(permit);
        });
    }
}

async fn reserve_one(
    http: &reqwest::Client,
    base_url: &str,
    order_id: Uuid,
    order: &NewOrder,
) -> Result<ReserveOutcome, Unavailable> {
    let request = http.post(format!("{base_url}/reservations")).json(&json!({
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
    outcome(status.as_u16(), message().await)
}

/// What a reservation's status (alone or in a batch) means for the placement.
fn outcome(status: u16, message: String) -> Result<ReserveOutcome, Unavailable> {
    match status {
        200 | 201 => Ok(ReserveOutcome::Reserved),
        409 => Ok(ReserveOutcome::Refused(message)),
        404 => Ok(ReserveOutcome::UnknownProduct(message)),
        _ => Err(Unavailable(message)),
    }
}

/// Sends a batch and answers each placement; no usable answer leaves every one of them
/// unknown (each placement then records its order as failed, with the release owed).
async fn reserve_batch(http: &reqwest::Client, base_url: &str, batch: Vec<Queued>) {
    let body = BatchBody {
        reservations: batch
            .iter()
            .map(|q| BatchEntry {
                order_id: q.order_id,
                customer_id: q.order.customer_id,
                product_id: q.order.product_id,
                quantity: i64::from(q.order.quantity),
                traceparent: q.trace.as_ref().map(|t| t.traceparent.clone()),
                tracestate: q.trace.as_ref().and_then(|t| t.tracestate.clone()),
            })
            .collect(),
    };
    let request = http
        .post(format!("{base_url}/reservations/batch"))
        .json(&body);
    let answered = async {
        let BatchAnswer { results } = answer(request, "POST", "/reservations/batch").await?;
        if results.len() != batch.len()
            || results
                .iter()
                .zip(&batch)
                .any(|(r, q)| r.order_id != q.order_id)
        {
            return Err(Unavailable(
                "batch reservation answered for other orders".to_owned(),
            ));
        }
        Ok(results)
    }
    .await;
    match answered {
        Ok(results) => {
            for (result, queued) in results.into_iter().zip(batch) {
                let message = result
                    .error
                    .unwrap_or_else(|| format!("answered {}", result.status));
                let _ = queued.answer.send(outcome(result.status, message));
            }
        }
        Err(unavailable) => {
            for queued in batch {
                let _ = queued.answer.send(Err(Unavailable(unavailable.0.clone())));
            }
        }
    }
}

/// Sends `request` ([`traced`]) and decodes a successful answer's JSON body; any other
/// status, or a body that does not decode, leaves the outcome unknown.
async fn answer<T: serde::de::DeserializeOwned>(
    request: reqwest::RequestBuilder,
    method: &str,
    route: &str,
) -> Result<T, Unavailable> {
    let response = traced(request, method, route).await?;
    if !response.status().is_success() {
        return Err(Unavailable(format!(
            "{method} {route} answered {}",
            response.status()
        )));
    }
    response
        .json()
        .await
        .map_err(|e| Unavailable(format!("{method} {route} answer: {e}")))
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
