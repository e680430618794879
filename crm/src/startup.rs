//! Bootstrapping the CRM: its database (created and migrated on first start), the one-time
//! seed, then the API and the outbox relay, which stop together.

use std::future::Future;
use std::time::Duration;

use anyhow::Context;
use sqlx::postgres::{PgConnectOptions, PgPoolOptions};
use sqlx::{Connection, PgConnection, PgPool};
use tokio::net::TcpListener;
use tokio::sync::watch;

use crate::configuration::Settings;
use crate::outbox;
use crate::routes;
use crate::seed::{self, SeedOutcome};

/// How long shutdown waits for the relay to finish its round before leaving it; whatever it
/// did not confirm stays in the outbox for the next start.
const RELAY_STOP_TIMEOUT: Duration = Duration::from_secs(15);

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
        create_database_if_missing(&settings).await?;
        let pool = PgPoolOptions::new()
            .max_connections(settings.crm_max_connections)
            .acquire_timeout(Duration::from_secs(5))
            .connect_with(database.clone())
            .await
            .with_context(|| format!("connecting to database {}", settings.crm_database))?;
        sqlx::migrate!("./migrations")
            .run(&pool)
            .await
            .context("migrating the CRM database")?;
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

/// Creates the CRM's database on the configured server unless it exists.
async fn create_database_if_missing(settings: &Settings) -> anyhow::Result<()> {
    let name = &settings.crm_database;
    // The name is spliced into DDL (identifiers cannot be bound), so it is held to a
    // conservative alphabet instead of being quoted and escaped.
    anyhow::ensure!(
        !name.is_empty()
            && name
                .chars()
                .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_'),
        "crm_database {name:?} must consist of a-z, 0-9 and _"
    );
    let server = settings.server_options().context("parsing postgres_url")?;
    let mut conn = PgConnection::connect_with(&server)
        .await
        .context("connecting to the Postgres server (postgres_url)")?;
    let exists: bool =
        sqlx::query_scalar("SELECT EXISTS (SELECT 1 FROM pg_database WHERE datname = $1)")
            .bind(name)
            .fetch_one(&mut conn)
            .await?;
    if !exists {
        match sqlx::query(&format!("CREATE DATABASE \"{name}\""))
            .execute(&mut conn)
            .await
        {
            Ok(_) => tracing::info!(database = %name, "created the CRM database"),
            // Another instance created it between the check and here.
            Err(sqlx::Error::Database(e))
                if matches!(e.code().as_deref(), Some("42P04") | Some("23505")) => {}
            Err(e) => {
                return Err(e).with_context(|| format!("creating database {name}"));
            }
        }
    }
    conn.close().await.ok();
    Ok(())
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
