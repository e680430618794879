//! Customer queries. Every change is written together with the events it causes (the rule is
//! [`events_for_change`]) in one transaction, so the outbox never misses or invents one.

use std::sync::LazyLock;

use sqlx::{PgPool, Postgres, Transaction};
use topics::events::{ConnectionId, MandateLevel};

use crate::domain::{events_for_change, Customer, CustomerDetails};
use crate::outbox::{self, OUTBOX};

const COLUMNS: &str = "id, first_name, last_name, city, connection_id, connection_mandate";

#[derive(sqlx::FromRow)]
struct CustomerRow {
    id: i64,
    first_name: String,
    last_name: String,
    city: String,
    connection_id: String,
    connection_mandate: i16,
}

impl TryFrom<CustomerRow> for Customer {
    type Error = sqlx::Error;

    fn try_from(row: CustomerRow) -> Result<Self, sqlx::Error> {
        let connection_mandate = u8::try_from(row.connection_mandate)
            .ok()
            .and_then(MandateLevel::from_level)
            .ok_or_else(|| {
                sqlx::Error::Decode(
                    format!(
                        "customer {} has mandate {}, not 0-2",
                        row.id, row.connection_mandate
                    )
                    .into(),
                )
            })?;
        let connection_id = ConnectionId::parse(&row.connection_id)
            .map_err(|e| sqlx::Error::Decode(format!("customer {}: {e}", row.id).into()))?;
        Ok(Customer {
            id: row.id,
            details: CustomerDetails {
                first_name: row.first_name,
                last_name: row.last_name,
                city: row.city,
                connection_id,
                connection_mandate,
            },
        })
    }
}

pub async fn get(pool: &PgPool, id: i64) -> Result<Option<Customer>, sqlx::Error> {
    sqlx::query_as::<_, CustomerRow>(&format!("SELECT {COLUMNS} FROM customers WHERE id = $1"))
        .bind(id)
        .fetch_optional(pool)
        .await?
        .map(Customer::try_from)
        .transpose()
}

/// One page of customers in id order, and how many customers there are in all.
pub async fn list(
    pool: &PgPool,
    page: u32,
    page_size: u32,
) -> Result<(Vec<Customer>, i64), sqlx::Error> {
    let offset = i64::from(page.saturating_sub(1)) * i64::from(page_size);
    let rows = sqlx::query_as::<_, CustomerRow>(&format!(
        "SELECT {COLUMNS} FROM customers ORDER BY id LIMIT $1 OFFSET $2"
    ))
    .bind(i64::from(page_size))
    .bind(offset)
    .fetch_all(pool)
    .await?;
    let total: i64 = sqlx::query_scalar("SELECT count(*) FROM customers")
        .fetch_one(pool)
        .await?;
    let customers = rows
        .into_iter()
        .map(Customer::try_from)
        .collect::<Result<_, _>>()?;
    Ok((customers, total))
}

/// Creates a customer under a fresh id and announces its mandate.
pub async fn create(pool: &PgPool, details: CustomerDetails) -> Result<Customer, sqlx::Error> {
    let mut tx = pool.begin().await?;
    let row = sqlx::query_as::<_, CustomerRow>(&format!(
        "INSERT INTO customers (first_name, last_name, city, connection_id, connection_mandate)
         VALUES ($1, $2, $3, $4, $5) RETURNING {COLUMNS}"
    ))
    .bind(&details.first_name)
    .bind(&details.last_name)
    .bind(&details.city)
    .bind(details.connection_id.as_str())
    .bind(i16::from(details.connection_mandate.level()))
    .fetch_one(&mut *tx)
    .await?;
    let customer = Customer::try_from(row)?;
    outbox::enqueue(
        &mut tx,
        &events_for_change(customer.id, None, &customer.details),
    )
    .await?;
    tx.commit().await?;
    Ok(customer)
}

