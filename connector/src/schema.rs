//! PostgreSQL type → Debezium/Avro type mapping, and the Avro schemas of the
//! key and of the Debezium envelope derived from a table's columns.
//!
//! | PostgreSQL                 | Avro / Connect logical type                          |
//! |----------------------------|------------------------------------------------------|
//! | boolean                    | boolean                                              |
//! | smallint, integer          | int                                                  |
//! | bigint, oid                | long                                                 |
//! | real / double precision    | float / double                                       |
//! | numeric                    | string (default), decimal bytes, or double           |
//! | text, varchar, char, name  | string                                               |
//! | date                       | int `io.debezium.time.Date` (days since epoch)       |
//! | time(p≤3) / time           | int `Time` (ms) / long `MicroTime` (µs)              |
//! | timestamp(p≤3) / timestamp | long `Timestamp` (ms) / long `MicroTimestamp` (µs)   |
//! | timestamptz                | string `ZonedTimestamp` (ISO-8601, UTC)              |
//! | timetz                     | string `ZonedTime` (ISO-8601, UTC)                   |
//! | interval                   | long `MicroDuration` (µs, a month = 30.4375 days)    |
//! | domain                     | its base type                                        |
//! | uuid                       | string `io.debezium.data.Uuid`                       |
//! | json, jsonb                | string `io.debezium.data.Json`                       |
//! | bytea                      | bytes                                                |
//! | money                      | as numeric (`decimal_handling`), scale `money_fraction_digits` |
//! | hstore                     | map<string, string?> (default) or string `Json`      |
//! | bit(1), varbit(1)          | boolean                                              |
//! | bit(n), varbit(n), varbit  | bytes `io.debezium.data.Bits` (little-endian)        |
//! | point                      | record `io.debezium.data.geometry.Point` (x, y, wkb, srid) |
//! | T[] (one dimension)        | array of optional T                                  |
//! | anything else              | string (PostgreSQL's text output)                    |

use std::collections::HashSet;

use serde_json::{json, Value as Json};

use crate::config::DecimalHandling;

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PgType {
    Bool,
    Int16,
    Int32,
    Int64,
    Float32,
    Float64,
    /// `scale` is `None` for an unconstrained `numeric`; negative (PostgreSQL
    /// 15: `numeric(3, -2)` rounds to hundreds) for digits left of the point.
    Numeric {
        precision: Option<u32>,
        scale: Option<i32>,
    },
    Text,
    Date,
    Time {
        micros: bool,
    },
    Timestamp {
        micros: bool,
    },
    TimestampTz,
    /// `time with time zone`: Debezium's `ZonedTime`, in UTC.
    TimeTz,
    /// Debezium's `MicroDuration` (interval.handling.mode = numeric).
    Interval,
    Uuid,
    Json,
    Bytea,
    /// `money`: a decimal with a fixed number of fraction digits (Debezium's
    /// `money.fraction.digits`), mapped per `decimal_handling`.
    Money {
        fraction_digits: u32,
    },
    /// The `hstore` extension's type: Debezium's `hstore.handling.mode`,
    /// `map` (an Avro map of optional strings) or `json` (a Json string).
    Hstore {
        json: bool,
    },
    /// `bit(n)`/`varbit(n)` with n > 1, or unbounded `varbit`: Debezium's
    /// `io.debezium.data.Bits` (bit(1) and varbit(1) are booleans).
    Bits {
        length: u32,
    },
    /// Debezium's `io.debezium.data.geometry.Point`.
    Point,
    Array(Box<PgType>),
    /// Enums, domains, intervals, geometric types…: PostgreSQL's text output.
    Other,
}

