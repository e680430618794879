//! The delivery service (default port 3018), in database `commerce_delivery`: an order that
//! ships becomes a package, assigned to a FREE delivery agent (who becomes OCCUPIED), queued
//! while none is free; on delivery the agent is FREE again and the order Delivered.
//!
//! - [`domain`]: packages and their statuses.
//! - [`store`]: agents and packages; every step written with its event
//!   (`commerce.delivery-events`) in one transaction, one package per agent enforced by the
//!   database.
//! - [`dispatch`]: the dispatcher that assigns queued packages and marks delivered orders.
//! - [`read_model`]: the packages read model (projector runtime, MySQL store) behind
//!   `GET /packages/{id}` and `GET /deliveries?agentId=`.
//! - this module: the HTTP handlers and the service's background tasks.
//!
//! Inputs: `commerce.order-events` (a status change to Shipped creates the package) and
//! `commerce.user-events` (a delivery agent created adds an agent, a user deleted retires
//! one). Output to the orders service: `PUT /orders/{id}/status` Delivered, owed in the
//! delivery database until it is confirmed, so a crash or an orders outage delays it only.

pub mod dispatch;
pub mod domain;
pub mod read_model;
pub mod store;

use std::collections::HashMap;
use std::sync::Arc;

use anyhow::Context;
use axum::extract::{Path, Query, State};
use axum::routing::{get, post};
use axum::{Json, Router};
use outbox::Outbox;
use projectors::store::mysql::MysqlStore;
use projectors::{Projector, ProjectorSettings};
use serde_json::Value;
use sqlx::migrate::Migrator;
use sqlx::mysql::MySqlPool;
use sqlx::PgPool;
use tokio::sync::{watch, Notify};
use tokio::task::JoinHandle;
use topics::commerce::{
    DeliveryEvent, OrderEvent, OrderEventKind, OrderStatus, UserEvent, UserEventKind, UserType,
};
use topics::events::Event;

use dispatch::{Dispatcher, OrdersClient};
use domain::{parse_id, Package};

use crate::configuration::Settings;
use crate::events::spawn_relay;
use crate::http::ApiError;
use crate::inbox::Follower;
use crate::Service;

pub static MIGRATOR: Migrator = sqlx::migrate!("./src/delivery/migrations");

/// The delivery database's outbox: packages created, assigned, delivered.
pub const DELIVERY_OUTBOX: Outbox = Outbox::new(
    "commerce_delivery_outbox",
    0x636f_6d6d_6465_6c69, // "commdeli"
    0x6364_6c76,           // "cdlv"
);

#[derive(Clone)]
pub struct Delivery {
    pub pool: PgPool,
    pub read_model: MySqlPool,
    pub documents: String,
    pub dispatcher: Arc<Dispatcher>,
}

pub fn router(delivery: Delivery) -> Router {
    Router::new()
        .route("/packages/{id}", get(read_package))
        .route("/packages/{id}/delivery", post(deliver))
        .route("/deliveries", get(deliveries))
        .with_state(delivery)
}

