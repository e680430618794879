//! The IoT platform against the real broker, registry and Redis: events published to
//! `connection-mandates` become answers of its HTTP API, also across a restart.

use std::time::{Duration, Instant};

use iot_platform::configuration::Settings;
use iot_platform::startup::Application;
use rdkafka::message::{Header, OwnedHeaders};
use rdkafka::producer::{FutureProducer, FutureRecord};
use reqwest::StatusCode;
use serde_json::Value;
use tokio::sync::oneshot;
use tokio::task::JoinHandle;
use topics::codec::Encoder;
use topics::events::{ConnectionMandateChanged, Event, MandateLevel};
use topics::registry::Registry;
use uuid::Uuid;

struct RunningApp {
    base_url: String,
    stop: oneshot::Sender<()>,
    task: JoinHandle<()>,
}

impl RunningApp {
    async fn stop(self) {
        let _ = self.stop.send(());
        self.task.await.unwrap();
    }
}

/// Settings for an app of the test's own: its own group and key space, a random port.
fn test_settings() -> Settings {
    let run = Uuid::new_v4();
    Settings {
        iot_listen_addr: "127.0.0.1:0".to_owned(),
        iot_group: format!("test-iot-{run}"),
        iot_namespace: format!("test:iot:{run}"),
        ..Settings::load().unwrap()
    }
}

async fn spawn(settings: Settings) -> RunningApp {
    let _ = tracing_subscriber::fmt()
        .with_env_filter("info,rdkafka=info")
        .with_test_writer()
        .try_init();
    let app = Application::build(settings).await.unwrap();
    let base_url = format!("http://127.0.0.1:{}", app.port());
    let (stop, stopped) = oneshot::channel();
    let task = tokio::spawn(async move {
        app.run_until_stopped(async move {
            let _ = stopped.await;
        })
        .await
        .unwrap();
    });
    RunningApp {
        base_url,
        stop,
        task,
    }
}

async fn publish(settings: &Settings, events: &[ConnectionMandateChanged]) {
    let encoder = Encoder::<ConnectionMandateChanged>::connect(&Registry::new(
        &settings.kafka.schema_registry_url,
    ))
    .await
    .unwrap();
    let producer: FutureProducer = topics::kafka::producer_config(&settings.kafka)
        .create()
        .unwrap();
    for event in events {
        let payload = encoder.encode(event).unwrap();
        let event_id = event.event_id.to_string();
        let headers = OwnedHeaders::new().insert(Header {
            key: topics::kafka::EVENT_ID_HEADER,
            value: Some(&event_id),
        });
        producer
            .send(
                FutureRecord::to(ConnectionMandateChanged::TOPIC.name)
                    .key(event.key())
                    .payload(&payload)
                    .headers(headers),
                Duration::from_secs(10),
            )
            .await
            .map_err(|(e, _)| e)
            .unwrap();
    }
}

fn event(connection_id: &str, mandate: MandateLevel, at: i64) -> ConnectionMandateChanged {
    ConnectionMandateChanged {
        event_id: Uuid::new_v4(),
        connection_id: connection_id.to_owned(),
        customer_id: 1,
        mandate,
        occurred_at: at,
    }
}

/// Polls `url` until it answers 200 with a `mandate` of `expected`.
async fn wait_for_mandate(url: &str, expected: u64) -> Value {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let response = reqwest::get(url).await.unwrap();
        if response.status() == StatusCode::OK {
            let body: Value = response.json().await.unwrap();
            if body["mandate"] == expected {
                return body;
            }
        }
        assert!(
            Instant::now() < deadline,
            "{url} never showed mandate {expected}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test]
async fn published_mandates_are_served_and_survive_a_restart() {
    let settings = test_settings();
    let connection = format!("test-{}", Uuid::new_v4());
    let app = spawn(settings.clone()).await;

    publish(
        &settings,
        &[
            event(&connection, MandateLevel::BillingOnly, 1_000),
            event(&connection, MandateLevel::RealTime, 2_000),
        ],
    )
    .await;
    let body = wait_for_mandate(&format!("{}/mandates/{connection}", app.base_url), 2).await;
    assert_eq!(body["connectionId"], connection.as_str());
    assert_eq!(body["changedAt"], "1970-01-01T00:00:02.000Z");
    let classic = reqwest::get(format!("{}/?connectionId={connection}", app.base_url))
        .await
        .unwrap();
    assert_eq!(classic.json::<Value>().await.unwrap(), body);

    // Changes made while the platform is down are served once it is back.
    app.stop().await;
    publish(&settings, &[event(&connection, MandateLevel::None, 3_000)]).await;
    let app = spawn(settings).await;
    wait_for_mandate(&format!("{}/mandates/{connection}", app.base_url), 0).await;
    app.stop().await;
}

#[tokio::test]
async fn unknown_connections_and_missing_parameters_are_refused() {
    let app = spawn(test_settings()).await;
    let unknown = reqwest::get(format!("{}/mandates/no-such-connection", app.base_url))
        .await
        .unwrap();
    assert_eq!(unknown.status(), StatusCode::NOT_FOUND);
    assert!(unknown.json::<Value>().await.unwrap()["error"].is_string());
    for query in ["/", "/?connectionId=", "/?other=1"] {
        let response = reqwest::get(format!("{}{query}", app.base_url))
            .await
            .unwrap();
        assert_eq!(response.status(), StatusCode::BAD_REQUEST, "{query}");
    }
    app.stop().await;
}
