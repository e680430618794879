//! `scripts/infra` against isolated instances (own home and port), so the shared services
//! are never touched:
//! - it reports real liveness: a killed service shows as down (Redis);
//! - `up registry` alone starts the postgres the registry stores into first, or fails with one
//!   error line when that port holds something else;
//! - the registry keeps its schemas, ids and rules in PostgreSQL: after a `kill -9` and
//!   `up` every subject has the id it had, and new schemas get new ids.

use std::net::TcpListener;
use std::path::PathBuf;
use std::process::{Command, Output};
use std::time::Duration;

/// Services of one isolated `INFRA_HOME`, with the port variables in `env`; `down` (all of
/// them: only what this home started is stopped) and the home removed on drop.
struct IsolatedInfra {
    home: PathBuf,
    env: Vec<(&'static str, String)>,
}

impl IsolatedInfra {
    fn new(env: Vec<(&'static str, String)>) -> Self {
        Self {
            home: std::env::temp_dir().join(testkit::unique("infra-test")),
            env,
        }
    }

    fn run(&self, args: &[&str]) -> Output {
        Command::new(concat!(env!("CARGO_MANIFEST_DIR"), "/../scripts/infra"))
            .args(args)
            .env("INFRA_HOME", &self.home)
            .envs(self.env.iter().map(|(k, v)| (k, v)))
            .output()
            .expect("scripts/infra runs")
    }
}

impl Drop for IsolatedInfra {
    fn drop(&mut self) {
        self.run(&["down"]);
        let _ = std::fs::remove_dir_all(&self.home);
    }
}

fn free_port() -> String {
    testkit::free_port().to_string()
}

#[test]
fn status_reports_a_killed_service_as_down_and_up_brings_it_back() {
    let infra = IsolatedInfra::new(vec![("REDIS_PORT", free_port())]);
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

/// The isolated registry's own database on the shared PostgreSQL, dropped at the end.
/// Declared before the registry, so the registry stops first.
struct RegistryDatabase(String);

impl Drop for RegistryDatabase {
    fn drop(&mut self) {
        let _ = Command::new("psql")
            .args(["-X", "-q", &testkit::env::postgres_url(), "-c"])
            .arg(format!(
                "drop database if exists \"{}\" with (force)",
                self.0
            ))
            .output();
    }
}

const SCHEMA_A: &str =
    r#"{"type":"record","name":"RestartA","fields":[{"name":"a","type":"string"}]}"#;
const SCHEMA_B: &str =
    r#"{"type":"record","name":"RestartB","fields":[{"name":"b","type":"long"}]}"#;
const CONTENT_TYPE: &str = "application/vnd.schemaregistry.v1+json";

async fn register(http: &reqwest::Client, base: &str, subject: &str, schema: &str) -> u64 {
    let response = http
        .post(format!("{base}/subjects/{subject}/versions"))
        .header("Content-Type", CONTENT_TYPE)
        .json(&serde_json::json!({ "schema": schema }))
        .send()
        .await
        .expect("registry answers");
    let status = response.status();
    let body: serde_json::Value = response.json().await.expect("JSON answer");
    assert!(
        status.is_success(),
        "registering under {subject}: {status} {body}"
    );
    body["id"].as_u64().expect("an id")
}

async fn get_json(http: &reqwest::Client, url: &str) -> (reqwest::StatusCode, serde_json::Value) {
    let response = http.get(url).send().await.expect("registry answers");
    let status = response.status();
    (status, response.json().await.expect("JSON answer"))
}

fn parsed(schema: &serde_json::Value) -> serde_json::Value {
    serde_json::from_str(schema.as_str().expect("schema is a string")).expect("schema is JSON")
}

#[tokio::test]
async fn a_killed_registry_comes_back_with_every_schema_under_its_id() {
    let database = RegistryDatabase(testkit::unique("registry_restart"));
    let registry = testkit::Isolated::new("registry").with_env("REGISTRY_DB", &database.0);
    registry.up_async().await;
    let base = format!("http://127.0.0.1:{}/apis/ccompat/v7", registry.port());
    let http = reqwest::Client::new();

    // A rule changed on purpose must survive too: `up` only sets rules that are missing.
    let (_, config) = get_json(&http, &format!("{base}/config")).await;
    assert_eq!(config["compatibilityLevel"], "BACKWARD", "{config}");
    let changed = http
        .put(format!("{base}/config"))
        .header("Content-Type", CONTENT_TYPE)
        .json(&serde_json::json!({ "compatibility": "FULL" }))
        .send()
        .await
        .expect("registry answers");
    assert!(changed.status().is_success(), "{}", changed.status());

    let subject_a = testkit::unique("restart_a");
    let id_a = register(&http, &base, &subject_a, SCHEMA_A).await;

    registry.kill();
    testkit::eventually(
        "the killed registry stops answering",
        Duration::from_secs(10),
        || {
            let request = http.get(format!("{base}/subjects")).send();
            async move { request.await.is_err() }
        },
    )
    .await;
    registry.up_async().await;

    let (status, latest) = get_json(
        &http,
        &format!("{base}/subjects/{subject_a}/versions/latest"),
    )
    .await;
    assert!(
        status.is_success(),
        "{subject_a} after the restart: {status} {latest}"
    );
    assert_eq!(latest["id"].as_u64(), Some(id_a), "{latest}");
    assert_eq!(latest["version"].as_u64(), Some(1), "{latest}");
    let (status, by_id) = get_json(&http, &format!("{base}/schemas/ids/{id_a}")).await;
    assert!(
        status.is_success(),
        "id {id_a} after the restart: {status} {by_id}"
    );
    assert_eq!(
        parsed(&by_id["schema"]),
        serde_json::from_str::<serde_json::Value>(SCHEMA_A).unwrap()
    );
    // Registering the same schema again is a lookup, not a new id.
    assert_eq!(register(&http, &base, &subject_a, SCHEMA_A).await, id_a);

    let subject_b = testkit::unique("restart_b");
    let id_b = register(&http, &base, &subject_b, SCHEMA_B).await;
    assert_ne!(id_b, id_a, "an id was handed out twice");
    let (_, by_id) = get_json(&http, &format!("{base}/schemas/ids/{id_a}")).await;
    assert_eq!(
        parsed(&by_id["schema"]),
        serde_json::from_str::<serde_json::Value>(SCHEMA_A).unwrap()
    );

    let (_, config) = get_json(&http, &format!("{base}/config")).await;
    assert_eq!(
        config["compatibilityLevel"], "FULL",
        "up overwrote a rule: {config}"
    );
    let (_, rules) = get_json(
        &http,
        &format!(
            "http://127.0.0.1:{}/apis/registry/v3/admin/rules",
            registry.port()
        ),
    )
    .await;
    assert!(
        rules
            .as_array()
            .is_some_and(|r| r.contains(&"VALIDITY".into())),
        "{rules}"
    );

    // Its own database: the shared registry never saw these subjects.
    let (status, _) = get_json(
        &http,
        &format!(
            "{}/subjects/{subject_a}/versions",
            testkit::env::registry_url()
        ),
    )
    .await;
    assert_eq!(status, reqwest::StatusCode::NOT_FOUND);
}

#[test]
fn up_registry_alone_starts_its_postgres_first() {
    let infra = IsolatedInfra::new(vec![
        ("POSTGRES_PORT", free_port()),
        ("REGISTRY_PORT", free_port()),
    ]);
    let up = infra.run(&["up", "registry"]);
    let stdout = String::from_utf8_lossy(&up.stdout).into_owned();
    assert!(
        up.status.success(),
        "{stdout}{}",
        String::from_utf8_lossy(&up.stderr)
    );
    let lines: Vec<&str> = stdout.lines().collect();
    assert!(
        lines.len() == 2 && lines[0].starts_with("postgres ") && lines[1].starts_with("registry "),
        "postgres is started before the registry: {stdout}"
    );
    let status = infra.run(&["status", "postgres", "registry"]);
    assert!(
        status.status.success(),
        "{}",
        String::from_utf8_lossy(&status.stdout)
    );
}

#[test]
fn up_registry_without_a_usable_postgres_fails_with_one_line() {
    // Something that is not PostgreSQL holds the port.
    let squatter = TcpListener::bind("127.0.0.1:0").unwrap();
    let infra = IsolatedInfra::new(vec![
        (
            "POSTGRES_PORT",
            squatter.local_addr().unwrap().port().to_string(),
        ),
        ("REGISTRY_PORT", free_port()),
    ]);
    let up = infra.run(&["up", "registry"]);
    let stderr = String::from_utf8_lossy(&up.stderr).into_owned();
    assert!(!up.status.success(), "{stderr}");
    let errors: Vec<&str> = stderr
        .lines()
        .filter(|l| l.starts_with("infra: ERROR:"))
        .collect();
    assert!(
        errors.len() == 1 && errors[0].contains("postgres") && errors[0].contains("in use"),
        "{stderr}"
    );
    assert!(!infra.run(&["status", "registry"]).status.success());
}
