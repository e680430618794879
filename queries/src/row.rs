//! Result rows: a query's columns as declared ([`Column`]) and a row's values ([`Cell`]).

use std::cmp::Ordering;

use serde::{Deserialize, Serialize};

/// The type of a result column, and so of its Avro field.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ColumnType {
    /// Avro `long`.
    Long,
    /// Avro `string`.
    Text,
    /// Avro `["null", "double"]`.
    OptionalDouble,
    /// Avro `long` with logical type `timestamp-millis`.
    TimestampMillis,
}

/// One result column: its name (the Avro field and the JSON property) and type.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Column {
    pub name: &'static str,
    pub ty: ColumnType,
}

impl Column {
    pub const fn long(name: &'static str) -> Self {
        Self {
            name,
            ty: ColumnType::Long,
        }
    }
    pub const fn text(name: &'static str) -> Self {
        Self {
            name,
            ty: ColumnType::Text,
        }
    }
    pub const fn optional_double(name: &'static str) -> Self {
        Self {
            name,
            ty: ColumnType::OptionalDouble,
        }
    }
    pub const fn timestamp(name: &'static str) -> Self {
        Self {
            name,
            ty: ColumnType::TimestampMillis,
        }
    }
}

/// One value of a result row. Doubles compare by `total_cmp`, so rows are `Ord` (differential
/// dataflow sorts and consolidates them) and a value read back from Avro equals the one written.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub enum Cell {
    Null,
    Long(i64),
    Double(f64),
    Text(String),
}

impl Cell {
    fn rank(&self) -> u8 {
        match self {
            Cell::Null => 0,
            Cell::Long(_) => 1,
            Cell::Double(_) => 2,
            Cell::Text(_) => 3,
        }
    }

    /// The value as JSON (the services' and the dashboard's view of a row).
    pub fn to_json(&self) -> serde_json::Value {
        match self {
            Cell::Null => serde_json::Value::Null,
            Cell::Long(v) => (*v).into(),
            Cell::Double(v) => (*v).into(),
            Cell::Text(v) => v.clone().into(),
        }
    }
}

impl Ord for Cell {
    fn cmp(&self, other: &Self) -> Ordering {
        match (self, other) {
            (Cell::Long(a), Cell::Long(b)) => a.cmp(b),
            (Cell::Double(a), Cell::Double(b)) => a.total_cmp(b),
            (Cell::Text(a), Cell::Text(b)) => a.cmp(b),
            _ => self.rank().cmp(&other.rank()),
        }
    }
}

impl PartialOrd for Cell {
    fn partial_cmp(&self, other: &Self) -> Option<Ordering> {
        Some(self.cmp(other))
    }
}

impl PartialEq for Cell {
    fn eq(&self, other: &Self) -> bool {
        self.cmp(other) == Ordering::Equal
    }
}

impl Eq for Cell {}

impl std::hash::Hash for Cell {
    fn hash<H: std::hash::Hasher>(&self, state: &mut H) {
        self.rank().hash(state);
        match self {
            Cell::Null => {}
            Cell::Long(v) => v.hash(state),
            Cell::Double(v) => v.to_bits().hash(state),
            Cell::Text(v) => v.hash(state),
        }
    }
}

/// A result row: one [`Cell`] per declared column, in declaration order.
pub type Row = Vec<Cell>;

/// A row as a JSON object keyed by the column names.
pub fn row_json(columns: &[Column], row: &[Cell]) -> serde_json::Value {
    let map = columns
        .iter()
        .zip(row)
        .map(|(c, v)| (c.name.to_owned(), v.to_json()))
        .collect();
    serde_json::Value::Object(map)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn doubles_are_ordered_and_equal_to_themselves() {
        assert_eq!(Cell::Double(4.5), Cell::Double(4.5));
        assert!(Cell::Double(1.0) < Cell::Double(2.0));
        assert!(Cell::Null < Cell::Long(0));
        assert_ne!(Cell::Long(1), Cell::Text("1".into()));
    }
}
