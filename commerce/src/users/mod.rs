//! The users service (default port 3017), in database `commerce_users`: customers, admins and
//! delivery agents, soft-deleted, listed through a state query over a read model.
//!
//! - [`domain`]: users, their types, addresses, geolocations, phones and validation.
//! - [`store`]: the queries; a delivery agent created, a user deleted and an agent's status
//!   changed are written with their events (`commerce.user-events`) in one transaction.
//! - [`read_model`]: the projection of the connector's change topic of this database into
//!   the MySQL store, which `POST /users/query` reads.
//! - [`query`]: parsing a state query and running it as keyset-paged SQL.
//! - this module: the HTTP handlers and the service's background tasks.
//!
//! An agent's status follows its packages: the service follows `commerce.delivery-events`
//! (assigned → OCCUPIED, delivered → FREE) and publishes each change.

pub mod domain;
pub mod query;
pub mod read_model;
pub mod store;

use anyhow::Context;
use axum::extract::{Path, State};
use axum::http::{header, StatusCode};
use axum::response::IntoResponse;
use axum::routing::{get, post};
use axum::{Json, Router};
use outbox::Outbox;
use projectors::store::mysql::MysqlStore;
use projectors::{Projector, ProjectorSettings};
use serde_json::Value;
use sqlx::migrate::Migrator;
use sqlx::mysql::MySqlPool;
use sqlx::PgPool;
use tokio::sync::watch;
use tokio::task::JoinHandle;
use topics::cluster::Cluster;
use topics::commerce::{DeliveryEvent, UserEvent};
use topics::spec::TopicSpec;
use uuid::Uuid;

use domain::{parse_user_id, User, UserBody};
use query::QueryBody;

use crate::configuration::Settings;
use crate::events::spawn_relay;
use crate::http::{ApiError, ApiJson};
use crate::inbox::Follower;
use crate::Service;

pub static MIGRATOR: Migrator = sqlx::migrate!("./src/users/migrations");

/// The users database's outbox: agents created, users deleted, agent status changes.
pub const USERS_OUTBOX: Outbox = Outbox::new(
    "commerce_users_outbox",
    0x636f_6d6d_7573_6572, // "commuser"
    0x6375_7372,           // "cusr"
);

/// What the handlers share: the users database and the read model's table.
#[derive(Clone)]
pub struct Users {
    pub pool: PgPool,
    pub read_model: MySqlPool,
    /// The MySQL store's documents table of the read model's namespace, quoted.
    pub documents: String,
}

impl Users {
    /// The documents table the MySQL store keeps for `namespace` (see
    /// `projectors::store::mysql`, "Layout").
    pub fn documents_table(namespace: &str) -> String {
        format!(
            "`{}_documents`",
            projectors::store::mysql::table_prefix(namespace)
        )
    }
}

