//! The source tables as the queries see them: the columns they use of the commerce databases'
//! `products`, `customers`, `orders` and `reviews`, parsed at the edge from the connector's
//! Avro rows (numeric as string, timestamptz as an ISO-8601 string, uuid as a string).

use std::collections::HashMap;

use apache_avro::types::Value;
use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};

/// Which source table a change is about.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Table {
    Products,
    Customers,
    Orders,
    Reviews,
}

impl Table {
    pub const ALL: [Table; 4] = [
        Table::Products,
        Table::Customers,
        Table::Orders,
        Table::Reviews,
    ];

    pub fn name(self) -> &'static str {
        match self {
            Table::Products => "products",
            Table::Customers => "customers",
            Table::Orders => "orders",
            Table::Reviews => "reviews",
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct Product {
    pub id: i64,
    pub name: String,
    /// `numeric(12, 2)` as the connector writes it (`decimal_handling = "string"`).
    pub price: String,
    pub stock: i64,
}

/// A customer's tier; the queries care whether it is Gold.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub enum Tier {
    Gold,
    Silver,
    Bronze,
}

#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct Customer {
    pub id: i64,
    pub name: String,
    pub tier: Tier,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub enum OrderStatus {
    Pending,
    Processing,
    Shipped,
    Delivered,
    Cancelled,
    Failed,
}

#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct Order {
    /// The order's UUID as text.
    pub id: String,
    pub customer_id: i64,
    pub product_id: i64,
    pub quantity: i64,
    pub status: OrderStatus,
    /// `created_at` in milliseconds since the Unix epoch.
    pub created_ms: i64,
}

#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct Review {
    pub id: i64,
    pub product_id: i64,
    pub rating: i64,
}

/// A row of any source table.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum SourceRow {
    Product(Product),
    Customer(Customer),
    Order(Order),
    Review(Review),
}

/// A source row's primary key.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Pk {
    Id(i64),
    Uuid(String),
}

impl SourceRow {
    pub fn pk(&self) -> Pk {
        match self {
            SourceRow::Product(p) => Pk::Id(p.id),
            SourceRow::Customer(c) => Pk::Id(c.id),
            SourceRow::Order(o) => Pk::Uuid(o.id.clone()),
            SourceRow::Review(r) => Pk::Id(r.id),
        }
    }
}

/// A record's fields by name, with nullable unions unwrapped.
pub struct Fields<'a>(HashMap<&'a str, &'a Value>);

impl<'a> Fields<'a> {
    pub fn of(value: &'a Value) -> Result<Self> {
        match unwrap_union(value) {
            Value::Record(fields) => Ok(Self(
                fields
                    .iter()
                    .map(|(k, v)| (k.as_str(), unwrap_union(v)))
                    .collect(),
            )),
            other => Err(Error::Source(format!("expected a record, got {other:?}"))),
        }
    }

    pub fn get(&self, name: &str) -> Option<&'a Value> {
        self.0.get(name).copied().filter(|v| **v != Value::Null)
    }

    fn required(&self, name: &str) -> Result<&'a Value> {
        self.get(name)
            .ok_or_else(|| Error::Source(format!("column {name} is missing or null")))
    }

    pub fn long(&self, name: &str) -> Result<i64> {
        match self.required(name)? {
            Value::Long(v) => Ok(*v),
            Value::Int(v) => Ok(i64::from(*v)),
            other => Err(Error::Source(format!(
                "column {name}: not an integer: {other:?}"
            ))),
        }
    }

    pub fn text(&self, name: &str) -> Result<String> {
        match self.required(name)? {
            Value::String(v) | Value::Enum(_, v) => Ok(v.clone()),
            Value::Uuid(v) => Ok(v.to_string()),
            other => Err(Error::Source(format!("column {name}: not text: {other:?}"))),
        }
    }

    /// A `ZonedTimestamp` (ISO-8601) or a millisecond timestamp, as epoch milliseconds.
    pub fn timestamp_ms(&self, name: &str) -> Result<i64> {
        match self.required(name)? {
            Value::String(v) => chrono::DateTime::parse_from_rfc3339(v)
                .map(|t| t.timestamp_millis())
                .map_err(|e| Error::Source(format!("column {name}: {v:?} is not RFC 3339: {e}"))),
            Value::Long(v) | Value::TimestampMillis(v) => Ok(*v),
            Value::TimestampMicros(v) => Ok(v.div_euclid(1000)),
            other => Err(Error::Source(format!(
                "column {name}: not a timestamp: {other:?}"
            ))),
        }
    }
}

fn unwrap_union(value: &Value) -> &Value {
    match value {
        Value::Union(_, inner) => inner,
        other => other,
    }
}

fn parse<T: for<'de> Deserialize<'de>>(what: &str, text: &str) -> Result<T> {
    serde_json::from_value(serde_json::Value::String(text.to_owned()))
        .map_err(|_| Error::Source(format!("{what} {text:?} is not one the queries know")))
}

impl Table {
    /// The full row from a change's `after` (or `before`) record.
    pub fn row(self, fields: &Fields<'_>) -> Result<SourceRow> {
        Ok(match self {
            Table::Products => SourceRow::Product(Product {
                id: fields.long("id")?,
                name: fields.text("name")?,
                price: fields.text("price")?,
                stock: fields.long("stock")?,
            }),
            Table::Customers => SourceRow::Customer(Customer {
                id: fields.long("id")?,
                name: fields.text("name")?,
                tier: parse("tier", &fields.text("tier")?)?,
            }),
            Table::Orders => SourceRow::Order(Order {
                id: fields.text("id")?,
                customer_id: fields.long("customer_id")?,
                product_id: fields.long("product_id")?,
                quantity: fields.long("quantity")?,
                status: parse("status", &fields.text("status")?)?,
                created_ms: fields.timestamp_ms("created_at")?,
            }),
            Table::Reviews => SourceRow::Review(Review {
                id: fields.long("id")?,
                product_id: fields.long("product_id")?,
                rating: fields.long("rating")?,
            }),
        })
    }

    /// The primary key from a delete's `before` (which may hold the key columns only).
    pub fn pk(self, fields: &Fields<'_>) -> Result<Pk> {
        Ok(match self {
            Table::Orders => Pk::Uuid(fields.text("id")?),
            _ => Pk::Id(fields.long("id")?),
        })
    }
}
