//! Wiring: the projector folding the mandates topic and the HTTP server reading what it
//! folded, both stopped by one shutdown signal. The instance follows the read model's
//! current generation: when a rebuild switches it, the projector and the reads move over.

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use tokio::net::TcpListener;
use tokio::sync::{oneshot, watch};
use tracing::{info, warn};

use crate::configuration::Settings;
use crate::generations::{self, MandatesProjector, ReadStore};
use crate::routes::{router, AppState, Serving};

/// How often a serving instance checks whether reads switched to another generation.
pub const GENERATION_POLL: Duration = Duration::from_secs(1);
/// How often the consumer lag gauges are refreshed.
const LAG_POLL: Duration = Duration::from_secs(5);

#[derive(Debug, thiserror::Error)]
pub enum StartupError {
    #[error("cannot listen on {addr}: {source}")]
    Listen {
        addr: String,
        source: std::io::Error,
    },
    #[error(transparent)]
    Projector(#[from] projectors::Error),
    #[error("http server: {0}")]
    Serve(std::io::Error),
    #[error("the projector task failed: {0}")]
    Task(#[from] tokio::task::JoinError),
}

pub struct Application {
    listener: TcpListener,
    settings: Settings,
    projector: MandatesProjector,
    state: Arc<AppState<ReadStore>>,
    /// Where the current generation is recorded; polled to follow switches.
    catalog: ReadStore,
}

impl Application {
    pub async fn build(settings: Settings) -> Result<Self, StartupError> {
        let addr = settings.iot_listen_addr.clone();
        let listener = TcpListener::bind(&addr)
            .await
            .map_err(|source| StartupError::Listen { addr, source })?;
        let catalog = generations::open_store(&settings, generations::FIRST).await?;
        let generation = generations::current(&catalog, &settings).await?;
        let store = generations::open_store(&settings, generation).await?;
        let projector = generations::projector(&settings, generation, store.clone())?;
        let state = Arc::new(AppState::new(Serving {
            generation,
            store,
            projector: projector.status(),
        }));
        Ok(Self {
            listener,
            settings,
            projector,
            state,
            catalog,
        })
    }

    /// The port the HTTP server listens on (useful when bound to port 0).
    pub fn port(&self) -> u16 {
        self.listener
            .local_addr()
            .map(|a| a.port())
            .unwrap_or_default()
    }

    /// Serves until `shutdown` completes, then lets the projector finish its batch.
    pub async fn run_until_stopped(
        self,
        shutdown: impl Future<Output = ()> + Send + 'static,
    ) -> Result<(), StartupError> {
        let (stop_server, server_stopped) = watch::channel(false);
        let port = self.port();
        let server = axum::serve(self.listener, router(self.state.clone())).with_graceful_shutdown(
            async move {
                let mut stopped = server_stopped;
                let _ = stopped.wait_for(|stop| *stop).await;
            },
        );
        let server = tokio::spawn(std::future::IntoFuture::into_future(server));
        info!(
            port,
            generation = self.state.serving().generation,
            "iot-platform listening"
        );

        let outcome = follow_generations(
            &self.settings,
            &self.catalog,
            &self.state,
            self.projector,
            shutdown,
        )
        .await;
        let _ = stop_server.send(true);
        server.await?.map_err(StartupError::Serve)?;
        outcome
    }
}

/// Runs the projector of the served generation; when the current generation changes, stops it
/// and starts the new generation's projector. Returns at shutdown.
async fn follow_generations(
    settings: &Settings,
    catalog: &ReadStore,
    state: &AppState<ReadStore>,
    mut projector: MandatesProjector,
    shutdown: impl Future<Output = ()>,
) -> Result<(), StartupError> {
    tokio::pin!(shutdown);
    loop {
        let generation = state.serving().generation;
        // The served generation's lag per partition, as a gauge on `GET /metrics`.
        let _lag = telemetry::lag::watch(
            settings.kafka.clone(),
            generations::group(settings, generation),
            settings.iot_topic.clone(),
            LAG_POLL,
        );
        let (stop, stopped) = oneshot::channel::<()>();
        let mut task = tokio::spawn(projector.run(async move {
            let _ = stopped.await;
        }));
        let switched_to = loop {
            tokio::select! {
                () = &mut shutdown => break None,
                finished = &mut task => {
                    // A projector only returns on its own when it hit a non-retryable error.
                    finished??;
                    return Ok(());
                }
                () = tokio::time::sleep(GENERATION_POLL) => {
                    match generations::current(catalog, settings).await {
                        Ok(current) if current != generation => break Some(current),
                        Ok(_) => {}
                        Err(e) => warn!(error = %e, "cannot read the current generation"),
                    }
                }
            }
        };
        let Some(next) = switched_to else {
            let _ = stop.send(());
            task.await??;
            return Ok(());
        };
        // Reads move before the old projector stops: the rebuild drops the old generation a
        // grace period after the switch, and no reader may still be on it then.
        let store = generations::open_store(settings, next).await?;
        projector = generations::projector(settings, next, store.clone())?;
        state.replace(Serving {
            generation: next,
            store,
            projector: projector.status(),
        });
        let _ = stop.send(());
        task.await??;
        info!(
            from = generation,
            to = next,
            "reads switched to a new generation"
        );
    }
}
