//! The CRM against the real Postgres, Kafka and schema registry (`scripts/infra up`). Every
//! test runs its own app on 127.0.0.1:0 with a fresh database; tests that check events use
//! connection ids of their own and read `connection-mandates` from the offsets it had before
//! they acted.

mod customers;
mod events;
mod helpers;
mod kafka_outage;
mod ordering;
mod seed;
