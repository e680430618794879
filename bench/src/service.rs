//! A commerce service run inside the benchmark's process (the orders and queries benchmarks
//! drive the real services, on databases of their own).

use commerce::configuration::Settings;
use commerce::startup::Application;
use commerce::Service;
use sqlx::PgPool;
use tokio::sync::oneshot;
use tokio::task::JoinHandle;

/// A commerce service serving on a free port until [`Running::stop`].
pub struct Running {
    /// `http://127.0.0.1:<port>`.
    pub base_url: String,
    /// The service's own database.
    pub pool: PgPool,
    stop: oneshot::Sender<()>,
    task: JoinHandle<anyhow::Result<()>>,
}

impl Running {
    pub async fn start(settings: &Settings, service: Service) -> anyhow::Result<Self> {
        let app = Application::build(settings.clone(), service).await?;
        let base_url = format!("http://127.0.0.1:{}", app.port());
        let pool = app.pool().clone();
        let (stop, stopped) = oneshot::channel::<()>();
        let task = tokio::spawn(app.run_until(async move {
            let _ = stopped.await;
        }));
        Ok(Self {
            base_url,
            pool,
            stop,
            task,
        })
    }

    pub async fn stop(self) -> anyhow::Result<()> {
        let _ = self.stop.send(());
        self.task.await?
    }
}
