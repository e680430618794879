//! A simulated payment provider (default port 3020), its own process with its own database:
//! `POST /charges` with an `Idempotency-Key` header and `{"orderId", "amountCents"}`.
//!
//! Each call waits `payments_latency_ms`; a share `payments_error_rate` of calls answers 503
//! without charging (transient: callers retry); a share `payments_decline_rate` of new
//! charges is declined. The outcome is stored with the key, so a retry (after a timeout, a
//! crash of the caller) gets the same answer and never charges twice: 201 for a new charge,
//! 200 for a repeated key, 409 for a key reused for another order or amount.

use std::time::Duration;

use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use axum::routing::{get, post};
use axum::{Json, Router};
use serde::Deserialize;
use serde_json::{json, Value};
use sqlx::migrate::Migrator;
use sqlx::PgPool;
use tokio::net::TcpListener;
use uuid::Uuid;

use crate::configuration::Settings;

pub static MIGRATOR: Migrator = sqlx::migrate!("./src/payments/migrations");

/// The provider's behaviour.
#[derive(Debug, Clone, Copy)]
pub struct Behaviour {
    pub latency: Duration,
    pub decline_rate: f64,
    pub error_rate: f64,
}

impl Behaviour {
    pub fn from_settings(settings: &Settings) -> Self {
        Self {
            latency: Duration::from_millis(settings.payments_latency_ms),
            decline_rate: settings.payments_decline_rate.clamp(0.0, 1.0),
            error_rate: settings.payments_error_rate.clamp(0.0, 1.0),
        }
    }
}

#[derive(Clone)]
struct Provider {
    pool: PgPool,
    behaviour: Behaviour,
}

/// A uniform draw from [0, 1).
fn draw() -> f64 {
    (Uuid::new_v4().as_u128() >> 64) as f64 / 2f64.powi(64)
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
struct ChargeBody {
    order_id: Uuid,
    amount_cents: i64,
}

type Reply = (StatusCode, Json<Value>);

fn error(status: StatusCode, message: impl Into<String>) -> Reply {
    (status, Json(json!({ "error": message.into() })))
}

async fn charge(
    State(provider): State<Provider>,
    headers: HeaderMap,
    body: Result<Json<ChargeBody>, axum::extract::rejection::JsonRejection>,
) -> Reply {
    let Ok(Json(body)) = body else {
        return error(
            StatusCode::BAD_REQUEST,
            "body must be {orderId, amountCents}",
        );
    };
    let Some(key) = headers
        .get("idempotency-key")
        .and_then(|v| v.to_str().ok())
        .map(str::trim)
        .filter(|k| !k.is_empty() && k.len() <= 200)
    else {
        return error(
            StatusCode::BAD_REQUEST,
            "an Idempotency-Key header is required",
        );
    };
    if body.amount_cents < 0 {
        return error(StatusCode::BAD_REQUEST, "amountCents must be ≥ 0");
    }
    tokio::time::sleep(provider.behaviour.latency).await;
    if draw() < provider.behaviour.error_rate {
        charged("unavailable");
        return error(StatusCode::SERVICE_UNAVAILABLE, "provider busy; try again");
    }
    let declined = draw() < provider.behaviour.decline_rate;
    let (outcome, reason) = if declined {
        ("declined", Some("card declined"))
    } else {
        ("approved", None)
    };
    let row: Result<(Uuid, i64, String, Option<String>, bool), sqlx::Error> = sqlx::query_as(
        "INSERT INTO charges (idempotency_key, order_id, amount_cents, outcome, reason)
         VALUES ($1, $2, $3, $4, $5)
         ON CONFLICT (idempotency_key) DO UPDATE SET calls = charges.calls + 1
         RETURNING order_id, amount_cents, outcome, reason, (xmax = 0) AS inserted",
    )
    .bind(key)
    .bind(body.order_id)
    .bind(body.amount_cents)
    .bind(outcome)
    .bind(reason)
    .fetch_one(&provider.pool)
    .await;
    match row {
        Ok((order_id, amount, outcome, reason, inserted)) => {
            if (order_id, amount) != (body.order_id, body.amount_cents) {
                return error(
                    StatusCode::CONFLICT,
                    "this Idempotency-Key was used for another charge",
                );
            }
            let status = if inserted {
                charged(if outcome == "approved" {
                    "approved"
                } else {
                    "declined"
                });
                StatusCode::CREATED
            } else {
                charged("repeated");
                StatusCode::OK
            };
            (
                status,
                Json(
                    json!({ "orderId": order_id, "amountCents": amount, "outcome": outcome, "reason": reason }),
                ),
            )
        }
        Err(e) => {
            tracing::warn!(error = %e, "charge not stored");
            charged("unavailable");
            error(StatusCode::SERVICE_UNAVAILABLE, "database unavailable")
        }
    }
}

fn charged(outcome: &'static str) {
    telemetry::metrics::counter!(crate::telemetry::names::CHARGES, "outcome" => outcome)
        .increment(1);
}

async fn health() -> Json<Value> {
    Json(json!({ "status": "ok" }))
}

/// The provider's routes, with request metrics and `GET /metrics`.
pub fn router(pool: PgPool, behaviour: Behaviour) -> Router {
    let routes = Router::new()
        .route("/charges", post(charge))
        .route("/health", get(health));
    telemetry::http::instrument(routes).with_state(Provider { pool, behaviour })
}

/// Prepares the database and binds the listen address; [`Payments::serve`] serves.
pub struct Payments {
    pub listener: TcpListener,
    pub pool: PgPool,
    pub behaviour: Behaviour,
}

impl Payments {
    pub async fn build(settings: &Settings) -> anyhow::Result<Self> {
        let pool = outbox::database::prepare(
            &settings.server_options()?,
            &settings.payments_database,
            &MIGRATOR,
            settings.orderflow_pool_size,
        )
        .await?;
        let listener = TcpListener::bind(&settings.payments_listen_addr).await?;
        tracing::info!(address = %listener.local_addr()?, "payments listening");
        Ok(Self {
            listener,
            pool,
            behaviour: Behaviour::from_settings(settings),
        })
    }

    pub fn port(&self) -> u16 {
        self.listener.local_addr().map(|a| a.port()).unwrap_or(0)
    }

    pub async fn serve(
        self,
        shutdown: impl std::future::Future<Output = ()> + Send + 'static,
    ) -> anyhow::Result<()> {
        axum::serve(self.listener, router(self.pool, self.behaviour))
            .with_graceful_shutdown(shutdown)
            .await?;
        Ok(())
    }
}
