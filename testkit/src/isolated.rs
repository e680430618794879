//! A second instance of one infrastructure service, started by `scripts/infra` under a home
//! and ports of its own, so a test can stop or kill it without disturbing the shared
//! services other tests use at the same time.

use std::path::{Path, PathBuf};
use std::process::Command;

use crate::free_port;

/// The environment variable `scripts/infra` reads each service's port from.
fn port_variable(service: &str) -> String {
    format!("{}_PORT", service.to_ascii_uppercase())
}

pub struct Isolated {
    service: &'static str,
    home: PathBuf,
    port: u16,
    /// Further variables for `scripts/infra`: the Kafka controller's port, and whatever a
    /// test adds with [`Isolated::with_env`].
    env: Vec<(String, String)>,
}

impl Isolated {
    /// Prepares an instance of `service` (`kafka`, `registry`, `postgres`, `redis`, `mysql`,
    /// `zipkin`) on a free port under a fresh home, without starting it.
    pub fn new(service: &'static str) -> Self {
        let home = std::env::temp_dir().join(crate::unique(&format!("infra-{service}")));
        let mut env = Vec::new();
        if service == "kafka" {
            env.push(("KAFKA_CONTROLLER_PORT".to_owned(), free_port().to_string()));
        }
        Self {
            service,
            home,
            port: free_port(),
            env,
        }
    }

    /// [`Isolated::new`], then [`Isolated::up`].
    pub fn start(service: &'static str) -> Self {
        let isolated = Self::new(service);
        isolated.up();
        isolated
    }

    /// Adds a variable to every `scripts/infra` call of this instance.
    pub fn with_env(mut self, name: &str, value: &str) -> Self {
        self.env.push((name.to_owned(), value.to_owned()));
        self
    }

    pub fn port(&self) -> u16 {
        self.port
    }

    pub fn home(&self) -> &Path {
        &self.home
    }

    /// `127.0.0.1:<port>`.
    pub fn address(&self) -> String {
        format!("127.0.0.1:{}", self.port)
    }

    /// Starts the service (or checks it answers) and waits until it does.
    pub fn up(&self) {
        self.infra("up");
    }

    /// Stops the service cleanly.
    pub fn down(&self) {
        self.infra("down");
    }

    /// `kill -9` of the service's process, as a crash would.
    pub fn kill(&self) {
        let pidfile = self.home.join("run").join(format!("{}.pid", self.service));
        let pid = std::fs::read_to_string(&pidfile)
            .unwrap_or_else(|e| panic!("{}: {e}", pidfile.display()));
        let status = Command::new("kill")
            .args(["-9", pid.trim()])
            .status()
            .expect("kill runs");
        assert!(status.success(), "kill -9 {} failed", pid.trim());
    }

    /// Async callers: [`Isolated::up`] off the runtime's worker threads.
    pub async fn up_async(&self) {
        let command = self.command("up");
        run_blocking(command, self.service, "up").await;
    }

    /// Async callers: [`Isolated::down`] off the runtime's worker threads.
    pub async fn down_async(&self) {
        let command = self.command("down");
        run_blocking(command, self.service, "down").await;
    }

    fn infra(&self, action: &str) {
        let output = self.command(action).output().expect("scripts/infra runs");
        assert!(
            output.status.success(),
            "scripts/infra {action} {} failed: {}{}",
            self.service,
            String::from_utf8_lossy(&output.stdout),
            String::from_utf8_lossy(&output.stderr)
        );
    }

    fn command(&self, action: &str) -> Command {
        let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("../scripts/infra");
        let mut command = Command::new(script);
        command
            .args([action, self.service])
            .env("INFRA_HOME", &self.home)
            .env(port_variable(self.service), self.port.to_string())
            .envs(self.env.iter().map(|(k, v)| (k, v)));
        command
    }
}

async fn run_blocking(mut command: Command, service: &str, action: &str) {
    let output = tokio::task::spawn_blocking(move || command.output())
        .await
        .expect("scripts/infra task")
        .expect("scripts/infra runs");
    assert!(
        output.status.success(),
        "scripts/infra {action} {service} failed: {}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
}

impl Drop for Isolated {
    fn drop(&mut self) {
        let _ = self.command("down").output();
        let _ = std::fs::remove_dir_all(&self.home);
        if let Some((_, database)) = self.env.iter().find(|(k, _)| k == "REGISTRY_DB") {
            let _ = Command::new("psql")
                .args(["-X", "-q", &crate::env::postgres_url(), "-c"])
                .arg(format!(
                    "drop database if exists \"{database}\" with (force)"
                ))
                .output();
        }
    }
}
