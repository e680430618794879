//! The users database: users, each change written with its events (if any) in one
//! transaction. Only three things publish: a delivery agent's account created, a user deleted,
//! an agent's status changed; everything else reaches the read model through the connector's
//! change topic of this database.

use sqlx::postgres::PgRow;
use sqlx::{PgPool, Postgres, Row, Transaction};
use topics::commerce::{
    AgentStatus, DeliveryEvent, DeliveryEventKind, UserEvent, UserEventKind, UserType,
};
use uuid::Uuid;

use super::domain::{
    agent_status_str, parse_agent_status, parse_user_type, user_type_str, Address, Geolocation,
    Phone, User, UserDetails,
};
use super::USERS_OUTBOX;
use crate::customers::domain::Email;
use crate::events::record;
use crate::http::ApiError;

const COLUMNS: &str = "id, email, username, first_name, last_name, street, city, state, zip_code,
    country, latitude, longitude, phone_number, user_type, agent_status, is_active, created_at,
    updated_at";

fn decode<T>(result: Result<T, String>) -> Result<T, sqlx::Error> {
    result.map_err(|e| sqlx::Error::Decode(e.into()))
}

fn user(row: &PgRow) -> Result<User, sqlx::Error> {
    let agent_status: Option<String> = row.try_get("agent_status")?;
    Ok(User {
        id: row.try_get("id")?,
        email: decode(Email::parse(row.try_get("email")?))?,
        username: row.try_get("username")?,
        first_name: row.try_get("first_name")?,
        last_name: row.try_get("last_name")?,
        address: Address {
            street: row.try_get("street")?,
            city: row.try_get("city")?,
            state: row.try_get("state")?,
            zip_code: row.try_get("zip_code")?,
            country: row.try_get("country")?,
        },
        geolocation: decode(Geolocation::parse(
            row.try_get("latitude")?,
            row.try_get("longitude")?,
        ))?,
        phone_number: decode(Phone::parse(row.try_get("phone_number")?))?,
        user_type: decode(parse_user_type(row.try_get("user_type")?))?,
        delivery_agent_status: agent_status
            .as_deref()
            .map(parse_agent_status)
            .transpose()
            .map_err(|e| sqlx::Error::Decode(e.into()))?,
        is_active: row.try_get("is_active")?,
        created_at: row.try_get("created_at")?,
        updated_at: row.try_get("updated_at")?,
    })
}

fn user_event(
    user: &User,
    kind: UserEventKind,
    previous_agent_status: Option<AgentStatus>,
) -> UserEvent {
    UserEvent {
        event_id: Uuid::new_v4(),
        kind,
        user_id: user.id,
        key: String::new(),
        user_type: user.user_type,
        agent_status: user.delivery_agent_status,
        previous_agent_status,
        occurred_at: user.updated_at.timestamp_millis(),
    }
    .with_key()
}

pub fn no_user(id: Uuid) -> ApiError {
    ApiError::NotFound(format!("no user with id {id}"))
}

/// A unique violation names the field the client chose twice.
fn conflict(e: sqlx::Error) -> ApiError {
    if let sqlx::Error::Database(db) = &e {
        if db.code().as_deref() == Some("23505") {
            let field = match db.constraint() {
                Some("users_pkey") => "id",
                Some("users_email_key") => "email",
                Some("users_username_key") => "username",
                _ => "a unique field",
            };
            return ApiError::Conflict(format!("another user has this {field}"));
        }
    }
    ApiError::Database(e)
}

pub async fn get(pool: &PgPool, id: Uuid) -> Result<Option<User>, sqlx::Error> {
    sqlx::query(&format!("SELECT {COLUMNS} FROM users WHERE id = $1"))
        .bind(id)
        .fetch_optional(pool)
        .await?
        .as_ref()
        .map(user)
        .transpose()
}

/// Inserts a user; a delivery agent's account publishes `DELIVERY_AGENT_CREATED` with it.
pub async fn insert(pool: &PgPool, details: &UserDetails) -> Result<User, ApiError> {
    let mut tx = pool.begin().await?;
    let row = sqlx::query(&format!(
        "INSERT INTO users (id, email, username, first_name, last_name, street, city, state,
                            zip_code, country, latitude, longitude, phone_number, user_type,
                            agent_status)
         VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14, $15)
         RETURNING {COLUMNS}"
    ))
    .bind(details.id.unwrap_or_else(Uuid::new_v4))
    .bind(details.email.as_str())
    .bind(&details.username)
    .bind(&details.first_name)
    .bind(&details.last_name)
    .bind(&details.address.street)
    .bind(&details.address.city)
    .bind(&details.address.state)
    .bind(&details.address.zip_code)
    .bind(&details.address.country)
    .bind(details.geolocation.latitude)
    .bind(details.geolocation.longitude)
    .bind(details.phone_number.as_str())
    .bind(user_type_str(details.user_type))
    .bind(match details.user_type {
        UserType::DeliveryAgent => Some(agent_status_str(
            details.agent_status.unwrap_or(AgentStatus::Free),
        )),
        _ => None,
    })
    .fetch_one(&mut *tx)
    .await
    .map_err(conflict)?;
    let created = user(&row)?;
    if created.user_type == UserType::DeliveryAgent {
        let event = user_event(&created, UserEventKind::DeliveryAgentCreated, None);
        record(&USERS_OUTBOX, &mut tx, &[event]).await?;
    }
    tx.commit().await?;
    Ok(created)
}

