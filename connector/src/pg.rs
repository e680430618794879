//! PostgreSQL setup and catalog queries over a normal (tokio-postgres)
//! connection: pre-flight checks, publication, slot inspection, and the
//! column lists the schemas are derived from.

use tokio_postgres::{Client, NoTls};

use crate::config::Config;
use crate::error::{Error, Result};
use crate::schema::{Column, PgType, TableSchema};

/// A SQL connection with the pinned session settings
/// ([`crate::config::SESSION_OPTIONS`]).
pub async fn connect(cfg: &Config) -> Result<Client> {
    let (client, conn) = cfg
        .postgres_config()?
        .connect(NoTls)
        .await
        .map_err(Error::PostgresConnect)?;
    tokio::spawn(async move {
        if let Err(e) = conn.await {
            tracing::debug!(error = %e, "PostgreSQL connection closed");
        }
    });
    Ok(client)
}

/// Who the server is, from `IDENTIFY_SYSTEM` on a replication connection: a
/// resumed stream is only meaningful on the same cluster and timeline.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ServerIdentity {
    pub system_id: String,
    pub timeline: u32,
}

impl ServerIdentity {
    /// `None` when `now` is the same server; else what changed, in words.
    pub fn changed(&self, now: &ServerIdentity) -> Option<String> {
        if self.system_id != now.system_id {
            return Some(format!(
                "it is another cluster (system identifier {} at the first connection, {} now)",
                self.system_id, now.system_id
            ));
        }
        if self.timeline != now.timeline {
            return Some(format!(
                "it switched from timeline {} to {} (a failover or point-in-time recovery)",
                self.timeline, now.timeline
            ));
        }
        None
    }
}

/// Runs `IDENTIFY_SYSTEM` on a short-lived walsender connection.
pub async fn identify_system(cfg: &Config) -> Result<ServerIdentity> {
    let url = cfg.replication_url()?;
    let mut conn = pg_walstream::connection::PgReplicationConnection::connect(&url)?;
    let r = conn.identify_system()?;
    let system_id = r.get_value(0, 0);
    let timeline = r.get_value(0, 1).and_then(|t| t.parse().ok());
    match (system_id, timeline) {
        (Some(system_id), Some(timeline)) => Ok(ServerIdentity {
            system_id,
            timeline,
        }),
        _ => Err(Error::Replication(
            "IDENTIFY_SYSTEM returned no system identifier or timeline".into(),
        )),
    }
}

/// `wal_level` must be `logical` for a logical slot to exist at all.
pub fn check_wal_level(level: &str) -> Result<()> {
    if level == "logical" {
        Ok(())
    } else {
        Err(Error::WalLevel(level.to_string()))
    }
}

/// Checks everything that would otherwise fail later with a confusing error.
pub async fn preflight(client: &Client, cfg: &Config) -> Result<()> {
    let row = client.query_one("SHOW wal_level", &[]).await?;
    check_wal_level(row.get::<_, &str>(0))?;

    let row = client
        .query_one(
            "SELECT current_user::text, rolreplication OR rolsuper FROM pg_roles WHERE rolname = current_user",
            &[],
        )
        .await?;
    if !row.get::<_, bool>(1) {
        return Err(Error::NoReplicationPrivilege(row.get(0)));
    }

    for t in cfg.tables.iter().chain(cfg.signal_table()) {
        let row = client
            .query_one("SELECT to_regclass($1)::oid::int8", &[&quote_qualified(t)])
            .await?;
        if row.get::<_, Option<i64>>(0).is_none() {
            return Err(Error::UnknownTable(t.clone()));
        }
    }
    Ok(())
}

/// `schema.table` → `"schema"."table"`.
pub fn quote_qualified(name: &str) -> String {
    let (s, t) = name.split_once('.').unwrap_or(("public", name));
    format!("{}.{}", quote_ident(s), quote_ident(t))
}

pub fn quote_ident(s: &str) -> String {
    format!("\"{}\"", s.replace('"', "\"\""))
}