impl PgType {
    /// Maps a type OID (as in `pg_type` and in pgoutput Relation messages)
    /// and its type modifier.
    pub fn from_oid(oid: u32, typmod: i32) -> PgType {
        // time/timestamp typmod is the fractional precision, -1 meaning 6.
        let micros = !(0..=3).contains(&typmod);
        match oid {
            16 => PgType::Bool,
            21 => PgType::Int16,
            23 => PgType::Int32,
            20 | 26 => PgType::Int64,
            700 => PgType::Float32,
            701 => PgType::Float64,
            1700 => numeric(typmod),
            25 | 1043 | 1042 | 19 | 18 => PgType::Text,
            1082 => PgType::Date,
            1083 => PgType::Time { micros },
            1114 => PgType::Timestamp { micros },
            1184 => PgType::TimestampTz,
            1266 => PgType::TimeTz,
            1186 => PgType::Interval,
            2950 => PgType::Uuid,
            114 | 3802 => PgType::Json,
            17 => PgType::Bytea,
            790 => PgType::Money { fraction_digits: 2 },
            // bit's typmod is its length (1 when written `bit`); varbit's is
            // -1 when unbounded.
            1560 | 1562 if typmod == 1 => PgType::Bool,
            1560 | 1562 => PgType::Bits {
                length: u32::try_from(typmod).unwrap_or(i32::MAX as u32),
            },
            600 => PgType::Point,
            1000 => array(PgType::Bool),
            1005 => array(PgType::Int16),
            1007 => array(PgType::Int32),
            1016 => array(PgType::Int64),
            1021 => array(PgType::Float32),
            1022 => array(PgType::Float64),
            // Array typmods are the element's, so a numeric(10,2)[] keeps its scale.
            1231 => array(numeric(typmod)),
            1009 | 1015 | 1014 | 1003 => array(PgType::Text),
            1182 => array(PgType::Date),
            1115 => array(PgType::Timestamp { micros }),
            1185 => array(PgType::TimestampTz),
            2951 => array(PgType::Uuid),
            199 | 3807 => array(PgType::Json),
            1001 => array(PgType::Bytea),
            _ => PgType::Other,
        }
    }

    /// [`PgType::from_oid`] for a column declared with `dims` array
    /// dimensions: a multi-dimensional array has no Avro mapping here and is
    /// carried as PostgreSQL's text (`{{1,2},{3,4}}`).
    pub fn from_column(oid: u32, typmod: i32, dims: i32) -> PgType {
        match PgType::from_oid(oid, typmod) {
            PgType::Array(_) if dims > 1 => PgType::Other,
            t => t,
        }
    }

    /// [`PgType::from_column`] with the column's (base) type name, for
    /// extension types whose OID differs between databases (`hstore`).
    pub fn from_catalog(oid: u32, typmod: i32, dims: i32, type_name: &str) -> PgType {
        match type_name {
            "hstore" => PgType::Hstore { json: false },
            _ => PgType::from_column(oid, typmod, dims),
        }
    }

    /// The type with the connector's handling modes applied
    /// (`hstore_handling`, `money_fraction_digits`).
    pub fn with_modes(self, hstore_json: bool, money_fraction_digits: u32) -> PgType {
        match self {
            PgType::Hstore { .. } => PgType::Hstore { json: hstore_json },
            PgType::Money { .. } => PgType::Money {
                fraction_digits: money_fraction_digits,
            },
            t => t,
        }
    }

    /// Whether PostgreSQL may TOAST the value, i.e. whether an update can
    /// leave it out as "unchanged".
    pub fn is_string_like(&self) -> bool {
        matches!(
            self,
            PgType::Text
                | PgType::Json
                | PgType::Uuid
                | PgType::TimestampTz
                | PgType::Other
                | PgType::Hstore { .. }
        )
    }
}

fn array(t: PgType) -> PgType {
    PgType::Array(Box::new(t))
}