/// Starts the service's background tasks (the outbox relay, the packages read model, the
/// followers of order and user events, the dispatcher) and returns its router.
pub async fn start(
    settings: &Settings,
    pool: PgPool,
    stopped: &watch::Receiver<bool>,
    tasks: &mut Vec<JoinHandle<()>>,
) -> anyhow::Result<Router> {
    let kafka = &settings.kafka;
    spawn_relay::<DeliveryEvent>(settings, Service::Delivery, DELIVERY_OUTBOX, stopped, tasks)?;

    let store = MysqlStore::connect(&settings.mysql_url, &settings.delivery_read_model)
        .await
        .context("connecting to the packages read model (mysql_url)")?;
    let projector = Projector::new(
        read_model::PackagesProjection,
        store,
        ProjectorSettings {
            kafka: kafka.clone(),
            group_id: format!("{}.read-model", settings.delivery_group),
            topic: DeliveryEvent::TOPIC.name.to_owned(),
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
            tracing::error!(error = %e, "the packages read model stopped");
        }
    }));

    let wake = Arc::new(Notify::new());
    let dispatcher = Arc::new(Dispatcher {
        pool: pool.clone(),
        orders: OrdersClient::new(&settings.delivery_orders_url)?,
        interval: settings.dispatch_interval(),
        wake: wake.clone(),
    });
    tasks.push(tokio::spawn(dispatcher.clone().run(stopped.clone())));

    let follower = |suffix: &str| Follower {
        kafka: kafka.clone(),
        group_id: format!("{}.{suffix}", settings.delivery_group),
        dead_letter_topic: settings.commerce_dead_letter_topic.clone(),
    };
    let (orders_pool, orders_wake) = (pool.clone(), wake.clone());
    tasks.push(tokio::spawn(follower("orders").run(
        stopped.clone(),
        move |event: OrderEvent| {
            let (pool, wake) = (orders_pool.clone(), orders_wake.clone());
            async move { follow_order(&pool, &wake, &event).await }
        },
    )));
    let (users_pool, users_wake) = (pool.clone(), wake.clone());
    tasks.push(tokio::spawn(follower("users").run(
        stopped.clone(),
        move |event: UserEvent| {
            let (pool, wake) = (users_pool.clone(), users_wake.clone());
            async move { follow_user(&pool, &wake, &event).await }
        },
    )));

    let read_model = sqlx::mysql::MySqlPoolOptions::new()
        .max_connections(8)
        .acquire_timeout(std::time::Duration::from_secs(3))
        .connect_lazy(&settings.mysql_url)
        .context("parsing mysql_url")?;
    Ok(router(Delivery {
        pool,
        read_model,
        documents: crate::users::Users::documents_table(&settings.delivery_read_model),
        dispatcher,
    }))
}

/// An order that became Shipped is a package to deliver.
async fn follow_order(pool: &PgPool, wake: &Notify, event: &OrderEvent) -> Result<(), ApiError> {
    if event.kind == OrderEventKind::StatusChanged && event.status == OrderStatus::Shipped {
        if store::create_package(pool, event.order_id, event.customer_id).await? {
            tracing::info!(order = %event.order_id, "package queued");
        }
        wake.notify_one();
    }
    Ok(())
}

/// Agents come and go with the users service's accounts. Status changes are ignored: an
/// agent's status follows its packages, which this service assigns.
async fn follow_user(pool: &PgPool, wake: &Notify, event: &UserEvent) -> Result<(), ApiError> {
    match event.kind {
        UserEventKind::DeliveryAgentCreated => {
            store::add_agent(pool, event.user_id).await?;
            tracing::info!(agent = %event.user_id, "delivery agent added");
            wake.notify_one();
        }
        UserEventKind::UserDeleted if event.user_type == UserType::DeliveryAgent => {
            store::retire_agent(pool, event.user_id).await?;
            tracing::info!(agent = %event.user_id, "delivery agent retired");
        }
        UserEventKind::UserDeleted | UserEventKind::AgentStatusChanged => {}
    }
    Ok(())
}

async fn read_package(
    State(delivery): State<Delivery>,
    Path(id): Path<String>,
) -> Result<Json<Value>, ApiError> {
    let id = parse_id("package id", &id).map_err(ApiError::BadRequest)?;
    read_model::package(&delivery.read_model, &delivery.documents, id)
        .await?
        .map(Json)
        .ok_or_else(|| store::no_package(id))
}

/// `POST /packages/{id}/delivery`: the agent delivered the package.
async fn deliver(
    State(delivery): State<Delivery>,
    Path(id): Path<String>,
) -> Result<Json<Package>, ApiError> {
    let id = parse_id("package id", &id).map_err(ApiError::BadRequest)?;
    let delivered = store::deliver(&delivery.pool, id).await?;
    tracing::info!(%id, "package delivered");
    delivery.dispatcher.wake.notify_one();
    Ok(Json(delivered))
}

/// `GET /deliveries?agentId=`: the packages an agent was given.
async fn deliveries(
    State(delivery): State<Delivery>,
    Query(params): Query<HashMap<String, String>>,
) -> Result<Json<Vec<Value>>, ApiError> {
    if let Some(other) = params.keys().find(|k| k.as_str() != "agentId") {
        return Err(ApiError::BadRequest(format!(
            "unknown parameter {other:?}; the one parameter is agentId"
        )));
    }
    let agent = params
        .get("agentId")
        .ok_or_else(|| ApiError::BadRequest("agentId is required".to_owned()))?;
    let agent = parse_id("agentId", agent).map_err(ApiError::BadRequest)?;
    Ok(Json(
        read_model::deliveries_of(&delivery.read_model, &delivery.documents, agent).await?,
    ))
}
