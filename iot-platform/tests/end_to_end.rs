//! The CQRS loop on the real services: the CRM (seeded from a CSV, changed through its API)
//! publishes through its outbox; the IoT platform folds the events and answers without ever
//! calling the CRM.

use std::future::Future;
use std::time::{Duration, Instant};

use iot_platform::configuration::Settings as IotSettings;
use reqwest::StatusCode;
use serde_json::{json, Value};
use sqlx::Connection;
use tokio::sync::oneshot;
use tokio::task::JoinHandle;
use uuid::Uuid;

struct Running {
    base_url: String,
    stop: oneshot::Sender<()>,
    task: JoinHandle<()>,
}

impl Running {
    async fn stop(self) {
        let _ = self.stop.send(());
        self.task.await.unwrap();
    }
}

fn run<F>(port: u16, serve: impl FnOnce(oneshot::Receiver<()>) -> F) -> Running
where
    F: Future<Output = ()> + Send + 'static,
{
    let (stop, stopped) = oneshot::channel();
    Running {
        base_url: format!("http://127.0.0.1:{port}"),
        stop,
        task: tokio::spawn(serve(stopped)),
    }
}

async fn spawn_crm(settings: crm::configuration::Settings) -> Running {
    let app = crm::startup::Application::build(settings).await.unwrap();
    run(app.port(), |stopped| async move {
        app.run_until(async move {
            let _ = stopped.await;
        })
        .await
        .unwrap();
    })
}

async fn spawn_iot(settings: IotSettings) -> Running {
    let app = iot_platform::startup::Application::build(settings)
        .await
        .unwrap();
    run(app.port(), |stopped| async move {
        app.run_until_stopped(async move {
            let _ = stopped.await;
        })
        .await
        .unwrap();
    })
}

/// A seed of `rows` customers on connections no other run uses, plus two bad rows.
fn seed_file(run: &str, rows: usize) -> (std::path::PathBuf, Vec<(String, u64)>) {
    let mut csv = String::from("id,firstName,lastName,city,connectionId,connectionMandate\n");
    let mut expected = Vec::new();
    for id in 1..=rows {
        let connection = format!("e2e-{run}-{id}");
        let mandate = (id % 3) as u64;
        csv.push_str(&format!("{id},Femke,Bakker,Delft,{connection},{mandate}\n"));
        expected.push((connection, mandate));
    }
    csv.push_str(&format!("{},Bad,Mandate,Delft,e2e-{run}-bad,7\n", rows + 1));
    csv.push_str("not-a-number,Bad,Id,Delft,e2e-bad-id,1\n");
    let path = std::env::temp_dir().join(format!("e2e-seed-{run}.csv"));
    std::fs::write(&path, csv).unwrap();
    (path, expected)
}

async fn mandate_of(iot: &Running, connection: &str) -> Option<Value> {
    let response = reqwest::get(format!("{}/mandates/{connection}", iot.base_url))
        .await
        .unwrap();
    (response.status() == StatusCode::OK).then_some(response.json().await.unwrap())
}

/// Waits until every connection shows its expected mandate.
async fn await_mandates(iot: &Running, expected: &[(String, u64)]) {
    let deadline = Instant::now() + Duration::from_secs(60);
    let mut pending: Vec<&(String, u64)> = expected.iter().collect();
    while !pending.is_empty() {
        let mut still = Vec::new();
        for item in pending {
            let shown = mandate_of(iot, &item.0).await;
            if shown.as_ref().map(|body| body["mandate"].clone()) != Some(json!(item.1)) {
                still.push(item);
            }
        }
        pending = still;
        assert!(
            pending.is_empty() || Instant::now() < deadline,
            "{} connections never showed their mandate, e.g. {:?}",
            pending.len(),
            pending.first()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

async fn put(crm: &Running, id: u64, connection: &str, city: &str, mandate: Value) {
    let response = reqwest::Client::new()
        .put(format!("{}/customers/{id}", crm.base_url))
        .json(&json!({
            "firstName": "Femke", "lastName": "Bakker", "city": city,
            "connectionId": connection, "connectionMandate": mandate,
        }))
        .send()
        .await
        .unwrap();
    assert!(
        response.status().is_success(),
        "PUT {id}: {}",
        response.status()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn seeded_and_changed_mandates_reach_the_iot_platform_across_its_restart() {
    let run_id = Uuid::new_v4().simple().to_string();
    let (seed, mut expected) = seed_file(&run_id, 40);

    let mut crm_settings = crm::configuration::load().unwrap();
    crm_settings.crm_database = format!("crm_e2e_{run_id}");
    crm_settings.crm_listen_addr = "127.0.0.1:0".to_owned();
    crm_settings.crm_seed_csv = seed.clone();
    let iot_settings = IotSettings {
        iot_listen_addr: "127.0.0.1:0".to_owned(),
        iot_group: format!("test-e2e-{run_id}"),
        iot_namespace: format!("test:e2e:{run_id}"),
        ..IotSettings::load().unwrap()
    };

    let crm = spawn_crm(crm_settings.clone()).await;
    let iot = spawn_iot(iot_settings.clone()).await;

    // Every seeded mandate is served; the bad rows never became customers.
    await_mandates(&iot, &expected).await;
    assert!(mandate_of(&iot, &format!("e2e-{run_id}-bad"))
        .await
        .is_none());

    // A mandate changed through the CRM is visible; a city change keeps it.
    put(&crm, 1, &expected[0].0, "Delft", json!("2")).await;
    expected[0].1 = 2;
    put(&crm, 2, &expected[1].0, "Zwolle", json!(expected[1].1)).await;
    await_mandates(&iot, &expected[..2]).await;

    // Changes made while the IoT platform is down are served after it restarts.
    iot.stop().await;
    put(&crm, 3, &expected[2].0, "Delft", json!(1)).await;
    expected[2].1 = 1;
    // Customer 4 moves to a new connection: the old one loses the mandate.
    let moved_to = format!("e2e-{run_id}-moved");
    put(&crm, 4, &moved_to, "Delft", json!(2)).await;
    expected[3].1 = 0;
    expected.push((moved_to, 2));
    let iot = spawn_iot(iot_settings).await;
    await_mandates(&iot, &expected).await;

    iot.stop().await;
    crm.stop().await;
    std::fs::remove_file(seed).unwrap();
    let mut admin = sqlx::PgConnection::connect(&crm_settings.postgres_url)
        .await
        .unwrap();
    sqlx::query(&format!(
        "DROP DATABASE IF EXISTS \"{}\" WITH (FORCE)",
        crm_settings.crm_database
    ))
    .execute(&mut admin)
    .await
    .unwrap();
}
