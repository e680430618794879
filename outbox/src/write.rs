//! Writing events: [`Outbox::enqueue`] inside the caller's transaction.

use serde::Serialize;
use sqlx::{Postgres, Transaction};
use topics::events::Event;
use uuid::Uuid;

use crate::error::Result;

/// An event to write to the outbox: the topic and key of its Kafka record, its unique id
/// (the `event-id` header) and its payload as JSON (encoded to record bytes by the relay).
#[derive(Debug, Clone, PartialEq)]
pub struct NewEvent {
    pub topic: String,
    pub key: String,
    pub event_id: Uuid,
    pub payload: serde_json::Value,
}

impl NewEvent {
    pub fn new(
        topic: impl Into<String>,
        key: impl Into<String>,
        event_id: Uuid,
        payload: &impl Serialize,
    ) -> Result<Self> {
        Ok(Self {
            topic: topic.into(),
            key: key.into(),
            event_id,
            payload: serde_json::to_value(payload)?,
        })
    }

    /// A catalogue event (see [`topics::events::Event`]): its topic, key, id and itself.
    pub fn from_event<E: Event>(event: &E) -> Result<Self> {
        Self::new(E::TOPIC.name, event.key(), event.event_id(), event)
    }
}

/// The names one outbox shares between its writers and its relay. Advisory locks are per
/// database: two outboxes in one database need different `relay_lock`s and `key_lock_space`s.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Outbox {
    /// The `LISTEN/NOTIFY` channel writers notify on commit, waking the relay.
    pub channel: &'static str,
    /// The session-level advisory lock (one bigint) held by the one relay of the database.
    pub relay_lock: i64,
    /// The first half of the two-int transaction-scoped advisory lock writers take per key
    /// (the second is `hashtext(key)`); the two-int space never collides with `relay_lock`.
    pub key_lock_space: i32,
}

impl Outbox {
    pub const fn new(channel: &'static str, relay_lock: i64, key_lock_space: i32) -> Self {
        Self {
            channel,
            relay_lock,
            key_lock_space,
        }
    }

    /// Writes `events` to the outbox within `tx` and notifies the relay when `tx` commits.
    ///
    /// Row ids come from a sequence at insert time, not at commit: two transactions writing
    /// the same key could commit in the opposite order of their ids, and the relay could
    /// publish the later id before the earlier one is visible. A transaction-scoped advisory
    /// lock per key serializes them, so per key the id order is the commit order. Keys are
    /// locked in sorted order, so two writers never deadlock on each other's keys; a hash
    /// collision between two keys only serializes two unrelated writers.
    pub async fn enqueue(
        &self,
        tx: &mut Transaction<'_, Postgres>,
        events: &[NewEvent],
    ) -> Result<()> {
        crate::trace::remember(tx).await?;
        let mut keys: Vec<&str> = events.iter().map(|e| e.key.as_str()).collect();
        keys.sort_unstable();
        keys.dedup();
        for key in keys {
            sqlx::query("SELECT pg_advisory_xact_lock($1, hashtext($2))")
                .bind(self.key_lock_space)
                .bind(key)
                .execute(&mut **tx)
                .await?;
        }
        self.enqueue_unlocked(tx, events).await
    }

    /// [`Outbox::enqueue`] without the per-key locks: only for a writer that already excludes
    /// every other writer of these keys (a one-time import under a lock of its own, before the
    /// service serves requests), where hundreds of keys would each hold a slot of the
    /// server's shared lock table until commit.
    pub async fn enqueue_unlocked(
        &self,
        tx: &mut Transaction<'_, Postgres>,
        events: &[NewEvent],
    ) -> Result<()> {
        crate::trace::remember(tx).await?;
        if events.is_empty() {
            return Ok(());
        }
        for event in events {
            sqlx::query(
                "INSERT INTO outbox (topic, key, event_id, payload) VALUES ($1, $2, $3, $4)",
            )
            .bind(&event.topic)
            .bind(&event.key)
            .bind(event.event_id)
            .bind(&event.payload)
            .execute(&mut **tx)
            .await?;
        }
        sqlx::query("SELECT pg_notify($1, '')")
            .bind(self.channel)
            .execute(&mut **tx)
            .await?;
        Ok(())
    }
}
