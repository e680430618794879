//! `scripts/infra` reports real liveness: a killed service shows as down. Run against an
//! isolated Redis (its own home and port), so the shared services are never touched.

use std::net::TcpListener;
use std::path::PathBuf;
use std::process::{Command, Output};

struct IsolatedInfra {
    home: PathBuf,
    port: u16,
}

impl IsolatedInfra {
    fn run(&self, args: &[&str]) -> Output {
        Command::new(concat!(env!("CARGO_MANIFEST_DIR"), "/../scripts/infra"))
            .args(args)
            .env("INFRA_HOME", &self.home)
            .env("REDIS_PORT", self.port.to_string())
            .output()
            .expect("scripts/infra runs")
    }
}

impl Drop for IsolatedInfra {
    fn drop(&mut self) {
        self.run(&["down", "redis"]);
        let _ = std::fs::remove_dir_all(&self.home);
    }
}

#[test]
fn status_reports_a_killed_service_as_down_and_up_brings_it_back() {
    let infra = IsolatedInfra {
        home: std::env::temp_dir().join(format!("infra-status-{}", uuid::Uuid::new_v4().simple())),
        port: TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port(),
    };
    let up = infra.run(&["up", "redis"]);
    assert!(
        up.status.success(),
        "{}",
        String::from_utf8_lossy(&up.stderr)
    );

    let status = infra.run(&["status", "redis"]);
    let report = String::from_utf8_lossy(&status.stdout).into_owned();
    assert!(
        status.status.success() && report.starts_with("redis") && report.contains(" up "),
        "{report}"
    );

    let pid = std::fs::read_to_string(infra.home.join("run/redis.pid")).unwrap();
    let killed = Command::new("kill")
        .args(["-9", pid.trim()])
        .status()
        .unwrap();
    assert!(killed.success());
    let status = infra.run(&["status", "redis"]);
    let report = String::from_utf8_lossy(&status.stdout).into_owned();
    assert!(
        !status.status.success() && report.contains(" down "),
        "{report}"
    );

    // A second `up` restarts only what is down.
    let up = infra.run(&["up", "redis"]);
    assert!(
        up.status.success(),
        "{}",
        String::from_utf8_lossy(&up.stderr)
    );
    assert!(infra.run(&["status", "redis"]).status.success());
}
