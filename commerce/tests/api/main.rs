//! The commerce services against the real PostgreSQL (and Kafka + registry for the event
//! test), `scripts/infra up`. Every test starts the services it needs on 127.0.0.1:0 with
//! databases of its own, dropped at the end.

mod concurrency;
mod crash;
mod customers;
mod delivery;
mod events;
mod helpers;
mod metrics;
mod orders;
mod people;
mod products;
mod reviews;
mod seed;
mod traces;
mod users;
mod users_query;