fn numeric(typmod: i32) -> PgType {
    if typmod < 4 {
        return PgType::Numeric {
            precision: None,
            scale: None,
        };
    }
    let m = (typmod - 4) as u32;
    // The scale is an 11-bit two's complement number since PostgreSQL 15.
    let scale = (((m & 0x7ff) ^ 0x400) as i32) - 0x400;
    PgType::Numeric {
        precision: Some((m >> 16) & 0xffff),
        scale: Some(scale),
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Column {
    pub name: String,
    pub ty: PgType,
    /// Part of the primary key: required in both key and value schemas.
    pub key: bool,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TableSchema {
    pub schema: String,
    pub table: String,
    pub columns: Vec<Column>,
}

impl TableSchema {
    pub fn key_columns(&self) -> impl Iterator<Item = (usize, &Column)> {
        self.columns.iter().enumerate().filter(|(_, c)| c.key)
    }

    pub fn has_key(&self) -> bool {
        self.columns.iter().any(|c| c.key)
    }

    /// `schema.table`, for messages.
    pub fn qualified(&self) -> String {
        format!("{}.{}", self.schema, self.table)
    }

    /// Two columns whose names become the same Avro field name.
    pub fn avro_name_collision(&self) -> Option<(String, String, String)> {
        let mut seen: std::collections::HashMap<String, &str> = std::collections::HashMap::new();
        for c in &self.columns {
            let field = avro_name(&c.name);
            if let Some(first) = seen.insert(field.clone(), &c.name) {
                return Some((first.to_string(), c.name.clone(), field));
            }
        }
        None
    }

    fn namespace(&self, prefix: &str) -> String {
        [prefix, &self.schema, &self.table]
            .iter()
            .map(|s| avro_name(s))
            .collect::<Vec<_>>()
            .join(".")
    }

    /// The Avro schema of the message key: the primary key columns, or `None`
    /// for a table without primary key (Debezium then sends a null key).
    pub fn key_schema(&self, prefix: &str, decimals: DecimalHandling) -> Option<Json> {
        if !self.has_key() {
            return None;
        }
        let ns = self.namespace(prefix);
        let mut named = HashSet::new();
        let fields: Vec<Json> = self
            .key_columns()
            .map(|(_, c)| field(c, decimals, &mut named))
            .collect();
        Some(json!({
            "type": "record",
            "name": "Key",
            "namespace": ns,
            "fields": fields,
            "connect.name": format!("{ns}.Key"),
        }))
    }

    /// The Debezium envelope schema. Non-key columns are optional with a null
    /// default, so a column added later yields a backward-compatible version.
    pub fn value_schema(&self, prefix: &str, decimals: DecimalHandling) -> Json {
        let ns = self.namespace(prefix);
        let mut named = HashSet::new();
        let fields: Vec<Json> = self
            .columns
            .iter()
            .map(|c| field(c, decimals, &mut named))
            .collect();
        json!({
            "type": "record",
            "name": "Envelope",
            "namespace": ns,
            "fields": [
                {"name": "before", "type": ["null", {
                    "type": "record",
                    "name": "Value",
                    "fields": fields,
                    "connect.name": format!("{ns}.Value"),
                }], "default": null},
                {"name": "after", "type": ["null", "Value"], "default": null},
                {"name": "source", "type": source_schema()},
                {"name": "transaction", "type": ["null", {
                    "type": "record",
                    "name": "block",
                    "namespace": "event",
                    "fields": [
                        {"name": "id", "type": "string"},
                        {"name": "total_order", "type": "long"},
                        {"name": "data_collection_order", "type": "long"},
                    ],
                    "connect.version": 1,
                    "connect.name": "event.block",
                }], "default": null},
                {"name": "op", "type": "string"},
                {"name": "ts_ms", "type": ["null", "long"], "default": null},
                {"name": "ts_us", "type": ["null", "long"], "default": null},
                {"name": "ts_ns", "type": ["null", "long"], "default": null},
            ],
            "connect.version": 1,
            "connect.name": format!("{ns}.Envelope"),
        })
    }
}

/// Key of the transaction topic's records (Debezium's).
pub fn transaction_key_schema() -> Json {
    json!({
        "type": "record",
        "name": "TransactionMetadataKey",
        "namespace": "io.debezium.connector.common",
        "fields": [{"name": "id", "type": "string"}],
        "connect.name": "io.debezium.connector.common.TransactionMetadataKey",
    })
}

/// Value of the transaction topic's BEGIN/END records (Debezium's).
pub fn transaction_value_schema() -> Json {
    json!({
        "type": "record",
        "name": "TransactionMetadataValue",
        "namespace": "io.debezium.connector.common",
        "fields": [
            {"name": "status", "type": "string"},
            {"name": "id", "type": "string"},
            {"name": "event_count", "type": ["null", "long"], "default": null},
            {"name": "data_collections", "type": ["null", {"type": "array", "items": {
                "type": "record",
                "name": "ConnectDefault",
                "namespace": "io.confluent.connect.avro",
                "fields": [
                    {"name": "data_collection", "type": "string"},
                    {"name": "event_count", "type": "long"},
                ],
            }}], "default": null},
            {"name": "ts_ms", "type": "long"},
        ],
        "connect.name": "io.debezium.connector.common.TransactionMetadataValue",
    })
}

/// Key of the heartbeat topic's records (Debezium's `ServerNameKey`).
pub fn heartbeat_key_schema() -> Json {
    json!({
        "type": "record",
        "name": "ServerNameKey",
        "namespace": "io.debezium.connector.common",
        "fields": [{"name": "serverName", "type": "string"}],
        "connect.name": "io.debezium.connector.common.ServerNameKey",
    })
}

/// Value of the heartbeat topic's records (Debezium's `Heartbeat`).
pub fn heartbeat_value_schema() -> Json {
    json!({
        "type": "record",
        "name": "Heartbeat",
        "namespace": "io.debezium.connector.common",
        "fields": [{"name": "ts_ms", "type": "long"}],
        "connect.name": "io.debezium.connector.common.Heartbeat",
    })
}

/// Key of the `<name>.message` records.
pub fn message_key_schema() -> Json {
    json!({
        "type": "record",
        "name": "MessageKey",
        "namespace": "io.debezium.connector.postgresql",
        "fields": [{"name": "prefix", "type": "string"}],
        "connect.name": "io.debezium.connector.postgresql.MessageKey",
    })
}

/// Value of the `<name>.message` records (logical decoding messages, op `m`).
pub fn message_value_schema() -> Json {
    json!({
        "type": "record",
        "name": "MessageValue",
        "namespace": "io.debezium.connector.postgresql",
        "fields": [
            {"name": "op", "type": "string"},
            {"name": "ts_ms", "type": ["null", "long"], "default": null},
            {"name": "source", "type": source_schema()},
            {"name": "message", "type": {
                "type": "record",
                "name": "Message",
                "fields": [
                    {"name": "prefix", "type": "string"},
                    {"name": "content", "type": "bytes"},
                ],
            }},
        ],
        "connect.name": "io.debezium.connector.postgresql.MessageValue",
    })
}

fn source_schema() -> Json {
    json!({
        "type": "record",
        "name": "Source",
        "namespace": "io.debezium.connector.postgresql",
        "fields": [
            {"name": "version", "type": "string"},
            {"name": "connector", "type": "string"},
            {"name": "name", "type": "string"},
            {"name": "ts_ms", "type": "long"},
            {"name": "snapshot", "type": [{
                "type": "string",
                "connect.version": 1,
                "connect.parameters": {
                    "allowed": "true,first,first_in_data_collection,last_in_data_collection,last,false,incremental"
                },
                "connect.default": "false",
                "connect.name": "io.debezium.data.Enum",
            }, "null"], "default": "false"},
            {"name": "db", "type": "string"},
            {"name": "sequence", "type": ["null", "string"], "default": null},
            {"name": "ts_us", "type": ["null", "long"], "default": null},
            {"name": "ts_ns", "type": ["null", "long"], "default": null},
            {"name": "schema", "type": "string"},
            {"name": "table", "type": "string"},
            {"name": "txId", "type": ["null", "long"], "default": null},
            {"name": "lsn", "type": ["null", "long"], "default": null},
            {"name": "xmin", "type": ["null", "long"], "default": null},
        ],
        "connect.name": "io.debezium.connector.postgresql.Source",
    })
}

fn field(c: &Column, decimals: DecimalHandling, named: &mut HashSet<&'static str>) -> Json {
    let ty = avro_type(&c.ty, decimals, named);
    if c.key {
        json!({"name": avro_name(&c.name), "type": ty})
    } else {
        json!({"name": avro_name(&c.name), "type": ["null", ty], "default": null})
    }
}

/// The Avro type of a (non-null) value of `ty`.
pub fn avro_type(
    ty: &PgType,
    decimals: DecimalHandling,
    named: &mut HashSet<&'static str>,
) -> Json {
    let connect =
        |base: &str, name: &str| json!({"type": base, "connect.version": 1, "connect.name": name});
    match ty {
        PgType::Bool => json!("boolean"),
        PgType::Int16 => json!({"type": "int", "connect.type": "int16"}),
        PgType::Int32 => json!("int"),
        PgType::Int64 => json!("long"),
        PgType::Float32 => json!("float"),
        PgType::Float64 => json!("double"),
        PgType::Numeric { precision, scale } => match (decimals, scale) {
            (DecimalHandling::String, _) => json!("string"),
            (DecimalHandling::Double, _) => json!("double"),
            (DecimalHandling::Precise, Some(scale)) => {
                // Avro's decimal scale cannot be negative: numeric(3, -2) holds
                // integers, so it becomes scale 0 with room for the zeros.
                let precision = precision.unwrap_or(0) + scale.min(&0).unsigned_abs();
                let scale = (*scale).max(0);
                json!({
                    "type": "bytes",
                    "scale": scale,
                    "precision": precision,
                    "connect.version": 1,
                    "connect.parameters": {
                        "scale": scale.to_string(),
                        "connect.decimal.precision": precision.to_string(),
                    },
                    "connect.name": "org.apache.kafka.connect.data.Decimal",
                    "logicalType": "decimal",
                })
            }
            (DecimalHandling::Precise, None) => {
                // A named type may be defined once per schema; later uses refer to it.
                const NAME: &str = "io.debezium.data.VariableScaleDecimal";
                if !named.insert(NAME) {
                    return json!(NAME);
                }
                json!({
                    "type": "record",
                    "name": "VariableScaleDecimal",
                    "namespace": "io.debezium.data",
                    "fields": [
                        {"name": "scale", "type": "int"},
                        {"name": "value", "type": "bytes"},
                    ],
                    "connect.doc": "Variable scaled decimal",
                    "connect.version": 1,
                    "connect.name": NAME,
                })
            }
        },
        PgType::Text | PgType::Other => json!("string"),
        PgType::Date => connect("int", "io.debezium.time.Date"),
        PgType::Time { micros: false } => connect("int", "io.debezium.time.Time"),
        PgType::Time { micros: true } => connect("long", "io.debezium.time.MicroTime"),
        PgType::Timestamp { micros: false } => connect("long", "io.debezium.time.Timestamp"),
        PgType::Timestamp { micros: true } => connect("long", "io.debezium.time.MicroTimestamp"),
        PgType::TimestampTz => connect("string", "io.debezium.time.ZonedTimestamp"),
        PgType::TimeTz => connect("string", "io.debezium.time.ZonedTime"),
        PgType::Interval => connect("long", "io.debezium.time.MicroDuration"),
        PgType::Uuid => connect("string", "io.debezium.data.Uuid"),
        PgType::Json => connect("string", "io.debezium.data.Json"),
        PgType::Bytea => json!("bytes"),
        PgType::Money { fraction_digits } => match decimals {
            DecimalHandling::String => json!("string"),
            DecimalHandling::Double => json!("double"),
            // Debezium's money schema is `Decimal.builder(digits)` without a
            // precision, which the Avro converter writes as precision 64.
            DecimalHandling::Precise => json!({
                "type": "bytes",
                "scale": fraction_digits,
                "precision": 64,
                "connect.version": 1,
                "connect.parameters": {"scale": fraction_digits.to_string()},
                "connect.name": "org.apache.kafka.connect.data.Decimal",
                "logicalType": "decimal",
            }),
        },
        PgType::Hstore { json: false } => json!({"type": "map", "values": ["null", "string"]}),
        PgType::Hstore { json: true } => connect("string", "io.debezium.data.Json"),
        PgType::Bits { length } => json!({
            "type": "bytes",
            "connect.version": 1,
            "connect.parameters": {"length": length.to_string()},
            "connect.name": "io.debezium.data.Bits",
        }),
        PgType::Point => {
            const NAME: &str = "io.debezium.data.geometry.Point";
            if !named.insert(NAME) {
                return json!(NAME);
            }
            json!({
                "type": "record",
                "name": "Point",
                "namespace": "io.debezium.data.geometry",
                "fields": [
                    {"name": "x", "type": "double"},
                    {"name": "y", "type": "double"},
                    {"name": "wkb", "type": ["null", "bytes"], "default": null},
                    {"name": "srid", "type": ["null", "int"], "default": null},
                ],
                "connect.doc": "Geometry (POINT)",
                "connect.version": 1,
                "connect.name": NAME,
            })
        }
        PgType::Array(elem) => json!({
            "type": "array",
            "items": ["null", avro_type(elem, decimals, named)],
        }),
    }
}

/// In words, what changes from the registered schema `old` to `new` (key
/// or envelope), column by column: for the one-line error when the registry
/// refuses `new`.
pub fn describe_change(old: &Json, new: &Json) -> String {
    fn columns(schema: &Json) -> Vec<(String, Json)> {
        // The envelope's columns are in `before`'s Value record; a key's at the top.
        let record = match schema["name"].as_str() {
            Some("Envelope") => &schema["fields"][0]["type"][1],
            _ => schema,
        };
        record["fields"]
            .as_array()
            .map(|fs| {
                fs.iter()
                    .filter_map(|f| Some((f["name"].as_str()?.to_string(), f["type"].clone())))
                    .collect()
            })
            .unwrap_or_default()
    }
    fn render(t: &Json) -> String {
        match t {
            Json::String(s) => s.clone(),
            Json::Array(union) => {
                let inner: Vec<String> = union
                    .iter()
                    .filter(|m| m.as_str() != Some("null"))
                    .map(render)
                    .collect();
                let optional = union.len() > inner.len();
                format!(
                    "{}{}",
                    inner.join("|"),
                    if optional { " (optional)" } else { "" }
                )
            }
            Json::Object(o) => match (o.get("connect.name"), o.get("type")) {
                (Some(Json::String(n)), _) => n.clone(),
                (_, Some(Json::String(ty))) if ty == "array" => {
                    format!("array of {}", render(&o["items"]))
                }
                (_, Some(ty)) => render(ty),
                _ => t.to_string(),
            },
            _ => t.to_string(),
        }
    }
    let (old, new) = (columns(old), columns(new));
    let mut changes = Vec::new();
    for (name, ty) in &new {
        match old.iter().find(|(n, _)| n == name) {
            None => changes.push(format!("column {name:?} added as {}", render(ty))),
            Some((_, was)) if was != ty => changes.push(format!(
                "column {name:?} changes from {} to {}",
                render(was),
                render(ty)
            )),
            Some(_) => {}
        }
    }
    for (name, ty) in &old {
        if !new.iter().any(|(n, _)| n == name) {
            changes.push(format!("column {name:?} ({}) removed", render(ty)));
        }
    }
    if changes.is_empty() {
        "its schema changes".to_string()
    } else {
        changes.join(", ")
    }
}

/// Avro names are `[A-Za-z_][A-Za-z0-9_]*`; anything else becomes `_`, as
/// Debezium's `avro` field-name adjustment does.
pub fn avro_name(s: &str) -> String {
    let mut out: String = s
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '_' {
                c
            } else {
                '_'
            }
        })
        .collect();
    if out.is_empty() || out.starts_with(|c: char| c.is_ascii_digit()) {
        out.insert(0, '_');
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn table() -> TableSchema {
        let col = |name: &str, ty, key| Column {
            name: name.into(),
            ty,
            key,
        };
        TableSchema {
            schema: "public".into(),
            table: "orders".into(),
            columns: vec![
                col("id", PgType::Int64, true),
                col(
                    "amount",
                    PgType::from_oid(1700, ((12 << 16) | 2) + 4),
                    false,
                ),
                col("ratio", PgType::from_oid(1700, -1), false),
                col("ratio2", PgType::from_oid(1700, -1), false),
                col("tags", PgType::from_oid(1009, -1), false),
                col("at", PgType::from_oid(1114, 3), false),
                col("doc", PgType::from_oid(3802, -1), false),
            ],
        }
    }

    #[test]
    fn oid_mapping() {
        assert_eq!(
            PgType::from_oid(1700, ((10 << 16) | 3) + 4),
            PgType::Numeric {
                precision: Some(10),
                scale: Some(3)
            }
        );
        assert_eq!(
            PgType::from_oid(1114, -1),
            PgType::Timestamp { micros: true }
        );
        assert_eq!(
            PgType::from_oid(1114, 3),
            PgType::Timestamp { micros: false }
        );
        assert_eq!(
            PgType::from_oid(1007, -1),
            PgType::Array(Box::new(PgType::Int32))
        );
        assert_eq!(PgType::from_oid(123_456, -1), PgType::Other);
    }

    #[test]
    fn schemas_are_valid_avro() {
        for mode in [
            DecimalHandling::String,
            DecimalHandling::Precise,
            DecimalHandling::Double,
        ] {
            let t = table();
            let value = t.value_schema("shop", mode).to_string();
            apache_avro::Schema::parse_str(&value).unwrap_or_else(|e| panic!("{e}: {value}"));
            let key = t.key_schema("shop", mode).unwrap().to_string();
            apache_avro::Schema::parse_str(&key).unwrap();
        }
    }

    #[test]
    fn added_column_is_backward_compatible() {
        let old = table();
        let mut new = table();
        new.columns.push(Column {
            name: "note".into(),
            ty: PgType::Text,
            key: false,
        });
        let v = new.value_schema("shop", DecimalHandling::String);
        let before = &v["fields"][0]["type"][1]["fields"];
        let last = before.as_array().unwrap().last().unwrap();
        assert_eq!(last["name"], "note");
        assert_eq!(last["default"], Json::Null);
        assert_ne!(v, old.value_schema("shop", DecimalHandling::String));
    }

    #[test]
    fn negative_numeric_scale() {
        // numeric(3, -2): typmod = ((3 << 16) | (-2 & 0x7ff)) + 4
        let t = PgType::from_oid(1700, ((3 << 16) | (-2i32 & 0x7ff)) + 4);
        assert_eq!(
            t,
            PgType::Numeric {
                precision: Some(3),
                scale: Some(-2)
            }
        );
        let mut named = HashSet::new();
        let a = avro_type(&t, DecimalHandling::Precise, &mut named);
        assert_eq!(
            (a["scale"].clone(), a["precision"].clone()),
            (json!(0), json!(5))
        );
    }

    #[test]
    fn multi_dimensional_arrays_are_text() {
        assert_eq!(PgType::from_column(1007, -1, 2), PgType::Other);
        assert_eq!(
            PgType::from_column(1007, -1, 1),
            PgType::Array(Box::new(PgType::Int32))
        );
    }

    #[test]
    fn colliding_names_and_changes_are_named() {
        let mut t = table();
        t.columns.push(Column {
            name: "ratio-2".into(),
            ty: PgType::Text,
            key: false,
        });
        t.columns.push(Column {
            name: "ratio_2".into(),
            ty: PgType::Text,
            key: false,
        });
        assert_eq!(
            t.avro_name_collision(),
            Some(("ratio-2".into(), "ratio_2".into(), "ratio_2".into()))
        );
        let old = table().value_schema("shop", DecimalHandling::String);
        let mut changed = table();
        changed.columns[5].ty = PgType::Text;
        let new = changed.value_schema("shop", DecimalHandling::String);
        assert_eq!(
            describe_change(&old, &new),
            "column \"at\" changes from io.debezium.time.Timestamp (optional) to string (optional)"
        );
    }

    #[test]
    fn transaction_schemas_are_valid_avro() {
        apache_avro::Schema::parse_str(&transaction_key_schema().to_string()).unwrap();
        apache_avro::Schema::parse_str(&transaction_value_schema().to_string()).unwrap();
    }

    #[test]
    fn money_hstore_bits_and_point_map_as_debezium() {
        assert_eq!(
            PgType::from_oid(790, -1),
            PgType::Money { fraction_digits: 2 }
        );
        assert_eq!(PgType::from_oid(1560, 1), PgType::Bool);
        assert_eq!(PgType::from_oid(1562, 1), PgType::Bool);
        assert_eq!(PgType::from_oid(1560, 12), PgType::Bits { length: 12 });
        assert_eq!(
            PgType::from_oid(1562, -1),
            PgType::Bits {
                length: i32::MAX as u32
            }
        );
        assert_eq!(PgType::from_oid(600, -1), PgType::Point);
        assert_eq!(
            PgType::from_catalog(16_385, -1, 0, "hstore"),
            PgType::Hstore { json: false }
        );
        assert_eq!(
            PgType::from_catalog(16_385, -1, 0, "hstore").with_modes(true, 3),
            PgType::Hstore { json: true }
        );
        assert_eq!(
            PgType::from_oid(790, -1).with_modes(true, 3),
            PgType::Money { fraction_digits: 3 }
        );
        let mut named = HashSet::new();
        let money = avro_type(
            &PgType::Money { fraction_digits: 2 },
            DecimalHandling::Precise,
            &mut named,
        );
        assert_eq!(
            (money["scale"].clone(), money["precision"].clone()),
            (json!(2), json!(64))
        );
        assert_eq!(
            avro_type(
                &PgType::Hstore { json: false },
                DecimalHandling::Precise,
                &mut named
            ),
            json!({"type": "map", "values": ["null", "string"]})
        );
        assert_eq!(
            avro_type(
                &PgType::Bits { length: 12 },
                DecimalHandling::Precise,
                &mut named
            )["connect.parameters"]["length"],
            "12"
        );
        // Two point columns: the record is defined once, then referred to.
        let col = |name: &str, ty| Column {
            name: name.into(),
            ty,
            key: false,
        };
        let t = TableSchema {
            schema: "public".into(),
            table: "geo".into(),
            columns: vec![
                Column {
                    name: "id".into(),
                    ty: PgType::Int32,
                    key: true,
                },
                col("p", PgType::Point),
                col("q", PgType::Point),
                col("h", PgType::Hstore { json: false }),
                col("hj", PgType::Hstore { json: true }),
                col("m", PgType::Money { fraction_digits: 2 }),
                col("b", PgType::Bits { length: 3 }),
            ],
        };
        for mode in [
            DecimalHandling::String,
            DecimalHandling::Precise,
            DecimalHandling::Double,
        ] {
            let value = t.value_schema("shop", mode).to_string();
            apache_avro::Schema::parse_str(&value).unwrap_or_else(|e| panic!("{e}: {value}"));
        }
    }

    #[test]
    fn names_are_sanitised() {
        assert_eq!(avro_name("order-lines"), "order_lines");
        assert_eq!(avro_name("1st"), "_1st");
    }
}
