//! The connector's settings, through the platform's one layered loader
//! ([`topics::settings::Loader`]): built-in defaults, then the TOML file, then the
//! environment. `KAFKA_BOOTSTRAP_SERVERS`, `SCHEMA_REGISTRY_URL` and
//! `POSTGRES_URL` are the platform-wide names; everything else specific to
//! the connector is `CONNECTOR_<FIELD>` (for example `CONNECTOR_SLOT_NAME`,
//! `CONNECTOR_TABLES=public.a,public.b`).

use std::path::Path;

use serde::Deserialize;

use crate::error::{Error, Result};

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum SnapshotMode {
    /// Snapshot the tables once (consistent with the slot), then stream.
    Initial,
    /// Stream only; rows that existed before the slot are never emitted.
    Never,
    /// Snapshot, record the offset, and exit without streaming.
    InitialOnly,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Format {
    Avro,
    Json,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum DecimalHandling {
    /// Lossless: the value as PostgreSQL prints it, NaN and Infinity included.
    String,
    /// Debezium's `precise`: Avro decimal (or VariableScaleDecimal when the
    /// column has no declared scale). NaN/Infinity cannot be represented and
    /// become null.
    Precise,
    /// Debezium's `double`: lossy for large or very precise values.
    Double,
}

/// Debezium's `hstore.handling.mode`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum HstoreHandling {
    /// An Avro `map<string, string?>` (a JSON object with `format = json`).
    Map,
    /// A string `io.debezium.data.Json`: `{"key":"value"}`.
    Json,
}

#[derive(Debug, Clone, Deserialize)]
pub struct Config {
    /// Logical server name: topic prefix and `source.name`.
    pub name: String,
    pub postgres_url: String,
    pub kafka_bootstrap_servers: String,
    pub schema_registry_url: String,
    pub slot_name: String,
    pub publication_name: String,
    /// `schema.table` names; empty means every table (`FOR ALL TABLES`).
    pub tables: Vec<String>,
    pub snapshot_mode: SnapshotMode,
    pub format: Format,
    pub decimal_handling: DecimalHandling,
    pub hstore_handling: HstoreHandling,
    /// Debezium's `money.fraction.digits`: the scale of `money` values.
    pub money_fraction_digits: u32,
    /// 0 disables heartbeats.
    pub heartbeat_interval_ms: u64,
    pub offsets_topic: String,
    pub topic_partitions: i32,
    pub topic_replication_factor: i32,
    pub tombstones_on_delete: bool,
    pub linger_ms: u64,
    pub snapshot_fetch_size: u32,
    /// How long startup waits for Kafka before failing with a one-line error.
    pub kafka_connect_timeout_ms: u64,
    /// After SIGTERM: how long to wait for the current transaction to end, and
    /// then for Kafka to acknowledge what is in flight (each), before exiting
    /// anyway (what Kafka did not acknowledge is sent again at the next start).
    pub shutdown_timeout_ms: u64,
    /// Debezium's `provide.transaction.metadata`: BEGIN/END records on
    /// `<name>.transaction` and each event's `transaction` block.
    pub provide_transaction_metadata: bool,
    /// A TRUNCATE becomes an event with op `t` (null key, no before/after)
    /// per table; off by default, as Debezium's `skipped.operations=t`.
    pub truncate_events: bool,
    /// Logical decoding messages (`pg_logical_emit_message`, other than the
    /// connector's heartbeats) become op `m` records on `<name>.message`.
    pub logical_messages: bool,
    /// Each heartbeat also writes a record to `__debezium-heartbeat.<name>`
    /// (Debezium's heartbeat topic), once everything before it is published.
    pub heartbeat_topic: bool,
    /// Debezium's outbox event router for this `schema.table` (columns `id`,
    /// `aggregatetype`, `aggregateid`, `payload`): each inserted row becomes
    /// a record on `<outbox_topic_prefix><aggregatetype>`, key = aggregate id,
    /// value = payload, header `id` = event id. Empty: no router.
    pub outbox_table: String,
    pub outbox_topic_prefix: String,
    /// Debezium's `signal.data.collection`: a `schema.table` with columns
    /// `id`, `type`, `data` (text). An `execute-snapshot` row starts an
    /// incremental snapshot; the connector writes its chunk watermarks
    /// there. Empty: no signals.
    pub signal_table: String,
    /// Rows per incremental snapshot chunk (Debezium's
    /// `incremental.snapshot.chunk.size`).
    pub incremental_snapshot_chunk_size: u32,
    /// `host:port` of a `GET /metrics` listener (Prometheus text format);
    /// empty: none.
    pub metrics_listen_addr: String,
}

/// Session settings pinned on every PostgreSQL connection (replication and
/// SQL): the connector parses PostgreSQL's text output, and pgoutput prints
/// values in the walsender session's styles, which `ALTER DATABASE/ROLE ... SET`
/// would otherwise choose.
pub const SESSION_OPTIONS: &str = "-c datestyle=ISO -c intervalstyle=postgres \
     -c bytea_output=hex -c timezone=UTC -c extra_float_digits=3 -c lc_monetary=C";

const DEFAULTS: &str = r#"
name = "connector"
postgres_url = "postgres://platform:platform@127.0.0.1:5432/platform"
kafka_bootstrap_servers = "127.0.0.1:9092"
schema_registry_url = "http://127.0.0.1:8081/apis/ccompat/v7"
slot_name = "connector"
publication_name = "connector"
tables = []
snapshot_mode = "initial"
format = "avro"
decimal_handling = "precise"
hstore_handling = "map"
money_fraction_digits = 2
heartbeat_interval_ms = 10000
offsets_topic = "connector-offsets"
topic_partitions = 1
topic_replication_factor = 1
tombstones_on_delete = true
linger_ms = 5
snapshot_fetch_size = 10000
kafka_connect_timeout_ms = 10000
shutdown_timeout_ms = 15000
provide_transaction_metadata = false
truncate_events = false
logical_messages = false
heartbeat_topic = false
outbox_table = ""
outbox_topic_prefix = "outbox.event."
signal_table = ""
incremental_snapshot_chunk_size = 1024
metrics_listen_addr = ""
"#;

impl Config {
    /// Loads defaults, then `file` (required when given explicitly, else
    /// `connector.toml` in the working directory if present), then the env, through the
    /// platform's one loader ([`topics::settings::Loader`]).
    pub fn load(file: Option<&Path>) -> Result<Self> {
        let cfg: Config = topics::settings::Loader::new("connector")
            .defaults_toml(DEFAULTS)?
            .file(file)
            .default_file("connector.toml")
            .env_prefix("CONNECTOR")
            .lists(&["tables"])
            .load()?;
        cfg.validate()?;
        Ok(cfg)
    }

    fn validate(&self) -> Result<()> {
        if self.name.is_empty() {
            return Err(Error::Config(
                "name (topic prefix) must not be empty".into(),
            ));
        }
        for t in self.tables.iter().chain(self.signal_table()) {
            if !t.contains('.') {
                return Err(Error::Config(format!(
                    "table {t:?} must be written schema.table"
                )));
            }
        }
        Ok(())
    }

    /// The signal table, when one is configured.
    pub fn signal_table(&self) -> Option<&String> {
        Some(&self.signal_table).filter(|t| !t.is_empty())
    }

    /// The tables the publication lists: the configured ones plus the
    /// signal table (its rows must reach the stream); empty = all tables.
    pub fn published(&self) -> Vec<String> {
        let mut tables = self.tables.clone();
        if !tables.is_empty() {
            if let Some(s) = self.signal_table() {
                if !tables.contains(s) {
                    tables.push(s.clone());
                }
            }
        }
        tables
    }

    pub fn topic_for(&self, schema: &str, table: &str) -> String {
        format!("{}.{}.{}", self.name, schema, table)
    }

    /// Debezium's heartbeat topic, `__debezium-heartbeat.<topic.prefix>`.
    pub fn heartbeat_topic_name(&self) -> String {
        format!("__debezium-heartbeat.{}", self.name)
    }

    /// Where logical decoding messages go (Debezium's `<topic.prefix>.message`).
    pub fn message_topic(&self) -> String {
        format!("{}.message", self.name)
    }

    /// Where transaction metadata goes (Debezium's `<topic.prefix>.transaction`).
    pub fn transaction_topic(&self) -> String {
        format!("{}.transaction", self.name)
    }

    /// The database name, for `source.db`.
    pub fn database(&self) -> Result<String> {
        let pg: tokio_postgres::Config = self
            .postgres_url
            .parse()
            .map_err(|e| Error::Config(format!("postgres_url: {e}")))?;
        Ok(pg.get_dbname().unwrap_or("postgres").to_string())
    }

    /// The SQL connection's configuration: `postgres_url` plus the pinned
    /// [`SESSION_OPTIONS`] (after any `options` the URL has, so ours win).
    pub fn postgres_config(&self) -> Result<tokio_postgres::Config> {
        let mut pg: tokio_postgres::Config = self
            .postgres_url
            .parse()
            .map_err(|e| Error::Config(format!("postgres_url: {e}")))?;
        let options = self.session_options()?;
        pg.options(&options);
        Ok(pg)
    }

    fn session_options(&self) -> Result<String> {
        let pg: tokio_postgres::Config = self
            .postgres_url
            .parse()
            .map_err(|e| Error::Config(format!("postgres_url: {e}")))?;
        Ok(match pg.get_options() {
            Some(own) if !own.trim().is_empty() => format!("{own} {SESSION_OPTIONS}"),
            _ => SESSION_OPTIONS.to_string(),
        })
    }

    /// The walsender's URL: `replication=database` (pg_walstream opens a
    /// logical walsender with it) and the pinned session options.
    pub fn replication_url(&self) -> Result<String> {
        let options = self.session_options()?;
        let (base, query) = self
            .postgres_url
            .split_once('?')
            .unwrap_or((&self.postgres_url, ""));
        let mut params: Vec<String> = query
            .split('&')
            .filter(|p| {
                !p.is_empty() && !p.starts_with("options=") && !p.starts_with("replication=")
            })
            .map(str::to_string)
            .collect();
        params.push("replication=database".into());
        params.push(format!("options={}", percent_encode(&options)));
        Ok(format!("{base}?{}", params.join("&")))
    }
}

/// Percent-encodes everything but RFC 3986's unreserved characters.
fn percent_encode(s: &str) -> String {
    let mut out = String::with_capacity(s.len() * 3);
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || b"-._~".contains(&b) {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_then_file() {
        let dir = std::env::temp_dir().join(format!("connector-cfg-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("c.toml");
        std::fs::write(
            &path,
            "name = \"shop\"\ntables = [\"public.orders\"]\nformat = \"json\"\n",
        )
        .unwrap();
        let cfg = Config::load(Some(&path)).unwrap();
        assert_eq!(cfg.name, "shop");
        assert_eq!(cfg.format, Format::Json);
        assert_eq!(cfg.snapshot_mode, SnapshotMode::Initial);
        assert_eq!(cfg.topic_for("public", "orders"), "shop.public.orders");
        let url = cfg.replication_url().unwrap();
        assert!(
            url.contains("?replication=database&options=-c%20datestyle%3DISO"),
            "{url}"
        );
    }

    #[test]
    fn session_options_follow_the_url_own_options() {
        let mut cfg = Config::load(None).unwrap();
        cfg.postgres_url =
            "postgres://u:p@127.0.0.1:5432/db?options=-c%20search_path%3Dx&connect_timeout=5"
                .into();
        let pg = cfg.postgres_config().unwrap();
        let opts = pg.get_options().unwrap();
        assert!(
            opts.starts_with("-c search_path=x -c datestyle=ISO"),
            "{opts}"
        );
        let url = cfg.replication_url().unwrap();
        assert!(url.starts_with("postgres://u:p@127.0.0.1:5432/db?connect_timeout=5&replication=database&options=-c%20search_path"), "{url}");
    }
}
