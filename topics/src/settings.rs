//! One layered configuration for every binary of the platform: defaults → TOML file → env.
//!
//! Platform-wide settings use the same env names everywhere (`KAFKA_BOOTSTRAP_SERVERS`,
//! `SCHEMA_REGISTRY_URL`, `POSTGRES_URL`, `REDIS_URL`, `MYSQL_URL`), which is why fields are
//! flat: the env var `CRM_LISTEN_ADDR` sets the field `crm_listen_addr`.
//!
//! [`load`] is the common case. [`Loader`] is the same three layers for a binary that needs
//! more: defaults written as TOML, an explicit file (a `--config` flag) or an optional default
//! file, an env prefix for its own fields (the connector: `CONNECTOR_SLOT_NAME` sets
//! `slot_name`) beside the platform-wide names, and comma-separated lists.

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use config::{Config, Environment, File, FileFormat};
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

/// The env names every binary of the platform reads the same way (unprefixed).
pub const PLATFORM_ENV: &[&str] = &[
    "KAFKA_BOOTSTRAP_SERVERS",
    "SCHEMA_REGISTRY_URL",
    "POSTGRES_URL",
    "REDIS_URL",
    "MYSQL_URL",
];

/// Loads `S` from its defaults, then the TOML file named by `<APP>_CONFIG` (if set), then the
/// environment. `app` is the binary's name, e.g. `crm` reads `CRM_CONFIG`.
pub fn load<S>(app: &str) -> Result<S>
where
    S: Serialize + DeserializeOwned + Default,
{
    Loader::new(app).defaults(&S::default())?.load()
}

/// The three layers with a binary's own choices; see the module documentation.
#[must_use]
pub struct Loader<'a> {
    app: &'a str,
    defaults: Option<Config>,
    file: Option<PathBuf>,
    default_file: Option<&'a str>,
    prefix: Option<&'a str>,
    lists: &'a [&'a str],
    /// The environment, replaced in tests.
    env: Option<HashMap<String, String>>,
}

impl<'a> Loader<'a> {
    /// `app` names the file variable `<APP>_CONFIG` (`-` becomes `_`).
    pub fn new(app: &'a str) -> Self {
        Self {
            app,
            defaults: None,
            file: None,
            default_file: None,
            prefix: None,
            lists: &[],
            env: None,
        }
    }

    /// The defaults layer from a value (usually `S::default()`).
    pub fn defaults<D: Serialize>(mut self, defaults: &D) -> Result<Self> {
        self.defaults = Some(Config::try_from(defaults)?);
        Ok(self)
    }

    /// The defaults layer written as TOML.
    pub fn defaults_toml(mut self, toml: &str) -> Result<Self> {
        self.defaults = Some(
            Config::builder()
                .add_source(File::from_str(toml, FileFormat::Toml))
                .build()?,
        );
        Ok(self)
    }

    /// A file that must exist (a `--config` flag); `None` leaves the choice to `<APP>_CONFIG`
    /// and then [`Loader::default_file`].
    pub fn file(mut self, path: Option<&Path>) -> Self {
        self.file = path.map(Path::to_path_buf);
        self
    }

    /// Read when neither an explicit file nor `<APP>_CONFIG` names one, if it exists.
    pub fn default_file(mut self, path: &'a str) -> Self {
        self.default_file = Some(path);
        self
    }

    /// The binary's own fields come from `<PREFIX>_<FIELD>` (values parsed as numbers and
    /// booleans where the field is one); the [`PLATFORM_ENV`] names stay unprefixed.
    /// Without a prefix every env var is a candidate field, as with [`load`].
    pub fn env_prefix(mut self, prefix: &'a str) -> Self {
        self.prefix = Some(prefix);
        self
    }

    /// Fields given in the env as comma-separated lists (with [`Loader::env_prefix`]).
    pub fn lists(mut self, fields: &'a [&'a str]) -> Self {
        self.lists = fields;
        self
    }

    pub fn load<S: DeserializeOwned>(self) -> Result<S> {
        let var = |name: &str| match &self.env {
            Some(env) => env.get(name).cloned(),
            None => std::env::var(name).ok(),
        };
        let mut builder = Config::builder();
        if let Some(defaults) = self.defaults.clone() {
            builder = builder.add_source(defaults);
        }
        let named = var(&format!(
            "{}_CONFIG",
            self.app.to_uppercase().replace('-', "_")
        ));
        match (&self.file, named, self.default_file) {
            (Some(path), _, _) => builder = builder.add_source(File::from(path.clone())),
            (None, Some(path), _) => builder = builder.add_source(File::from(PathBuf::from(path))),
            (None, None, Some(path)) => {
                builder = builder.add_source(File::with_name(path).required(false))
            }
            (None, None, None) => {}
        }
        let mut env = Environment::default();
        if let Some(prefix) = self.prefix {
            env = Environment::with_prefix(prefix)
                .prefix_separator("_")
                .try_parsing(true);
            if !self.lists.is_empty() {
                env = env.list_separator(",");
                for field in self.lists {
                    env = env.with_list_parse_key(field);
                }
            }
        }
        if let Some(vars) = &self.env {
            env = env.source(Some(vars.clone()));
        }
        builder = builder.add_source(env);
        if self.prefix.is_some() {
            for name in PLATFORM_ENV {
                if let Some(value) = var(name) {
                    builder = builder.set_override(name.to_lowercase(), value)?;
                }
            }
        }
        Ok(builder.build()?.try_deserialize()?)
    }

    #[cfg(test)]
    fn env(mut self, vars: &[(&str, &str)]) -> Self {
        self.env = Some(
            vars.iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
        );
        self
    }
}