/// Replaces every field of customer `id`; `None` when there is no such customer.
///
/// One statement (one round trip, no lock held across a round trip to the client): it locks
/// the row, updates it, and writes the events [`events_for_change`] implies, decided in SQL
/// from the row as it was: leaving the old connection when the connection changed, then the
/// new mandate when the connection or the mandate changed. The row lock orders concurrent
/// PUTs of one customer, so each decides against the state the previous one committed.
pub async fn replace(
    pool: &PgPool,
    id: i64,
    details: CustomerDetails,
) -> Result<Option<Customer>, sqlx::Error> {
    static REPLACE: LazyLock<String> = LazyLock::new(|| {
        OUTBOX.statement(
            "prior AS MATERIALIZED (
                 SELECT id, connection_id, connection_mandate FROM customers
                 WHERE id = $1 FOR UPDATE
             ),
             changed AS (
                 UPDATE customers c SET first_name = $2, last_name = $3, city = $4,
                        connection_id = $5, connection_mandate = $6, updated_at = now()
                 FROM prior b WHERE c.id = b.id
                 RETURNING c.id, c.first_name, c.last_name, c.city, c.connection_id,
                           c.connection_mandate, b.connection_id AS before_connection_id,
                           b.connection_mandate AS before_mandate
             )",
            "SELECT topic, key, event_id, payload,
                    $12::text AS traceparent, $13::text AS tracestate
             FROM (
                 SELECT 1 AS n, $7::text AS topic, before_connection_id AS key,
                        $8::uuid AS event_id,
                        jsonb_set($9::jsonb, '{connection_id}', to_jsonb(before_connection_id))
                            AS payload
                 FROM changed WHERE before_connection_id <> connection_id
                 UNION ALL
                 SELECT 2, $7::text, connection_id, $10::uuid, $11::jsonb
                 FROM changed
                 WHERE before_connection_id <> connection_id
                    OR before_mandate <> connection_mandate
             ) e ORDER BY n",
            &format!("SELECT {COLUMNS} FROM changed"),
        )
    });
    // What leaving a connection and the new mandate would publish; the statement keeps those
    // the change implies (the left connection's id is the row's, filled in by the statement).
    let announce = |mandate| {
        let on_connection = CustomerDetails {
            connection_mandate: mandate,
            ..details.clone()
        };
        events_for_change(id, None, &on_connection)
            .pop()
            .expect("a new customer publishes its mandate")
    };
    let rows = outbox::rows(&[
        announce(MandateLevel::None),
        announce(details.connection_mandate),
    ])?;
    let (leave, join) = (&rows[0], &rows[1]);
    let (traceparent, tracestate) = ::outbox::write::trace_context();
    let row = sqlx::query_as::<_, CustomerRow>(&REPLACE)
        .bind(id)
        .bind(&details.first_name)
        .bind(&details.last_name)
        .bind(&details.city)
        .bind(details.connection_id.as_str())
        .bind(i16::from(details.connection_mandate.level()))
        .bind(&join.topic)
        .bind(leave.event_id)
        .bind(&leave.payload)
        .bind(join.event_id)
        .bind(&join.payload)
        .bind(traceparent)
        .bind(tracestate)
        .fetch_optional(pool)
        .await?;
    row.map(Customer::try_from).transpose()
}

/// Inserts a customer under the id it has in the seed file.
pub(crate) async fn insert_with_id(
    tx: &mut Transaction<'_, Postgres>,
    customer: &Customer,
) -> Result<(), sqlx::Error> {
    let details = &customer.details;
    sqlx::query(
        "INSERT INTO customers (id, first_name, last_name, city, connection_id, connection_mandate)
         VALUES ($1, $2, $3, $4, $5, $6)",
    )
    .bind(customer.id)
    .bind(&details.first_name)
    .bind(&details.last_name)
    .bind(&details.city)
    .bind(details.connection_id.as_str())
    .bind(i16::from(details.connection_mandate.level()))
    .execute(&mut **tx)
    .await?;
    Ok(())
}