/// Starts the service's background tasks (the outbox relay, the read model's projector, the
/// follower of delivery events) and returns its router.
pub async fn start(
    settings: &Settings,
    pool: PgPool,
    stopped: &watch::Receiver<bool>,
    tasks: &mut Vec<JoinHandle<()>>,
) -> anyhow::Result<Router> {
    let kafka = &settings.kafka;
    spawn_relay::<UserEvent>(settings, Service::Users, USERS_OUTBOX, stopped, tasks)?;

    // The connector creates the change topic at its first snapshot; creating it here (as the
    // connector would) lets the projector subscribe before the connector ever ran.
    let changes: &'static TopicSpec = Box::leak(Box::new(TopicSpec {
        name: Box::leak(settings.users_changes_topic.clone().into_boxed_str()),
        ..read_model::USERS_CHANGES
    }));
    Cluster::connect(kafka)?
        .create(changes, 1)
        .await
        .with_context(|| format!("creating topic {}", changes.name))?;
    let store = MysqlStore::connect(&settings.mysql_url, &settings.users_read_model)
        .await
        .context("connecting to the users read model (mysql_url)")?;
    let projector = Projector::new(
        read_model::UsersProjection,
        store,
        ProjectorSettings {
            kafka: kafka.clone(),
            group_id: format!("{}.read-model", settings.users_group),
            topic: changes.name.to_owned(),
            dead_letter_topic: settings.commerce_dead_letter_topic.clone(),
            max_batch: 1000,
        },
    )?;
    let mut stop = stopped.clone();
    tasks.push(tokio::spawn(async move {
        let shutdown = async move {
            let _ = stop.wait_for(|stop| *stop).await;
        };
        if let Err(e) = projector.run(shutdown).await {
            tracing::error!(error = %e, "the users read model stopped");
        }
    }));

    let follower = Follower {
        kafka: kafka.clone(),
        group_id: format!("{}.deliveries", settings.users_group),
        dead_letter_topic: settings.commerce_dead_letter_topic.clone(),
    };
    let following = pool.clone();
    tasks.push(tokio::spawn(follower.run(
        stopped.clone(),
        move |event: DeliveryEvent| {
            let pool = following.clone();
            async move { store::follow_delivery(&pool, &event).await }
        },
    )));

    let read_model = sqlx::mysql::MySqlPoolOptions::new()
        .max_connections(8)
        .acquire_timeout(std::time::Duration::from_secs(3))
        .connect_lazy(&settings.mysql_url)
        .context("parsing mysql_url")?;
    Ok(router(Users {
        pool,
        read_model,
        documents: Users::documents_table(&settings.users_read_model),
    }))
}

pub fn router(users: Users) -> Router {
    Router::new()
        .route("/users", post(create))
        .route("/users/query", post(run_query))
        .route("/users/{id}", get(read).put(replace).delete(delete))
        .with_state(users)
}

fn user_id(text: &str) -> Result<Uuid, ApiError> {
    parse_user_id(text).map_err(ApiError::BadRequest)
}

async fn create(
    State(users): State<Users>,
    ApiJson(body): ApiJson<UserBody>,
) -> Result<impl IntoResponse, ApiError> {
    let details = body.validate().map_err(ApiError::BadRequest)?;
    let created = store::insert(&users.pool, &details).await?;
    tracing::info!(id = %created.id, "user created");
    let location = format!("/users/{}", created.id);
    Ok((
        StatusCode::CREATED,
        [(header::LOCATION, location)],
        Json(created),
    ))
}

/// A deleted user is still read, with `isActive: false`.
async fn read(State(users): State<Users>, Path(id): Path<String>) -> Result<Json<User>, ApiError> {
    let id = user_id(&id)?;
    store::get(&users.pool, id)
        .await?
        .map(Json)
        .ok_or_else(|| store::no_user(id))
}

async fn replace(
    State(users): State<Users>,
    Path(id): Path<String>,
    ApiJson(body): ApiJson<UserBody>,
) -> Result<Json<User>, ApiError> {
    let id = user_id(&id)?;
    let details = body.validate().map_err(ApiError::BadRequest)?;
    if details.id.is_some_and(|body_id| body_id != id) {
        return Err(ApiError::BadRequest(format!(
            "the body's id differs from the path's {id}"
        )));
    }
    Ok(Json(store::replace(&users.pool, id, &details).await?))
}

async fn delete(
    State(users): State<Users>,
    Path(id): Path<String>,
) -> Result<Json<User>, ApiError> {
    let id = user_id(&id)?;
    let deleted = store::deactivate(&users.pool, id).await?;
    tracing::info!(%id, "user deleted");
    Ok(Json(deleted))
}

async fn run_query(
    State(users): State<Users>,
    ApiJson(body): ApiJson<QueryBody>,
) -> Result<Json<Value>, ApiError> {
    let query = body.validate().map_err(ApiError::BadRequest)?;
    Ok(Json(
        query::run(&users.read_model, &users.documents, &query).await?,
    ))
}
