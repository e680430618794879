//! A client of a Confluent-compatible schema registry.
//!
//! Listing subjects goes through `schema_registry_converter`. Everything whose answer depends
//! on the status (registering, the schema of an id, is this schema registered, is it
//! compatible, what is the latest version) is a plain HTTP call here, because the converter
//! folds every non-2xx status into one opaque error, and its compatibility helper calls an
//! endpoint some registries lack.
//!
//! Errors are classified for [`Error::is_retryable`]: an unreachable registry, a timeout, 5xx,
//! 408 and 429 are [`Error::Registry`] (retry); any other 4xx is [`Error::RegistryRejected`]
//! (final), and a 409 on registering is [`Error::IncompatibleSchema`] with the registry's message.
//! Requests time out ([`Registry::with_timeouts`]), so a registry that accepts connections but
//! never answers is an error to retry rather than a hang.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use reqwest::StatusCode;
use schema_registry_converter::async_impl::schema_registry::{get_all_subjects, SrSettings};
use schema_registry_converter::error::SRCError;
use serde::Deserialize;
use serde_json::json;

use crate::error::{Error, Result};

const CONTENT_TYPE: &str = "application/vnd.schemaregistry.v1+json";

/// A schema as the registry stores it under a subject.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
pub struct RegisteredVersion {
    pub id: u32,
    pub version: u32,
    #[serde(default)]
    pub schema: String,
}

/// The registry's verdict on a candidate schema.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Compatibility {
    Compatible,
    Incompatible { reason: String },
}

/// Subjects and the registered text of their schemas, to the id the registry gave.
type IdCache = HashMap<(String, String), u32>;

/// A registry client. Clones share the connection pool and the id cache of [`Registry::id_for`].
#[derive(Debug, Clone)]
pub struct Registry {
    base_url: String,
    converter: SrSettings,
    http: reqwest::Client,
    ids: Arc<Mutex<IdCache>>,
}

impl Registry {
    /// Connecting times out after 5 s, a whole request after 30 s.
    pub fn new(base_url: &str) -> Self {
        Self::with_timeouts(base_url, Duration::from_secs(5), Duration::from_secs(30))
    }

    /// [`Registry::new`] with other time limits for connecting and for a whole request.
    pub fn with_timeouts(base_url: &str, connect: Duration, request: Duration) -> Self {
        let base_url = base_url.trim_end_matches('/').to_owned();
        let http = reqwest::Client::builder()
            .connect_timeout(connect)
            .timeout(request)
            .build()
            // What `reqwest::Client::new()` does too: only a TLS backend that cannot start fails.
            .expect("the HTTP client's TLS backend initialises");
        Self {
            converter: SrSettings::new(base_url.clone()),
            base_url,
            http,
            ids: Arc::new(Mutex::new(HashMap::new())),
        }
    }

    pub fn base_url(&self) -> &str {
        &self.base_url
    }

    /// The schema text registered under `id`. An id the registry does not know is final
    /// ([`Error::UnknownSchemaId`]); an unreachable registry is worth retrying.
    pub async fn schema_by_id(&self, id: u32) -> Result<String> {
        #[derive(Deserialize)]
        struct Registered {
            schema: String,
        }
        let url = format!("{}/schemas/ids/{id}", self.base_url);
        let response = self.send(self.http.get(&url)).await?;
        match response.status() {
            StatusCode::NOT_FOUND => Err(Error::UnknownSchemaId(id)),
            status if status.is_success() => Ok(self.json::<Registered>(response).await?.schema),
            _ => Err(self.status_error(response).await),
        }
    }

    /// Registers an Avro schema under `subject` and returns its id; registering a schema the
    /// subject already has returns the existing id. A schema the subject's compatibility level
    /// refuses (409) is [`Error::IncompatibleSchema`] with the registry's message.
    pub async fn register(&self, subject: &str, schema: &str) -> Result<u32> {
        #[derive(Deserialize)]
        struct Registered {
            id: u32,
        }
        let url = format!("{}/subjects/{}/versions", self.base_url, encode(subject));
        let response = self.post(&url, &json!({ "schema": schema })).await?;
        match response.status() {
            StatusCode::CONFLICT => Err(Error::IncompatibleSchema {
                subject: subject.to_owned(),
                reason: error_message(response).await,
            }),
            status if status.is_success() => Ok(self.json::<Registered>(response).await?.id),
            _ => Err(self.status_error(response).await),
        }
    }

    /// [`Registry::register`], remembered per (subject, schema text) for the life of this client
    /// and its clones: for subjects registered at run time (a table's columns), where only a
    /// schema not seen yet costs a request.
    pub async fn id_for(&self, subject: &str, schema: &str) -> Result<u32> {
        let key = (subject.to_owned(), schema.to_owned());
        if let Some(id) = self.cached(&key) {
            return Ok(id);
        }
        let id = self.register(subject, schema).await?;
        self.ids
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert(key, id);
        Ok(id)
    }

    fn cached(&self, key: &(String, String)) -> Option<u32> {
        self.ids
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .get(key)
            .copied()
    }

    /// `Ok` when the registry answers a listing of its subjects within 5 s.
    pub async fn check(&self) -> Result<()> {
        let url = format!("{}/subjects", self.base_url);
        let request = self.http.get(&url).timeout(Duration::from_secs(5));
        let response = self.send(request).await?;
        if response.status().is_success() {
            Ok(())
        } else {
            Err(self.status_error(response).await)
        }
    }

