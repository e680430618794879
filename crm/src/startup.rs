//! Bootstrapping the CRM: its database (created and migrated on first start), the one-time
//! seed, then the API and the outbox relay, which stop together.

use std::future::Future;
use std::time::Duration;

use anyhow::Context;
use sqlx::migrate::Migrator;
use sqlx::postgres::PgConnectOptions;
use sqlx::PgPool;
use tokio::net::TcpListener;
use tokio::sync::watch;

use crate::configuration::Settings;
use crate::outbox;
use crate::routes;
use crate::seed::{self, SeedOutcome};

/// How long shutdown waits for the relay to finish its round before leaving it; whatever it
/// did not confirm stays in the outbox for the next start.
const RELAY_STOP_TIMEOUT: Duration = Duration::from_secs(15);

/// The CRM's schema (the outbox table included).
static MIGRATOR: Migrator = sqlx::migrate!("./migrations");

pub struct Application {
    listener: TcpListener,
    port: u16,
    pool: PgPool,
    database: PgConnectOptions,
    settings: Settings,
    seed: SeedOutcome,
}

impl Application {
    /// Prepares the database and binds the listen address; serving starts with
    /// [`Application::run_until_stopped`]. Kafka and the schema registry are not needed here:
    /// events wait in the outbox until the relay can publish them.
    pub async fn build(settings: Settings) -> anyhow::Result<Self> {
        let database = settings
            .database_options()
            .context("parsing postgres_url")?;
        let pool = ::outbox::database::prepare(
            &settings.server_options().context("parsing postgres_url")?,
            &settings.crm_database,
            &MIGRATOR,
            settings.crm_max_connections,
        )
        .await
        .with_context(|| format!("preparing database {}", settings.crm_database))?;
        let seed = seed::seed_once(&pool, &settings.crm_seed_csv).await?;

        let listener = TcpListener::bind(&settings.crm_listen_addr)
            .await
            .with_context(|| format!("binding {}", settings.crm_listen_addr))?;
        let port = listener.local_addr()?.port();
        tracing::info!(address = %listener.local_addr()?, "CRM listening");
        Ok(Self {
            listener,
            port,
            pool,
            database,
            settings,
            seed,
        })
    }

    pub fn port(&self) -> u16 {
        self.port
    }

    pub fn pool(&self) -> &PgPool {
        &self.pool
    }

    /// What the seed step did on this start.
    pub fn seed_outcome(&self) -> &SeedOutcome {
        &self.seed
    }

    /// Serves until SIGTERM or ctrl-c.
    pub async fn run_until_stopped(self) -> anyhow::Result<()> {
        self.run_until(shutdown_signal()).await
    }

    /// Serves until `shutdown` completes, then drains requests in flight and stops the relay.
    pub async fn run_until(
        self,
        shutdown: impl Future<Output = ()> + Send + 'static,
    ) -> anyhow::Result<()> {
        let (stop, stopped) = watch::channel(false);
        let relay = tokio::spawn(
            outbox::relay(
                &self.settings.relay_role(),
                self.database.clone(),
                self.settings.kafka.clone(),
                stopped,
            )
            .run(),
        );
        let served = axum::serve(self.listener, routes::router(self.pool.clone()))
            .with_graceful_shutdown(shutdown)
            .await;
        tracing::info!("CRM API stopped; stopping the outbox relay");
        let _ = stop.send(true);
        if tokio::time::timeout(RELAY_STOP_TIMEOUT, relay)
            .await
            .is_err()
        {
            tracing::warn!(
                "outbox relay did not stop in time; unconfirmed events stay in the outbox"
            );
        }
        self.pool.close().await;
        served.context("serving the CRM API")
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
