//! The CRM's settings. Field names are flat because env names map onto them one to one
//! (`CRM_LISTEN_ADDR` sets `crm_listen_addr`); see [`topics::settings`].

use std::path::PathBuf;

use serde::{Deserialize, Serialize};
use sqlx::postgres::PgConnectOptions;
use topics::settings::KafkaSettings;

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Settings {
    #[serde(flatten)]
    pub kafka: KafkaSettings,
    /// A server and an account allowed to create databases; its own database is only used to
    /// create [`Settings::crm_database`].
    pub postgres_url: String,
    /// The CRM's own database on that server, created on first start.
    pub crm_database: String,
    pub crm_listen_addr: String,
    /// The customer file imported once into an empty database.
    pub crm_seed_csv: PathBuf,
    /// The outbox relay's role: its Kafka `transactional.id`. Every instance on one database
    /// must share it (a new relay fences the old one); empty means
    /// `crm-outbox-relay.<crm_database>`, so each database has a role of its own.
    pub crm_relay_role: String,
    /// The API's PostgreSQL connections. A change holds one for its transaction's round trips,
    /// so changes per second are at most this many over the transaction's time: at 2,000/s and
    /// 5 ms per transaction on a loaded machine, 10 are already all busy.
    pub crm_max_connections: u32,
}

impl Default for Settings {
    fn default() -> Self {
        Self {
            kafka: KafkaSettings::default(),
            postgres_url: "postgres://platform:platform@127.0.0.1:5432/platform".to_owned(),
            crm_database: "crm".to_owned(),
            crm_listen_addr: "127.0.0.1:3005".to_owned(),
            // Resolved at build time so the binary finds the shipped file from any cwd.
            crm_seed_csv: default_seed_csv(),
            crm_relay_role: String::new(),
            crm_max_connections: 10,
        }
    }
}

/// The CSV shipped with the crate.
pub fn default_seed_csv() -> PathBuf {
    PathBuf::from(concat!(env!("CARGO_MANIFEST_DIR"), "/data/customers.csv"))
}

impl Settings {
    /// The server as configured, for creating the CRM's database.
    pub fn server_options(&self) -> Result<PgConnectOptions, sqlx::Error> {
        self.postgres_url.parse()
    }

    /// The relay role (Kafka `transactional.id`) in force; see [`Settings::crm_relay_role`].
    pub fn relay_role(&self) -> String {
        if self.crm_relay_role.is_empty() {
            format!("crm-outbox-relay.{}", self.crm_database)
        } else {
            self.crm_relay_role.clone()
        }
    }

    /// The CRM's own database on that server.
    pub fn database_options(&self) -> Result<PgConnectOptions, sqlx::Error> {
        Ok(self.server_options()?.database(&self.crm_database))
    }
}

pub fn load() -> topics::Result<Settings> {
    topics::settings::load("crm")
}