    pub async fn subjects(&self) -> Result<Vec<String>> {
        get_all_subjects(&self.converter)
            .await
            .map_err(|e| self.converter_error(e))
    }

    /// The version of `subject` whose schema is `schema`, if it has one.
    pub async fn lookup(&self, subject: &str, schema: &str) -> Result<Option<RegisteredVersion>> {
        let url = format!("{}/subjects/{}", self.base_url, encode(subject));
        let response = self.post(&url, &json!({ "schema": schema })).await?;
        match response.status() {
            StatusCode::NOT_FOUND => Ok(None),
            status if status.is_success() => Ok(Some(self.json(response).await?)),
            _ => Err(self.status_error(response).await),
        }
    }

    /// The newest version of `subject`, if the subject exists.
    pub async fn latest(&self, subject: &str) -> Result<Option<RegisteredVersion>> {
        let url = format!(
            "{}/subjects/{}/versions/latest",
            self.base_url,
            encode(subject)
        );
        let response = self.send(self.http.get(&url)).await?;
        match response.status() {
            StatusCode::NOT_FOUND => Ok(None),
            status if status.is_success() => Ok(Some(self.json(response).await?)),
            _ => Err(self.status_error(response).await),
        }
    }

    /// Asks the registry whether `schema` may follow the latest version of `subject` under the
    /// subject's compatibility level. A subject without versions accepts anything.
    pub async fn check_compatibility(&self, subject: &str, schema: &str) -> Result<Compatibility> {
        #[derive(Deserialize)]
        struct Verdict {
            is_compatible: bool,
            #[serde(default)]
            messages: Vec<String>,
        }
        let url = format!(
            "{}/compatibility/subjects/{}/versions/latest?verbose=true",
            self.base_url,
            encode(subject)
        );
        let response = self.post(&url, &json!({ "schema": schema })).await?;
        match response.status() {
            StatusCode::NOT_FOUND => Ok(Compatibility::Compatible),
            status if status.is_success() => {
                let verdict: Verdict = self.json(response).await?;
                Ok(if verdict.is_compatible {
                    Compatibility::Compatible
                } else {
                    let reason = if verdict.messages.is_empty() {
                        "the registry gave no detail".to_owned()
                    } else {
                        verdict.messages.join("; ")
                    };
                    Compatibility::Incompatible { reason }
                })
            }
            // Some registries answer an incompatible schema with 409 rather than a verdict.
            StatusCode::CONFLICT | StatusCode::UNPROCESSABLE_ENTITY => {
                Ok(Compatibility::Incompatible {
                    reason: error_message(response).await,
                })
            }
            _ => Err(self.status_error(response).await),
        }
    }

    /// Sets the compatibility level the registry enforces for `subject` (e.g. `BACKWARD`).
    pub async fn set_compatibility(&self, subject: &str, level: &str) -> Result<()> {
        let url = format!("{}/config/{}", self.base_url, encode(subject));
        let request = self
            .http
            .put(&url)
            .header(reqwest::header::CONTENT_TYPE, CONTENT_TYPE)
            .body(json!({ "compatibility": level }).to_string());
        let response = self.send(request).await?;
        if response.status().is_success() {
            Ok(())
        } else {
            Err(self.status_error(response).await)
        }
    }

    async fn post(&self, url: &str, body: &serde_json::Value) -> Result<reqwest::Response> {
        let request = self
            .http
            .post(url)
            .header(reqwest::header::CONTENT_TYPE, CONTENT_TYPE)
            .body(body.to_string());
        self.send(request).await
    }

    async fn send(&self, request: reqwest::RequestBuilder) -> Result<reqwest::Response> {
        request
            .send()
            .await
            .map_err(|e| self.error(format!("unreachable: {e}")))
    }

    async fn json<T: serde::de::DeserializeOwned>(&self, response: reqwest::Response) -> Result<T> {
        response
            .json()
            .await
            .map_err(|e| self.error(format!("unexpected answer: {e}")))
    }

    /// 5xx, 408 and 429 are the registry's trouble (retry); any other status is its answer.
    async fn status_error(&self, response: reqwest::Response) -> Error {
        let status = response.status();
        let message = error_message(response).await;
        if status.is_server_error()
            || status == StatusCode::REQUEST_TIMEOUT
            || status == StatusCode::TOO_MANY_REQUESTS
        {
            self.error(format!("HTTP {status}: {message}"))
        } else {
            Error::RegistryRejected {
                url: self.base_url.clone(),
                status: status.as_u16(),
                message,
            }
        }
    }

    fn converter_error(&self, e: SRCError) -> Error {
        let detail = match &e.cause {
            Some(cause) => format!("{} ({cause})", e.error),
            None => e.error.clone(),
        };
        self.error(detail)
    }

    fn error(&self, message: String) -> Error {
        Error::Registry {
            url: self.base_url.clone(),
            message,
        }
    }
}

/// The `message` of a Confluent-style error body, or the raw body.
async fn error_message(response: reqwest::Response) -> String {
    #[derive(Deserialize)]
    struct Body {
        message: String,
    }
    let text = response.text().await.unwrap_or_default();
    serde_json::from_str::<Body>(&text)
        .map(|b| b.message)
        .unwrap_or(text)
}

fn encode(subject: &str) -> String {
    subject.replace('/', "%2F")
}
