//! Wiring: the projector folding `connection-mandates` and the HTTP server reading what it
//! folded, both stopped by one shutdown signal.

use std::future::Future;
use std::sync::Arc;

use projectors::store::redis::RedisStore;
use projectors::{Projector, ProjectorSettings};
use tokio::net::TcpListener;
use tokio::sync::watch;
use tracing::info;

use crate::configuration::Settings;
use crate::mandates::MandatesProjection;
use crate::routes::{router, AppState};

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
}

pub struct Application {
    listener: TcpListener,
    projector: Projector<MandatesProjection, RedisStore>,
    state: Arc<AppState<RedisStore>>,
}

impl Application {
    pub async fn build(settings: Settings) -> Result<Self, StartupError> {
        let addr = settings.iot_listen_addr.clone();
        let listener = TcpListener::bind(&addr)
            .await
            .map_err(|source| StartupError::Listen { addr, source })?;
        let store = RedisStore::connect(&settings.redis_url, &settings.iot_namespace).await?;
        let projector = Projector::new(
            MandatesProjection,
            store.clone(),
            ProjectorSettings {
                kafka: settings.kafka.clone(),
                group_id: settings.iot_group.clone(),
                topic: topics::spec::CONNECTION_MANDATES.name.to_owned(),
                dead_letter_topic: settings.iot_dead_letter_topic.clone(),
                max_batch: settings.iot_max_batch,
            },
        )?;
        let state = Arc::new(AppState {
            store,
            projector: projector.status(),
        });
        Ok(Self {
            listener,
            projector,
            state,
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
        let (stop, stopped) = watch::channel(false);
        let until_stopped = |mut stopped: watch::Receiver<bool>| async move {
            let _ = stopped.wait_for(|stop| *stop).await;
        };
        let projector = tokio::spawn(self.projector.run(until_stopped(stopped.clone())));
        info!(
            port = self
                .listener
                .local_addr()
                .map(|a| a.port())
                .unwrap_or_default(),
            "iot-platform listening"
        );
        let server = axum::serve(self.listener, router(self.state))
            .with_graceful_shutdown(until_stopped(stopped));
        let server = tokio::spawn(std::future::IntoFuture::into_future(server));
        shutdown.await;
        let _ = stop.send(true);
        server.await.ok().transpose().map_err(StartupError::Serve)?;
        match projector.await {
            Ok(result) => result?,
            Err(e) => tracing::error!(error = %e, "projector task failed"),
        }
        Ok(())
    }
}