/// Replaces an active user's details. The type cannot change (other services learnt of
/// agents when they were created), nor can an agent's status: it follows the agent's
/// packages ([`follow_delivery`]), so a body may only repeat it.
pub async fn replace(pool: &PgPool, id: Uuid, details: &UserDetails) -> Result<User, ApiError> {
    let mut tx = pool.begin().await?;
    let current = locked(&mut tx, id).await?;
    if !current.is_active {
        return Err(ApiError::Conflict(format!("user {id} is deleted")));
    }
    if current.user_type != details.user_type {
        return Err(ApiError::Conflict(format!(
            "user {id} is a {} and cannot become a {}",
            user_type_str(current.user_type),
            user_type_str(details.user_type)
        )));
    }
    if details
        .agent_status
        .is_some_and(|status| Some(status) != current.delivery_agent_status)
    {
        return Err(ApiError::Conflict(
            "deliveryAgentStatus follows the agent's packages; it changes when one is assigned or delivered"
                .to_owned(),
        ));
    }
    let row = sqlx::query(&format!(
        "UPDATE users SET email = $2, username = $3, first_name = $4, last_name = $5,
                street = $6, city = $7, state = $8, zip_code = $9, country = $10,
                latitude = $11, longitude = $12, phone_number = $13, updated_at = now()
         WHERE id = $1 RETURNING {COLUMNS}"
    ))
    .bind(id)
    .bind(details.email.as_str())
    .bind(&details.username)
    .bind(&details.first_name)
    .bind(&details.last_name)
    .bind(&details.address.street)
    .bind(&details.address.city)
    .bind(&details.address.state)
    .bind(&details.address.zip_code)
    .bind(&details.address.country)
    .bind(details.geolocation.latitude)
    .bind(details.geolocation.longitude)
    .bind(details.phone_number.as_str())
    .fetch_one(&mut *tx)
    .await
    .map_err(conflict)?;
    let replaced = user(&row)?;
    tx.commit().await?;
    Ok(replaced)
}

/// Soft delete: the user becomes inactive (once) with `USER_DELETED`; deleting a deleted user
/// changes nothing and answers the same.
pub async fn deactivate(pool: &PgPool, id: Uuid) -> Result<User, ApiError> {
    let mut tx = pool.begin().await?;
    let current = locked(&mut tx, id).await?;
    if !current.is_active {
        return Ok(current);
    }
    let row = sqlx::query(&format!(
        "UPDATE users SET is_active = false, updated_at = now() WHERE id = $1 RETURNING {COLUMNS}"
    ))
    .bind(id)
    .fetch_one(&mut *tx)
    .await?;
    let deleted = user(&row)?;
    record(
        &USERS_OUTBOX,
        &mut tx,
        &[user_event(&deleted, UserEventKind::UserDeleted, None)],
    )
    .await?;
    tx.commit().await?;
    Ok(deleted)
}

async fn locked(tx: &mut Transaction<'_, Postgres>, id: Uuid) -> Result<User, ApiError> {
    let row = sqlx::query(&format!(
        "SELECT {COLUMNS} FROM users WHERE id = $1 FOR UPDATE"
    ))
    .bind(id)
    .fetch_optional(&mut **tx)
    .await?;
    Ok(user(&row.ok_or_else(|| no_user(id))?)?)
}

/// Follows the delivery service: an assigned package makes its agent OCCUPIED, a delivered
/// one FREE, with `AGENT_STATUS_CHANGED` when the status really changes. Each delivery event
/// applies once (a redelivered one changes nothing); an event about an unknown or non-agent
/// user is recorded as applied and logged, since retrying it could never succeed.
pub async fn follow_delivery(pool: &PgPool, event: &DeliveryEvent) -> Result<(), ApiError> {
    let next = match event.kind {
        DeliveryEventKind::PackageAssigned => AgentStatus::Occupied,
        DeliveryEventKind::PackageDelivered => AgentStatus::Free,
        DeliveryEventKind::PackageCreated => return Ok(()),
    };
    let Some(agent) = event.agent_id else {
        tracing::error!(event = %event.event_id, "delivery event without an agent; ignored");
        return Ok(());
    };
    let mut tx = pool.begin().await?;
    let fresh = sqlx::query(
        "INSERT INTO applied_delivery_events (event_id) VALUES ($1) ON CONFLICT DO NOTHING",
    )
    .bind(event.event_id)
    .execute(&mut *tx)
    .await?
    .rows_affected()
        == 1;
    if !fresh {
        return Ok(());
    }
    let current = match locked(&mut tx, agent).await {
        Ok(current) => current,
        Err(ApiError::NotFound(_)) => {
            tracing::error!(%agent, event = %event.event_id, "delivery event for an unknown user");
            tx.commit().await?;
            return Ok(());
        }
        Err(e) => return Err(e),
    };
    if current.user_type != UserType::DeliveryAgent {
        tracing::error!(%agent, event = %event.event_id, "delivery event for a user who is no agent");
    } else if current.delivery_agent_status != Some(next) {
        let row = sqlx::query(&format!(
            "UPDATE users SET agent_status = $2, updated_at = now() WHERE id = $1
             RETURNING {COLUMNS}"
        ))
        .bind(agent)
        .bind(agent_status_str(next))
        .fetch_one(&mut *tx)
        .await?;
        let changed = user(&row)?;
        let event = user_event(
            &changed,
            UserEventKind::AgentStatusChanged,
            current.delivery_agent_status,
        );
        record(&USERS_OUTBOX, &mut tx, &[event]).await?;
    }
    tx.commit().await?;
    Ok(())
}
