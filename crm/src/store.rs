//! Customer queries. Every change is written together with the events it causes (see
//! [`events_for_change`]) in one transaction, so the outbox never misses or invents one.

use chrono::Utc;
use sqlx::{PgPool, Postgres, Transaction};
use topics::events::{ConnectionMandateChanged, MandateLevel};
use uuid::Uuid;

use crate::domain::{Customer, CustomerDetails};
use crate::outbox;

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
        Ok(Customer {
            id: row.id,
            details: CustomerDetails {
                first_name: row.first_name,
                last_name: row.last_name,
                city: row.city,
                connection_id: row.connection_id,
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
    .bind(&details.connection_id)
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
pub async fn replace(
    pool: &PgPool,
    id: i64,
    details: CustomerDetails,
) -> Result<Option<Customer>, sqlx::Error> {
    let mut tx = pool.begin().await?;
    // The row lock orders concurrent PUTs of one customer, so each computes its events
    // against the state the previous one committed.
    let Some(before) = sqlx::query_as::<_, CustomerRow>(&format!(
        "SELECT {COLUMNS} FROM customers WHERE id = $1 FOR UPDATE"
    ))
    .bind(id)
    .fetch_optional(&mut *tx)
    .await?
    else {
        return Ok(None);
    };
    let before = Customer::try_from(before)?;
    let row = sqlx::query_as::<_, CustomerRow>(&format!(
        "UPDATE customers SET first_name = $2, last_name = $3, city = $4, connection_id = $5,
                connection_mandate = $6, updated_at = now()
         WHERE id = $1 RETURNING {COLUMNS}"
    ))
    .bind(id)
    .bind(&details.first_name)
    .bind(&details.last_name)
    .bind(&details.city)
    .bind(&details.connection_id)
    .bind(i16::from(details.connection_mandate.level()))
    .fetch_one(&mut *tx)
    .await?;
    let after = Customer::try_from(row)?;
    let events = events_for_change(id, Some(&before.details), &after.details);
    outbox::enqueue(&mut tx, &events).await?;
    tx.commit().await?;
    Ok(Some(after))
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
    .bind(&details.connection_id)
    .bind(i16::from(details.connection_mandate.level()))
    .execute(&mut **tx)
    .await?;
    Ok(())
}

/// The events a change of customer `id` from `before` (`None`: a new customer) to `after`
/// must publish, in publishing order. A change of name or city publishes nothing: the topic
/// is about mandates on connections.
pub fn events_for_change(
    customer_id: i64,
    before: Option<&CustomerDetails>,
    after: &CustomerDetails,
) -> Vec<ConnectionMandateChanged> {
    let occurred_at = Utc::now().timestamp_millis();
    let event = |connection_id: &str, mandate| ConnectionMandateChanged {
        event_id: Uuid::new_v4(),
        connection_id: connection_id.to_owned(),
        customer_id,
        mandate,
        occurred_at,
    };
    match before {
        None => vec![event(&after.connection_id, after.connection_mandate)],
        // The customer left the old connection: consumers must stop treating it as covered
        // by this customer's mandate before they learn about the new one.
        Some(before) if before.connection_id != after.connection_id => vec![
            event(&before.connection_id, MandateLevel::None),
            event(&after.connection_id, after.connection_mandate),
        ],
        Some(before) if before.connection_mandate != after.connection_mandate => {
            vec![event(&after.connection_id, after.connection_mandate)]
        }
        Some(_) => Vec::new(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn details(city: &str, connection_id: &str, mandate: MandateLevel) -> CustomerDetails {
        CustomerDetails {
            first_name: "Jan".to_owned(),
            last_name: "Janssens".to_owned(),
            city: city.to_owned(),
            connection_id: connection_id.to_owned(),
            connection_mandate: mandate,
        }
    }

    fn summary(events: &[ConnectionMandateChanged]) -> Vec<(&str, MandateLevel, i64)> {
        events
            .iter()
            .map(|e| (e.connection_id.as_str(), e.mandate, e.customer_id))
            .collect()
    }

    #[test]
    fn a_new_customer_announces_its_mandate() {
        let after = details("Gent", "A", MandateLevel::BillingOnly);
        assert_eq!(
            summary(&events_for_change(1, None, &after)),
            [("A", MandateLevel::BillingOnly, 1)]
        );
    }

    #[test]
    fn a_city_change_publishes_nothing() {
        let before = details("Gent", "A", MandateLevel::RealTime);
        let after = details("Brugge", "A", MandateLevel::RealTime);
        assert!(events_for_change(1, Some(&before), &after).is_empty());
    }

    #[test]
    fn a_mandate_change_publishes_one_event() {
        let before = details("Gent", "A", MandateLevel::RealTime);
        let after = details("Gent", "A", MandateLevel::None);
        assert_eq!(
            summary(&events_for_change(1, Some(&before), &after)),
            [("A", MandateLevel::None, 1)]
        );
    }

    #[test]
    fn moving_connection_revokes_the_old_one_first() {
        let before = details("Gent", "A", MandateLevel::RealTime);
        let after = details("Gent", "B", MandateLevel::RealTime);
        let events = events_for_change(1, Some(&before), &after);
        assert_eq!(
            summary(&events),
            [
                ("A", MandateLevel::None, 1),
                ("B", MandateLevel::RealTime, 1)
            ]
        );
        assert_ne!(events[0].event_id, events[1].event_id);
    }
}
