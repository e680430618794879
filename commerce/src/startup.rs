//! Bootstrapping one service: its database (created and migrated on first start), the
//! one-time seed, then the API and the service's background tasks (the outbox relay for
//! products, orders, users and delivery, the sweeper for orders, the read-model projectors
//! and event followers of users and delivery), which stop together.

use std::future::Future;
use std::time::Duration;

use anyhow::Context;
use axum::extract::DefaultBodyLimit;
use axum::routing::get;
use axum::Router;

use sqlx::PgPool;
use tokio::net::TcpListener;
use tokio::sync::watch;
use tokio::task::JoinHandle;
use topics::commerce::{OrderEvent, StockEvent};
use tower_http::trace::TraceLayer;

use crate::configuration::Settings;
use crate::events::{spawn_relay, ORDERS_OUTBOX, PRODUCTS_OUTBOX};
use crate::http::{health, MAX_BODY_BYTES};
use crate::orders::placement::{Orders, Sweeper};
use crate::orders::products_client::ProductsClient;
use crate::{customers, delivery, orders, products, reviews, seed, users, Service};

/// How long shutdown waits for background tasks; what the relay did not confirm stays in
/// the outbox for the next start.
const STOP_TIMEOUT: Duration = Duration::from_secs(15);

pub struct Application {
    service: Service,
    listener: TcpListener,
    port: u16,
    pool: PgPool,
    settings: Settings,
    seeded: bool,
}

impl Application {
    /// Prepares the service's database and binds its listen address; serving starts with
    /// [`Application::run_until`]. Kafka is not needed here: events wait in the outbox.
    pub async fn build(settings: Settings, service: Service) -> anyhow::Result<Self> {
        if service == Service::Orders {
            anyhow::ensure!(
                settings.pending_timeout() > settings.products_timeout(),
                "orders_pending_timeout_ms must be longer than orders_products_timeout_ms"
            );
        }
        let server = settings.server_options().context("parsing postgres_url")?;
        let migrator = match service {
            Service::Products => &products::MIGRATOR,
            Service::Customers => &customers::MIGRATOR,
            Service::Orders => &orders::MIGRATOR,
            Service::Reviews => &reviews::MIGRATOR,
            Service::Users => &users::MIGRATOR,
            Service::Delivery => &delivery::MIGRATOR,
        };
        let pool = outbox::database::prepare(
            &server,
            settings.database_name(service),
            migrator,
            settings.commerce_pool_size,
        )
        .await?;
        let seeded = if settings.commerce_seed {
            seed::load_once(service, &pool).await?
        } else {
            false
        };
        let address = settings.listen_addr(service);
        let listener = TcpListener::bind(address)
            .await
            .with_context(|| format!("binding {address}"))?;
        let port = listener.local_addr()?.port();
        tracing::info!(service = service.name(), address = %listener.local_addr()?, "listening");
        Ok(Self {
            service,
            listener,
            port,
            pool,
            settings,
            seeded,
        })
    }

    pub fn port(&self) -> u16 {
        self.port
    }

    pub fn pool(&self) -> &PgPool {
        &self.pool
    }

    /// Whether this start loaded the seed.
    pub fn seeded(&self) -> bool {
        self.seeded
    }

    /// Serves until SIGTERM or ctrl-c.
    pub async fn run_until_stopped(self) -> anyhow::Result<()> {
        self.run_until(shutdown_signal()).await
    }

    /// Serves until `shutdown` completes, then drains requests in flight and stops the
    /// background tasks.
    pub async fn run_until(
        self,
        shutdown: impl Future<Output = ()> + Send + 'static,
    ) -> anyhow::Result<()> {
        let (stop, stopped) = watch::channel(false);
        let mut tasks: Vec<JoinHandle<()>> = Vec::new();
        let router = match self.service {
            Service::Products => {
                spawn_relay::<StockEvent>(
                    &self.settings,
                    self.service,
                    PRODUCTS_OUTBOX,
                    &stopped,
                    &mut tasks,
                )?;
                products::router(self.pool.clone())
            }
            Service::Orders => {
                let client = ProductsClient::new(
                    &self.settings.orders_products_url,
                    self.settings.products_timeout(),
                )?;
                let orders = Orders {
                    pool: self.pool.clone(),
                    products: client,
                };
                spawn_relay::<OrderEvent>(
                    &self.settings,
                    self.service,
                    ORDERS_OUTBOX,
                    &stopped,
                    &mut tasks,
                )?;
                tasks.push(tokio::spawn(
                    Sweeper {
                        orders: orders.clone(),
                        pending_timeout: self.settings.pending_timeout(),
                        interval: self.settings.sweep_interval(),
                        shutdown: stopped.clone(),
                    }
                    .run(),
                ));
                orders::router(orders)
            }
            Service::Customers => customers::router(self.pool.clone()),
            Service::Reviews => reviews::router(self.pool.clone()),
            Service::Users => {
                users::start(&self.settings, self.pool.clone(), &stopped, &mut tasks).await?
            }
            Service::Delivery => {
                delivery::start(&self.settings, self.pool.clone(), &stopped, &mut tasks).await?
            }
        };
        let app = Router::new()
            .merge(router)
            .route("/health", get(health))
            .layer(DefaultBodyLimit::max(MAX_BODY_BYTES))
            .layer(TraceLayer::new_for_http());
        // A server span, request count and latency per route + status, and `GET /metrics`.
        let app = telemetry::http::instrument(app);
        let served = axum::serve(self.listener, app)
            .with_graceful_shutdown(shutdown)
            .await;
        tracing::info!(
            service = self.service.name(),
            "API stopped; stopping background tasks"
        );
        let _ = stop.send(true);
        for task in tasks {
            if tokio::time::timeout(STOP_TIMEOUT, task).await.is_err() {
                tracing::warn!("a background task did not stop in time");
            }
        }
        self.pool.close().await;
        served.context("serving the API")
    }
}

async fn shutdown_signal() {
    let ctrl_c = async {
        if let Err(e) = tokio::signal::ctrl_c().await {
            tracing::error!(error = %e, "cannot listen for ctrl-c");
            std::future::pending::<()>().await;
        }
    };
    #[cfg(unix)]
    let terminate = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut signal) => {
                signal.recv().await;
            }
            Err(e) => {
                tracing::error!(error = %e, "cannot listen for SIGTERM");
                std::future::pending::<()>().await;
            }
        }
    };
    #[cfg(not(unix))]
    let terminate = std::future::pending::<()>();
    tokio::select! {
        _ = ctrl_c => {},
        _ = terminate => {},
    }
    tracing::info!("shutdown requested");
}