#[cfg(test)]
mod tests {
    use std::io::Write;

    use super::*;

    #[derive(Debug, Default, Serialize, Deserialize, PartialEq)]
    struct AppSettings {
        #[serde(flatten)]
        kafka: KafkaSettings,
        app_port: u16,
        app_name: String,
    }

    #[test]
    fn env_overrides_file_overrides_defaults() {
        let mut file = tempfile();
        writeln!(file.1, "app_port = 4000\napp_name = \"from-file\"").unwrap();
        let loaded: AppSettings = Loader::new("app")
            .defaults(&AppSettings::default())
            .unwrap()
            .env(&[
                ("APP_CONFIG", file.0.to_str().unwrap()),
                ("APP_PORT", "5000"),
                ("KAFKA_BOOTSTRAP_SERVERS", "10.0.0.1:9092"),
            ])
            .load()
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
        let err = Loader::new("app")
            .defaults(&AppSettings::default())
            .unwrap()
            .env(&[("APP_PORT", "not-a-port")])
            .load::<AppSettings>()
            .unwrap_err();
        assert!(err.to_string().contains("app_port"), "{err}");
    }

    #[derive(Debug, Deserialize)]
    struct Prefixed {
        kafka_bootstrap_servers: String,
        slot_name: String,
        tables: Vec<String>,
        linger_ms: u64,
        tombstones: bool,
    }

    const PREFIXED_DEFAULTS: &str = r#"
kafka_bootstrap_servers = "127.0.0.1:9092"
slot_name = "default-slot"
tables = []
linger_ms = 5
tombstones = true
"#;

    #[test]
    fn a_prefix_reads_own_fields_prefixed_and_platform_names_plain() {
        let loaded: Prefixed = Loader::new("connector")
            .defaults_toml(PREFIXED_DEFAULTS)
            .unwrap()
            .env_prefix("CONNECTOR")
            .lists(&["tables"])
            .env(&[
                ("CONNECTOR_SLOT_NAME", "mine"),
                ("CONNECTOR_TABLES", "public.a,public.b"),
                ("CONNECTOR_LINGER_MS", "0"),
                ("CONNECTOR_TOMBSTONES", "false"),
                ("KAFKA_BOOTSTRAP_SERVERS", "10.0.0.2:9092"),
                // Unprefixed: not the connector's.
                ("SLOT_NAME", "someone-else"),
            ])
            .load()
            .unwrap();
        assert_eq!(loaded.slot_name, "mine");
        assert_eq!(loaded.tables, ["public.a", "public.b"]);
        assert_eq!(loaded.linger_ms, 0);
        assert!(!loaded.tombstones);
        assert_eq!(loaded.kafka_bootstrap_servers, "10.0.0.2:9092");
    }

    #[test]
    fn an_explicit_file_must_exist_and_beats_the_default_file() {
        let missing = std::env::temp_dir().join(format!("missing-{}.toml", uuid::Uuid::new_v4()));
        let loader = || {
            Loader::new("connector")
                .defaults_toml(PREFIXED_DEFAULTS)
                .unwrap()
                .env_prefix("CONNECTOR")
                .env(&[])
        };
        let err = loader()
            .file(Some(&missing))
            .load::<Prefixed>()
            .unwrap_err();
        assert!(err.to_string().contains("not found"), "{err}");
        // A default file that does not exist is simply not a layer.
        let loaded: Prefixed = loader()
            .default_file(missing.to_str().unwrap())
            .load()
            .unwrap();
        assert_eq!(loaded.slot_name, "default-slot");
        let mut file = tempfile();
        writeln!(file.1, "slot_name = \"from-file\"").unwrap();
        let loaded: Prefixed = loader()
            .file(Some(&file.0))
            .default_file(missing.to_str().unwrap())
            .load()
            .unwrap();
        assert_eq!(loaded.slot_name, "from-file");
        std::fs::remove_file(file.0).unwrap();
    }

    fn tempfile() -> (PathBuf, std::fs::File) {
        let path = std::env::temp_dir().join(format!("settings-{}.toml", uuid::Uuid::new_v4()));
        let file = std::fs::File::create(&path).unwrap();
        (path, file)
    }
}
