//! The database a write-side service keeps its data and its outbox in: created on the
//! configured server at first start, then migrated. Every service (crm, commerce's six,
//! orderflow's components) prepares its database through [`prepare`].

use std::time::Duration;

use sqlx::migrate::Migrator;
use sqlx::postgres::{PgConnectOptions, PgPoolOptions};
use sqlx::{Connection, PgConnection, PgPool};

use crate::error::{Error, Result};

/// How long a pool waits for a free connection before the call fails.
const ACQUIRE_TIMEOUT: Duration = Duration::from_secs(10);

/// Creates `name` on `server` unless it exists, connects a pool of `max_connections` to it
/// and runs `migrator`.
pub async fn prepare(
    server: &PgConnectOptions,
    name: &str,
    migrator: &Migrator,
    max_connections: u32,
) -> Result<PgPool> {
    create_if_missing(server, name).await?;
    let pool = PgPoolOptions::new()
        .max_connections(max_connections)
        .acquire_timeout(ACQUIRE_TIMEOUT)
        .connect_with(server.clone().database(name))
        .await?;
    migrator.run(&pool).await.map_err(|source| Error::Migrate {
        database: name.to_owned(),
        source,
    })?;
    Ok(pool)
}

/// Creates `name` on `server` unless it exists; another instance creating it at the same
/// moment is fine.
pub async fn create_if_missing(server: &PgConnectOptions, name: &str) -> Result<()> {
    // The name is spliced into DDL (identifiers cannot be bound), so it is held to a
    // conservative alphabet instead of being quoted and escaped.
    if name.is_empty()
        || !name
            .chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_')
    {
        return Err(Error::DatabaseName(name.to_owned()));
    }
    let mut conn = PgConnection::connect_with(server).await?;
    let exists: bool =
        sqlx::query_scalar("SELECT EXISTS (SELECT 1 FROM pg_database WHERE datname = $1)")
            .bind(name)
            .fetch_one(&mut conn)
            .await?;
    if !exists {
        match sqlx::query(&format!("CREATE DATABASE \"{name}\""))
            .execute(&mut conn)
            .await
        {
            Ok(_) => tracing::info!(database = %name, "created the database"),
            // Another instance created it between the check and here.
            Err(sqlx::Error::Database(e))
                if matches!(e.code().as_deref(), Some("42P04") | Some("23505")) => {}
            Err(e) => return Err(e.into()),
        }
    }
    conn.close().await.ok();
    Ok(())
}