/// Creates the publication if missing; an existing one is made to cover
/// exactly the configured tables.
pub async fn ensure_publication(client: &Client, cfg: &Config) -> Result<()> {
    let exists = client
        .query_opt(
            "SELECT 1 FROM pg_publication WHERE pubname = $1",
            &[&cfg.publication_name],
        )
        .await?
        .is_some();
    let published = cfg.published();
    let tables = published
        .iter()
        .map(|t| quote_qualified(t))
        .collect::<Vec<_>>()
        .join(", ");
    let name = quote_ident(&cfg.publication_name);
    let sql = match (exists, published.is_empty()) {
        (false, true) => format!("CREATE PUBLICATION {name} FOR ALL TABLES"),
        (false, false) => format!("CREATE PUBLICATION {name} FOR TABLE {tables}"),
        (true, true) => return Ok(()),
        (true, false) => format!("ALTER PUBLICATION {name} SET TABLE {tables}"),
    };
    client.batch_execute(&sql).await?;
    Ok(())
}

/// The tables the publication covers, as `(schema, table)`.
pub async fn published_tables(client: &Client, cfg: &Config) -> Result<Vec<(String, String)>> {
    let rows = client
        .query(
            "SELECT schemaname::text, tablename::text FROM pg_publication_tables WHERE pubname = $1 ORDER BY 1, 2",
            &[&cfg.publication_name],
        )
        .await?;
    Ok(rows.iter().map(|r| (r.get(0), r.get(1))).collect())
}

#[derive(Debug, Clone)]
pub struct SlotInfo {
    pub confirmed_flush_lsn: Option<u64>,
    pub wal_status: Option<String>,
    pub active: bool,
    pub lag_bytes: Option<i64>,
}

pub async fn slot_info(client: &Client, slot: &str) -> Result<Option<SlotInfo>> {
    let row = client
        .query_opt(
            "SELECT confirmed_flush_lsn::text, wal_status, active,
                    pg_wal_lsn_diff(pg_current_wal_lsn(), confirmed_flush_lsn)::int8
             FROM pg_replication_slots WHERE slot_name = $1",
            &[&slot],
        )
        .await?;
    Ok(row.map(|r| SlotInfo {
        confirmed_flush_lsn: r.get::<_, Option<String>>(0).as_deref().and_then(parse_lsn),
        wal_status: r.get(1),
        active: r.get(2),
        lag_bytes: r.get(3),
    }))
}

pub async fn drop_slot(client: &Client, slot: &str) -> Result<()> {
    client
        .execute(
            "SELECT pg_drop_replication_slot(slot_name) FROM pg_replication_slots WHERE slot_name = $1",
            &[&slot],
        )
        .await?;
    Ok(())
}

pub fn parse_lsn(s: &str) -> Option<u64> {
    let (hi, lo) = s.split_once('/')?;
    Some((u64::from_str_radix(hi, 16).ok()? << 32) | u64::from_str_radix(lo, 16).ok()?)
}

pub fn format_lsn(lsn: u64) -> String {
    format!("{:X}/{:X}", lsn >> 32, lsn & 0xffff_ffff)
}

