//! The users service on the real PostgreSQL, Kafka, registry and MariaDB: the API with bad
//! input, which creations publish, and soft delete as reads and queries see it.

use std::time::Duration;

use commerce::Service;
use rdkafka::consumer::{Consumer, StreamConsumer};
use rdkafka::message::{BorrowedMessage, Message};
use reqwest::{Method, StatusCode};
use serde_json::{json, Value};
use tokio::time::Instant;
use topics::apply::apply;
use topics::cluster::Cluster;
use topics::codec::Decoder;
use topics::commerce::{AgentStatus, UserEvent, UserEventKind, UserType};
use topics::events::Event;
use topics::kafka::consumer_config;
use topics::registry::Registry;
use topics::settings::KafkaSettings;
use topics::spec::CATALOGUE;

use crate::helpers::{assert_error, end_offsets, Client, Running};
use crate::people::{drop_people, people_settings, user_body, Connector};

const WAIT: Duration = Duration::from_secs(120);
/// How long after the awaited events any other event of the same users has to arrive.
const QUIET: Duration = Duration::from_secs(3);

pub async fn apply_catalogue(kafka: &KafkaSettings) {
    let cluster = Cluster::connect(kafka).expect("cluster");
    apply(
        &cluster,
        &Registry::new(&kafka.schema_registry_url),
        CATALOGUE,
    )
    .await
    .expect("topics apply");
}

/// Everything on `commerce.user-events` from now on, per key.
pub struct UserEvents {
    consumer: StreamConsumer,
    decoder: Decoder<UserEvent>,
}

impl UserEvents {
    pub fn from_end(kafka: &KafkaSettings) -> Self {
        let consumer: StreamConsumer = consumer_config(kafka, &testkit::unique("users_probe"))
            .create()
            .expect("consumer");
        consumer
            .assign(&end_offsets(&consumer, UserEvent::TOPIC))
            .expect("assigned");
        Self {
            consumer,
            decoder: Decoder::new(Registry::new(&kafka.schema_registry_url)),
        }
    }

    /// The events of `keys` until `until` holds (panics after `WAIT`), then whatever else of
    /// them arrives before [`QUIET`] passes without one: an event that should not exist has
    /// that long to show.
    pub async fn collect(
        &self,
        keys: &[String],
        until: impl Fn(&[UserEvent]) -> bool,
    ) -> Vec<UserEvent> {
        let deadline = Instant::now() + WAIT;
        let mut found = Vec::new();
        while !until(&found) {
            let message = tokio::time::timeout_at(deadline, self.consumer.recv())
                .await
                .unwrap_or_else(|_| panic!("user events so far: {found:?}"));
            self.keep(message.expect("consumer"), keys, &mut found)
                .await;
        }
        while let Ok(message) = tokio::time::timeout(QUIET, self.consumer.recv()).await {
            self.keep(message.expect("consumer"), keys, &mut found)
                .await;
        }
        found
    }

    /// Decodes `message` into `found` when its key is one of `keys`.
    async fn keep(
        &self,
        message: BorrowedMessage<'_>,
        keys: &[String],
        found: &mut Vec<UserEvent>,
    ) {
        let key = String::from_utf8_lossy(message.key().unwrap_or_default()).into_owned();
        if keys.contains(&key) {
            found.push(
                self.decoder
                    .decode(message.payload().unwrap())
                    .await
                    .expect("decodes"),
            );
        }
    }
}

async fn delete(client: &Client, url: &str) -> (StatusCode, Value) {
    client.send_raw(Method::DELETE, url, "").await
}

