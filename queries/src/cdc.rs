//! The connector's change events (Debezium's envelope: `before`, `after`, `op`) as changes of
//! a source table: an upsert of a full row, a delete by primary key, or a truncate.

use apache_avro::types::Value;

use crate::error::{Error, Result};
use crate::model::{Fields, Pk, SourceRow, Table};

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SourceChange {
    /// `c`, `u` or `r` (snapshot read): the row as it is now.
    Upsert(SourceRow),
    /// `d`: the row with this key is gone.
    Delete(Pk),
    /// `t`: every row of the table is gone.
    Truncate,
}

/// The change an envelope describes; `None` for events that change no row.
pub fn change(table: Table, envelope: &Value) -> Result<Option<SourceChange>> {
    let fields = Fields::of(envelope)?;
    let op = fields.text("op")?;
    Ok(match op.as_str() {
        "c" | "u" | "r" => {
            let after = fields
                .get("after")
                .ok_or_else(|| Error::Source(format!("op {op} without after")))?;
            Some(SourceChange::Upsert(table.row(&Fields::of(after)?)?))
        }
        "d" => {
            let before = fields
                .get("before")
                .ok_or_else(|| Error::Source("op d without before".to_owned()))?;
            Some(SourceChange::Delete(table.pk(&Fields::of(before)?)?))
        }
        "t" => Some(SourceChange::Truncate),
        _ => None,
    })
}