/// Columns of a table as the snapshot reads them (generated columns are not
/// replicated by pgoutput, so they are left out here too).
pub async fn table_schema(client: &Client, schema: &str, table: &str) -> Result<TableSchema> {
    let rows = client
        .query(
            "SELECT a.attname::text,
                    (CASE WHEN t.typtype = 'd' THEN t.typbasetype ELSE a.atttypid END)::int8,
                    CASE WHEN t.typtype = 'd' THEN t.typtypmod ELSE a.atttypmod END,
                    COALESCE(a.attnum = ANY(i.indkey::int2[]), false),
                    CASE WHEN t.typtype = 'd' THEN t.typndims ELSE a.attndims END::int4,
                    bt.typname::text
             FROM pg_attribute a
             JOIN pg_type t ON t.oid = a.atttypid
             JOIN pg_type bt ON bt.oid = CASE WHEN t.typtype = 'd' THEN t.typbasetype ELSE a.atttypid END
             JOIN pg_class c ON c.oid = a.attrelid
             JOIN pg_namespace n ON n.oid = c.relnamespace
             LEFT JOIN pg_index i ON i.indrelid = a.attrelid AND i.indisprimary
             WHERE n.nspname = $1 AND c.relname = $2 AND a.attnum > 0
               AND NOT a.attisdropped AND a.attgenerated = ''
             ORDER BY a.attnum",
            &[&schema, &table],
        )
        .await?;
    if rows.is_empty() {
        return Err(Error::UnknownTable(format!("{schema}.{table}")));
    }
    Ok(TableSchema {
        schema: schema.to_string(),
        table: table.to_string(),
        columns: rows
            .iter()
            .map(|r| Column {
                name: r.get(0),
                ty: PgType::from_catalog(r.get::<_, i64>(1) as u32, r.get(2), r.get(4), r.get(5)),
                key: r.get(3),
            })
            .collect(),
    })
}

/// What pgoutput's Relation message does not say about a table's columns.
#[derive(Debug, Default)]
pub struct RelationFacts {
    /// Primary-key column names (pgoutput's key flags follow REPLICA
    /// IDENTITY, which is not the same as the primary key).
    pub primary_key: Vec<String>,
    /// Declared array dimensions per column (`int[][]` = 2).
    pub dims: std::collections::HashMap<String, i32>,
    /// Columns of a domain type: the base type's OID and type modifier (a
    /// domain prints as its base type, and is mapped as it).
    pub domains: std::collections::HashMap<String, (u32, i32)>,
    /// Each column's type name (the base type's for a domain): extension
    /// types such as `hstore` have no fixed OID.
    pub type_names: std::collections::HashMap<String, String>,
}

pub async fn relation_facts(client: &Client, relid: u32) -> Result<RelationFacts> {
    let rows = client
        .query(
            "SELECT a.attname::text,
                    CASE WHEN t.typtype = 'd' THEN t.typndims ELSE a.attndims END::int4,
                    EXISTS (SELECT 1 FROM pg_index i WHERE i.indrelid = a.attrelid
                              AND i.indisprimary AND a.attnum = ANY(i.indkey::int2[])),
                    CASE WHEN t.typtype = 'd' THEN t.typbasetype::int8 END, t.typtypmod,
                    bt.typname::text
             FROM pg_attribute a JOIN pg_type t ON t.oid = a.atttypid
             JOIN pg_type bt ON bt.oid = CASE WHEN t.typtype = 'd' THEN t.typbasetype ELSE a.atttypid END
             WHERE a.attrelid = $1::int8::oid AND a.attnum > 0 AND NOT a.attisdropped",
            &[&(relid as i64)],
        )
        .await?;
    let mut facts = RelationFacts::default();
    for r in rows {
        let name: String = r.get(0);
        if r.get::<_, bool>(2) {
            facts.primary_key.push(name.clone());
        }
        if let Some(base) = r.get::<_, Option<i64>>(3) {
            facts.domains.insert(name.clone(), (base as u32, r.get(4)));
        }
        facts.type_names.insert(name.clone(), r.get(5));
        facts.dims.insert(name, r.get(1));
    }
    Ok(facts)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lsn_round_trip() {
        assert_eq!(parse_lsn("16/B374D848"), Some(0x16_B374_D848));
        assert_eq!(format_lsn(0x16_B374_D848), "16/B374D848");
    }

    #[test]
    fn wal_level_error_names_the_cause() {
        let e = check_wal_level("replica").unwrap_err().to_string();
        assert!(e.contains("wal_level=replica") && e.contains("wal_level=logical"));
        assert!(!e.contains('\n'));
        check_wal_level("logical").unwrap();
    }

    #[test]
    fn quoting() {
        assert_eq!(quote_qualified("public.Orders"), "\"public\".\"Orders\"");
    }
}