#[tokio::test(flavor = "multi_thread")]
async fn bad_user_input_is_refused_with_the_reason() {
    let settings = people_settings();
    let users = Running::start(&settings, Service::Users).await;
    let client = Client::default();
    let url = format!("{}/users", users.address);
    for (change, needle) in [
        (json!({"email": "not-an-email"}), "email must look like"),
        (
            json!({"userType": "COURIER"}),
            "userType must be CUSTOMER, ADMIN or DELIVERY_AGENT",
        ),
        (
            json!({"geolocation": {"latitude": 91.0, "longitude": 0.0}}),
            "geolocation.latitude must be from -90 to 90",
        ),
        (
            json!({"geolocation": {"latitude": 0.0, "longitude": 180.5}}),
            "geolocation.longitude must be from -180 to 180",
        ),
        (
            json!({"phoneNumber": "call me"}),
            "phoneNumber must be digits",
        ),
        (json!({"firstName": "  "}), "firstName must not be empty"),
        (
            json!({"address": {"street": "x", "city": "y"}}),
            "missing field",
        ),
        (
            json!({"deliveryAgentStatus": "FREE"}),
            "deliveryAgentStatus is only for userType DELIVERY_AGENT",
        ),
        (json!({"id": "42"}), "user id must be a UUID"),
        (json!({"shoeSize": 42}), "unknown field `shoeSize`"),
    ] {
        let mut body = user_body(1, "CUSTOMER");
        for (key, value) in change.as_object().unwrap() {
            body[key] = value.clone();
        }
        assert_error(
            &client.post(&url, &body).await,
            StatusCode::BAD_REQUEST,
            needle,
        );
    }
    assert_error(
        &client.send_raw(Method::POST, &url, "{\"email\":").await,
        StatusCode::BAD_REQUEST,
        "malformed JSON",
    );
    assert_error(
        &client.get(&format!("{url}/nope")).await,
        StatusCode::BAD_REQUEST,
        "user id must be a UUID",
    );
    let unknown = uuid::Uuid::new_v4();
    assert_error(
        &client.get(&format!("{url}/{unknown}")).await,
        StatusCode::NOT_FOUND,
        "no user with id",
    );
    assert_error(
        &delete(&client, &format!("{url}/{unknown}")).await,
        StatusCode::NOT_FOUND,
        "no user with id",
    );

    // Unique email and username; a client-chosen id, once.
    let id = uuid::Uuid::new_v4();
    let mut body = user_body(2, "CUSTOMER");
    body["id"] = json!(id);
    let (status, created) = client.post(&url, &body).await;
    assert_eq!(status, StatusCode::CREATED, "{created}");
    assert_eq!(created["id"], json!(id));
    assert_error(
        &client.post(&url, &body).await,
        StatusCode::CONFLICT,
        "another user has this id",
    );
    body["id"] = json!(uuid::Uuid::new_v4());
    assert_error(
        &client.post(&url, &body).await,
        StatusCode::CONFLICT,
        "another user has this email",
    );
    body["email"] = json!("other@example.com");
    assert_error(
        &client.post(&url, &body).await,
        StatusCode::CONFLICT,
        "another user has this username",
    );

    // A type never changes; a customer has no agent status.
    let mut change = user_body(2, "ADMIN");
    assert_error(
        &client.put(&format!("{url}/{id}"), &change).await,
        StatusCode::CONFLICT,
        "cannot become a ADMIN",
    );
    change["userType"] = json!("CUSTOMER");
    change["lastName"] = json!("Jansen");
    let (status, replaced) = client.put(&format!("{url}/{id}"), &change).await;
    assert_eq!(status, StatusCode::OK, "{replaced}");
    assert_eq!(replaced["lastName"], "Jansen");
    assert_eq!(replaced["deliveryAgentStatus"], Value::Null);
    assert!(replaced["updatedAt"].as_str() >= created["updatedAt"].as_str());

    users.stop().await;
    drop_people(&settings).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn only_delivery_agents_publish_their_creation_and_a_deleted_user_is_inactive() {
    let _shared = crate::helpers::shared_delivery_topics().await;
    let settings = people_settings();
    apply_catalogue(&settings.kafka).await;
    let events = UserEvents::from_end(&settings.kafka);
    let users = Running::start(&settings, Service::Users).await;
    let connector = Connector::start(&settings).await;
    let client = Client::default();
    let url = format!("{}/users", users.address);

    let mut ids = Vec::new();
    for (n, user_type) in ["CUSTOMER", "ADMIN", "DELIVERY_AGENT"]
        .into_iter()
        .enumerate()
    {
        let (status, created) = client.post(&url, &user_body(n, user_type)).await;
        assert_eq!(status, StatusCode::CREATED, "{created}");
        ids.push(created["id"].as_str().unwrap().to_owned());
        assert_eq!(created["isActive"], true);
    }
    let (_, agent) = client.get(&format!("{url}/{}", ids[2])).await;
    assert_eq!(agent["deliveryAgentStatus"], "FREE");
    // An agent's status follows its packages; a body may only repeat it.
    let mut change = user_body(2, "DELIVERY_AGENT");
    change["deliveryAgentStatus"] = json!("OCCUPIED");
    assert_error(
        &client.put(&format!("{url}/{}", ids[2]), &change).await,
        StatusCode::CONFLICT,
        "follows the agent's packages",
    );

    // Deleting the customer: the row stays, inactive; a second delete changes nothing.
    let (status, deleted) = delete(&client, &format!("{url}/{}", ids[0])).await;
    assert_eq!(status, StatusCode::OK, "{deleted}");
    assert_eq!(deleted["isActive"], false);
    let (status, again) = delete(&client, &format!("{url}/{}", ids[0])).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(again["updatedAt"], deleted["updatedAt"]);
    let (status, read) = client.get(&format!("{url}/{}", ids[0])).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(read["isActive"], false);
    assert_error(
        &client
            .put(&format!("{url}/{}", ids[0]), &user_body(0, "CUSTOMER"))
            .await,
        StatusCode::CONFLICT,
        "is deleted",
    );

    // Exactly: the agent's creation and the customer's deletion; the customer's and the
    // admin's creation published nothing. The topic has 4 partitions keyed by user id, so the
    // two may arrive in either order (Kafka orders a partition, not the topic): wait for both,
    // then give any other event of these users `QUIET` to show.
    let seen = events
        .collect(&ids, |found| {
            [
                UserEventKind::DeliveryAgentCreated,
                UserEventKind::UserDeleted,
            ]
            .iter()
            .all(|kind| found.iter().any(|e| e.kind == *kind))
        })
        .await;
    assert_eq!(seen.len(), 2, "{seen:?}");
    let created = seen
        .iter()
        .find(|e| e.kind == UserEventKind::DeliveryAgentCreated)
        .unwrap();
    assert_eq!(created.user_id.to_string(), ids[2]);
    assert_eq!(created.user_type, UserType::DeliveryAgent);
    assert_eq!(created.agent_status, Some(AgentStatus::Free));
    let deleted = seen
        .iter()
        .find(|e| e.kind == UserEventKind::UserDeleted)
        .unwrap();
    assert_eq!(deleted.user_id.to_string(), ids[0]);
    assert_eq!(deleted.user_type, UserType::Customer);

    // The query sees the two active users, never the deleted one.
    let query = format!("{url}/query");
    testkit::eventually("the read model has the active users", WAIT, || {
        let (client, query, ids) = (client.clone(), query.clone(), ids.clone());
        async move {
            let (status, answer) = client.post(&query, &json!({})).await;
            let found: Vec<&str> = answer["results"]
                .as_array()
                .map(|r| r.iter().filter_map(|u| u["id"].as_str()).collect())
                .unwrap_or_default();
            status == StatusCode::OK
                && found.len() == 2
                && found.contains(&ids[1].as_str())
                && found.contains(&ids[2].as_str())
        }
    })
    .await;
    let (_, answer) = client
        .post(&query, &json!({"filter": {"EQ": {"id": ids[0]}}}))
        .await;
    assert_eq!(answer["results"], json!([]), "{answer}");
    // The read model's document is the user as the API shows it.
    let (_, answer) = client
        .post(&query, &json!({"filter": {"EQ": {"id": ids[2]}}}))
        .await;
    let (_, agent) = client.get(&format!("{url}/{}", ids[2])).await;
    assert_eq!(answer["results"], json!([agent]));

    connector.stop().await;
    users.stop().await;
    drop_people(&settings).await;
}
