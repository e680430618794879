//! A component's database: created on the configured server at first start, then migrated.

use std::time::Duration;

use anyhow::Context;
use sqlx::migrate::Migrator;
use sqlx::postgres::{PgConnectOptions, PgPoolOptions};
use sqlx::{Connection, PgConnection, PgPool};

/// Creates `name` on the server unless it exists, connects a pool and runs `migrator`.
pub async fn prepare(
    server: &PgConnectOptions,
    name: &str,
    migrator: &Migrator,
    max_connections: u32,
) -> anyhow::Result<PgPool> {
    anyhow::ensure!(
        !name.is_empty()
            && name
                .chars()
                .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_'),
        "database name {name:?} must consist of a-z, 0-9 and _"
    );
    let mut conn = PgConnection::connect_with(server)
        .await
        .context("connecting to the Postgres server (postgres_url)")?;
    let exists: bool =
        sqlx::query_scalar("SELECT EXISTS (SELECT 1 FROM pg_database WHERE datname = $1)")
            .bind(name)
            .fetch_one(&mut conn)
            .await?;
    if !exists {
        // The name is held to [a-z0-9_] above: identifiers cannot be bound.
        match sqlx::query(&format!("CREATE DATABASE \"{name}\""))
            .execute(&mut conn)
            .await
        {
            Ok(_) => tracing::info!(database = %name, "created the database"),
            Err(sqlx::Error::Database(e))
                if matches!(e.code().as_deref(), Some("42P04") | Some("23505")) => {}
            Err(e) => return Err(e).with_context(|| format!("creating database {name}")),
        }
    }
    conn.close().await.ok();
    let pool = PgPoolOptions::new()
        .max_connections(max_connections)
        .acquire_timeout(Duration::from_secs(10))
        .connect_with(server.clone().database(name))
        .await
        .with_context(|| format!("connecting to database {name}"))?;
    migrator
        .run(&pool)
        .await
        .with_context(|| format!("migrating database {name}"))?;
    Ok(pool)
}
