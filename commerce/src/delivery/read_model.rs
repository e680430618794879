//! The packages read model: package id → where it is, who carries it, and a digest of every
//! delivery event it has seen; folded by the projector runtime from `commerce.delivery-events`
//! into the MySQL store. `GET /packages/{id}` reads a document, `GET /deliveries?agentId=`
//! the documents naming an agent.

use chrono::{DateTime, SecondsFormat};
use projectors::digest::Digest;
use projectors::Projection;
use serde::{Deserialize, Serialize};
use serde_json::Value;
use sqlx::mysql::MySqlPool;
use topics::commerce::{DeliveryEvent, DeliveryEventKind};
use uuid::Uuid;

use super::domain::package_status_str;
use crate::http::ApiError;

/// A package as the read model has it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct PackageView {
    pub id: String,
    pub order_id: String,
    pub customer_id: i64,
    pub status: String,
    pub agent_id: Option<String>,
    pub created_at: Option<String>,
    pub assigned_at: Option<String>,
    pub delivered_at: Option<String>,
    /// How many delivery events the package has seen, and a hash chain over their ids.
    pub history: Digest,
}

fn time(millis: i64) -> Option<String> {
    DateTime::from_timestamp_millis(millis)
        .map(|at| at.to_rfc3339_opts(SecondsFormat::Millis, true))
}

pub struct PackagesProjection;

impl Projection for PackagesProjection {
    type Event = DeliveryEvent;
    type Document = PackageView;

    fn name(&self) -> &str {
        "packages"
    }

    /// The package id (the record's key; the decoded event's `key` field is not carried).
    fn key(&self, event: &DeliveryEvent) -> String {
        event.package_id.to_string()
    }

    fn fold(&self, state: Option<&PackageView>, event: &DeliveryEvent) -> Option<PackageView> {
        let mut view = state.cloned().unwrap_or_else(|| PackageView {
            id: event.package_id.to_string(),
            order_id: event.order_id.to_string(),
            customer_id: event.customer_id,
            status: String::new(),
            agent_id: None,
            created_at: None,
            assigned_at: None,
            delivered_at: None,
            history: Digest::default(),
        });
        view.status = package_status_str(event.status).to_owned();
        view.agent_id = event.agent_id.map(|a| a.to_string());
        match event.kind {
            DeliveryEventKind::PackageCreated => view.created_at = time(event.occurred_at),
            DeliveryEventKind::PackageAssigned => view.assigned_at = time(event.occurred_at),
            DeliveryEventKind::PackageDelivered => view.delivered_at = time(event.occurred_at),
        }
        view.history = view.history.push(&event.event_id.to_string());
        Some(view)
    }
}

/// The packages a delivery agent was given, oldest first.
pub async fn deliveries_of(
    pool: &MySqlPool,
    documents: &str,
    agent: Uuid,
) -> Result<Vec<Value>, ApiError> {
    let rows: Result<Vec<sqlx::types::Json<Value>>, sqlx::Error> = sqlx::query_scalar(&format!(
        "SELECT document FROM {documents} WHERE JSON_VALUE(document, '$.agentId') = ?
         ORDER BY JSON_VALUE(document, '$.assignedAt'), doc_key"
    ))
    .bind(agent.to_string())
    .fetch_all(pool)
    .await;
    match rows {
        Ok(rows) => Ok(rows.into_iter().map(|d| d.0).collect()),
        Err(sqlx::Error::Database(e)) if e.code().as_deref() == Some("42S02") => Ok(Vec::new()),
        Err(e) => {
            tracing::error!(error = %e, "packages read model query failed");
            Err(ApiError::Unavailable(
                "the packages read model did not answer; try again".to_owned(),
            ))
        }
    }
}

/// One package's document.
pub async fn package(
    pool: &MySqlPool,
    documents: &str,
    id: Uuid,
) -> Result<Option<Value>, ApiError> {
    let row: Result<Option<sqlx::types::Json<Value>>, sqlx::Error> = sqlx::query_scalar(&format!(
        "SELECT document FROM {documents} WHERE doc_key = ?"
    ))
    .bind(id.to_string())
    .fetch_optional(pool)
    .await;
    match row {
        Ok(row) => Ok(row.map(|d| d.0)),
        Err(sqlx::Error::Database(e)) if e.code().as_deref() == Some("42S02") => Ok(None),
        Err(e) => {
            tracing::error!(error = %e, "packages read model query failed");
            Err(ApiError::Unavailable(
                "the packages read model did not answer; try again".to_owned(),
            ))
        }
    }
}
