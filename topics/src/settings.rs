//! One layered configuration for every binary of the platform: defaults → TOML file → env.
//!
//! Platform-wide settings use the same env names everywhere (`KAFKA_BOOTSTRAP_SERVERS`,
//! `SCHEMA_REGISTRY_URL`, `POSTGRES_URL`, `REDIS_URL`, `MYSQL_URL`), which is why fields are
//! flat: the env var `CRM_LISTEN_ADDR` sets the field `crm_listen_addr`.

use std::path::PathBuf;

use config::{Config, Environment, File};
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};

use crate::error::Result;

/// Where the platform's Kafka cluster and schema registry are.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct KafkaSettings {
    pub kafka_bootstrap_servers: String,
    /// Base URL of a Confluent-compatible registry API.
    pub schema_registry_url: String,
}

impl Default for KafkaSettings {
    fn default() -> Self {
        Self {
            kafka_bootstrap_servers: "127.0.0.1:9092".to_owned(),
            schema_registry_url: "http://127.0.0.1:8081/apis/ccompat/v7".to_owned(),
        }
    }
}

/// Loads `S` from its defaults, then the TOML file named by `<APP>_CONFIG` (if set), then the
/// environment. `app` is the binary's name, e.g. `crm` reads `CRM_CONFIG`.
pub fn load<S>(app: &str) -> Result<S>
where
    S: Serialize + DeserializeOwned + Default,
{
    let file_var = format!("{}_CONFIG", app.to_uppercase().replace('-', "_"));
    let file = std::env::var_os(&file_var).map(PathBuf::from);
    load_from(file, Environment::default())
}

fn load_from<S>(file: Option<PathBuf>, env: Environment) -> Result<S>
where
    S: Serialize + DeserializeOwned + Default,
{
    let mut builder = Config::builder().add_source(Config::try_from(&S::default())?);
    if let Some(path) = file {
        builder = builder.add_source(File::from(path).required(true));
    }
    Ok(builder.add_source(env).build()?.try_deserialize()?)
}

#[cfg(test)]
mod tests {
    use std::collections::HashMap;
    use std::io::Write;

    use super::*;

    #[derive(Debug, Default, Serialize, Deserialize, PartialEq)]
    struct AppSettings {
        #[serde(flatten)]
        kafka: KafkaSettings,
        app_port: u16,
        app_name: String,
    }

    fn env(vars: &[(&str, &str)]) -> Environment {
        let map: HashMap<String, String> = vars
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        Environment::default().source(Some(map))
    }

    #[test]
    fn env_overrides_file_overrides_defaults() {
        let mut file = tempfile();
        writeln!(file.1, "app_port = 4000\napp_name = \"from-file\"").unwrap();
        let loaded: AppSettings = load_from(
            Some(file.0.clone()),
            env(&[
                ("APP_PORT", "5000"),
                ("KAFKA_BOOTSTRAP_SERVERS", "10.0.0.1:9092"),
            ]),
        )
        .unwrap();
        assert_eq!(loaded.app_port, 5000);
        assert_eq!(loaded.app_name, "from-file");
        assert_eq!(loaded.kafka.kafka_bootstrap_servers, "10.0.0.1:9092");
        assert_eq!(
            loaded.kafka.schema_registry_url,
            KafkaSettings::default().schema_registry_url
        );
        std::fs::remove_file(file.0).unwrap();
    }

    #[test]
    fn a_bad_value_is_an_error_not_a_default() {
        let err = load_from::<AppSettings>(None, env(&[("APP_PORT", "not-a-port")])).unwrap_err();
        assert!(err.to_string().contains("app_port"), "{err}");
    }

    fn tempfile() -> (PathBuf, std::fs::File) {
        let path = std::env::temp_dir().join(format!("settings-{}.toml", uuid::Uuid::new_v4()));
        let file = std::fs::File::create(&path).unwrap();
        (path, file)
    }
}
