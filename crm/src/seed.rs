//! The one-time import of the customer CSV. The file only seeds an empty CRM: once an import
//! is recorded in `seed_imports`, state lives in the database and later starts leave it be,
//! so changes made through the API survive restarts.

use std::collections::HashSet;
use std::path::{Path, PathBuf};

use anyhow::Context;
use csv::{ReaderBuilder, StringRecord, Trim};
use sqlx::PgPool;

use crate::domain::{parse_mandate, Customer, CustomerBody};
use crate::outbox;
use crate::store;

const COLUMNS: [&str; 6] = [
    "id",
    "firstName",
    "lastName",
    "city",
    "connectionId",
    "connectionMandate",
];

/// A row left out of the import, and why.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SkippedRow {
    /// The row's line in the file (1-based; the header is line 1).
    pub line: u64,
    pub reason: String,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ImportSummary {
    pub file: PathBuf,
    pub imported: usize,
    pub skipped: Vec<SkippedRow>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SeedOutcome {
    Imported(ImportSummary),
    /// The database was seeded before; the file was not read.
    AlreadySeeded,
}

/// Imports `file` unless the database has been seeded already, all in one transaction: the
/// customers, their mandate events (so the IoT platform learns every seeded mandate) and the
/// `seed_imports` record commit together or not at all.
pub async fn seed_once(pool: &PgPool, file: &Path) -> anyhow::Result<SeedOutcome> {
    let mut tx = pool.begin().await?;
    // Two instances starting at once on an empty database must not both import.
    sqlx::query("LOCK TABLE seed_imports IN EXCLUSIVE MODE")
        .execute(&mut *tx)
        .await?;
    let seeded: bool = sqlx::query_scalar("SELECT EXISTS (SELECT 1 FROM seed_imports)")
        .fetch_one(&mut *tx)
        .await?;
    if seeded {
        tracing::info!(file = %file.display(), "database already seeded; seed file not imported again");
        return Ok(SeedOutcome::AlreadySeeded);
    }

    let text =
        std::fs::read(file).with_context(|| format!("reading the seed file {}", file.display()))?;
    let (customers, skipped) =
        parse(&text).with_context(|| format!("reading the seed file {}", file.display()))?;
    for row in &skipped {
        tracing::warn!(file = %file.display(), line = row.line, reason = %row.reason, "seed row skipped");
    }

    for customer in &customers {
        store::insert_with_id(&mut tx, customer).await?;
        let events = crate::domain::events_for_change(customer.id, None, &customer.details);
        outbox::enqueue_unlocked(&mut tx, &events).await?;
    }
    // API-created customers draw ids from the sequence; start it past the imported ones.
    sqlx::query(
        "SELECT setval(pg_get_serial_sequence('customers', 'id'),
                       COALESCE((SELECT max(id) FROM customers), 0) + 1, false)",
    )
    .execute(&mut *tx)
    .await?;
    let file_name = file.display().to_string();
    sqlx::query(
        "INSERT INTO seed_imports (file_name, rows_imported, rows_skipped) VALUES ($1, $2, $3)",
    )
    .bind(&file_name)
    .bind(i32::try_from(customers.len()).unwrap_or(i32::MAX))
    .bind(i32::try_from(skipped.len()).unwrap_or(i32::MAX))
    .execute(&mut *tx)
    .await?;
    tx.commit().await?;

    let summary = ImportSummary {
        file: file.to_owned(),
        imported: customers.len(),
        skipped,
    };
    tracing::info!(
        file = %file_name,
        imported = summary.imported,
        skipped = summary.skipped.len(),
        "seed file imported"
    );
    Ok(SeedOutcome::Imported(summary))
}

/// Splits the file into valid customers and skipped rows. Only a file that is not a customer
/// CSV at all (wrong header, unreadable) is an error.
pub fn parse(text: &[u8]) -> anyhow::Result<(Vec<Customer>, Vec<SkippedRow>)> {
    let mut reader = ReaderBuilder::new()
        .trim(Trim::All)
        // Rows with a wrong column count are reported per row instead of ending the read.
        .flexible(true)
        .from_reader(text);
    let headers = reader.headers()?.clone();
    if headers.iter().ne(COLUMNS) {
        anyhow::bail!(
            "header is {:?}, expected {}",
            headers.iter().collect::<Vec<_>>(),
            COLUMNS.join(",")
        );
    }

    let mut customers = Vec::new();
    let mut skipped = Vec::new();
    let mut ids = HashSet::new();
    let mut record = StringRecord::new();
    loop {
        let line = reader.position().line();
        match reader.read_record(&mut record) {
            Ok(false) => break,
            Ok(true) => {
                let line = record.position().map_or(line, |p| p.line());
                match customer(&record).and_then(|c| {
                    if ids.insert(c.id) {
                        Ok(c)
                    } else {
                        Err(format!("duplicate id {}", c.id))
                    }
                }) {
                    Ok(c) => customers.push(c),
                    Err(reason) => skipped.push(SkippedRow { line, reason }),
                }
            }
            // Invalid UTF-8 in one row; the reader resumes at the next one.
            Err(e) => skipped.push(SkippedRow {
                line: e.position().map_or(line, |p| p.line()),
                reason: e.to_string(),
            }),
        }
    }
    Ok((customers, skipped))
}

fn customer(record: &StringRecord) -> Result<Customer, String> {
    if record.len() != COLUMNS.len() {
        return Err(format!(
            "{} columns, expected {}",
            record.len(),
            COLUMNS.len()
        ));
    }
    let id = record[0]
        .parse::<i64>()
        .ok()
        .filter(|id| *id > 0)
        .ok_or_else(|| format!("id {:?} is not a positive number", &record[0]))?;
    let body = CustomerBody {
        first_name: record[1].to_owned(),
        last_name: record[2].to_owned(),
        city: record[3].to_owned(),
        connection_id: record[4].to_owned(),
        connection_mandate: parse_mandate(&record[5])?,
    };
    Ok(Customer {
        id,
        details: body.validate()?,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    const FILE: &str = "\
id,firstName,lastName,city,connectionId,connectionMandate
1,Anna,de Vries,Utrecht,871687140000000017,2
2,Bram,Peeters,Gent,871687140000000024,1,extra
x,Carla,Jansen,Delft,871687140000000031,0
4,Daan,Maes,Leuven,871687140000000048,3
5,Eva,Bakker,Breda,,1
1,Fleur,Smit,Zwolle,871687140000000055,0
7,Gert,Wouters,Hasselt,871687140000000062,\"0\"
";

    #[test]
    fn bad_rows_are_skipped_with_their_line_and_reason() {
        let (customers, skipped) = parse(FILE.as_bytes()).unwrap();
        assert_eq!(customers.iter().map(|c| c.id).collect::<Vec<_>>(), [1, 7]);
        let lines: Vec<u64> = skipped.iter().map(|s| s.line).collect();
        assert_eq!(lines, [3, 4, 5, 6, 7], "{skipped:?}");
        let reasons: Vec<&str> = skipped.iter().map(|s| s.reason.as_str()).collect();
        assert!(reasons[0].contains("7 columns"), "{reasons:?}");
        assert!(reasons[1].contains("not a positive number"), "{reasons:?}");
        assert!(reasons[2].contains("0, 1 or 2"), "{reasons:?}");
        assert!(reasons[3].contains("connectionId"), "{reasons:?}");
        assert!(reasons[4].contains("duplicate id 1"), "{reasons:?}");
    }

    #[test]
    fn a_file_that_is_not_a_customer_csv_is_an_error() {
        assert!(parse(b"name,city\nAnna,Utrecht\n").is_err());
    }
}
