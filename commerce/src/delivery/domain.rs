//! Packages and their statuses.

use chrono::{DateTime, Utc};
use serde::Serialize;
use topics::commerce::PackageStatus;
use uuid::Uuid;

pub fn package_status_str(status: PackageStatus) -> &'static str {
    match status {
        PackageStatus::Queued => "QUEUED",
        PackageStatus::Assigned => "ASSIGNED",
        PackageStatus::Delivered => "DELIVERED",
    }
}

pub fn parse_package_status(text: &str) -> Result<PackageStatus, String> {
    [
        PackageStatus::Queued,
        PackageStatus::Assigned,
        PackageStatus::Delivered,
    ]
    .into_iter()
    .find(|s| package_status_str(*s) == text)
    .ok_or_else(|| format!("package status must be QUEUED, ASSIGNED or DELIVERED, not {text:?}"))
}

/// A package as the delivery database holds it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Package {
    pub id: Uuid,
    pub order_id: Uuid,
    pub customer_id: i64,
    #[serde(serialize_with = "serialize_status")]
    pub status: PackageStatus,
    pub agent_id: Option<Uuid>,
    pub created_at: DateTime<Utc>,
    pub assigned_at: Option<DateTime<Utc>>,
    pub delivered_at: Option<DateTime<Utc>>,
}

fn serialize_status<S: serde::Serializer>(status: &PackageStatus, s: S) -> Result<S::Ok, S::Error> {
    s.serialize_str(package_status_str(*status))
}

/// An id from a path or query: a UUID; `what` names it in the message.
pub fn parse_id(what: &str, text: &str) -> Result<Uuid, String> {
    text.trim()
        .parse()
        .map_err(|_| format!("{what} must be a UUID, not {text:?}"))
}
