//! Writing events: [`Outbox::enqueue`] inside the caller's transaction, or
//! [`Outbox::statement`] to write a change and its events in one statement.
//!
//! Waking the relay costs a `NOTIFY`, and PostgreSQL serialises every committing transaction
//! that notified on one database-wide lock, so a writer notifies only when the relay may be
//! asleep. The relay says so by holding the outbox's wake lock (a session-level advisory
//! lock, [`Outbox::wake_lock`]) exactly while it sleeps; every writer tries to take it shared
//! for the rest of its transaction and notifies only when that fails:
//!
//! - a writer that got it shared holds it until it commits, and the relay takes it (with a
//!   non-blocking try) before it sleeps and then looks for rows once more: it cannot take it
//!   before that writer committed, so that look sees the writer's rows;
//! - a writer that did not get it notifies at commit, and the relay, which listens from
//!   before it first takes the lock, wakes up after that commit and looks again.
//!
//! So no row waits for the fallback poll, and while the relay is busy (it does not hold the
//! lock) the writers send no `NOTIFY` at all.

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
/// database: two outboxes in one database need different `relay_lock`s and `key_lock_space`s
/// (neither the complement of the other's), and no other advisory-lock user there may take
/// `relay_lock` or a two-int lock whose first half is `key_lock_space` or `!key_lock_space`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Outbox {
    /// The `LISTEN/NOTIFY` channel writers notify on commit when the relay sleeps.
    pub channel: &'static str,
    /// The session-level advisory lock (one bigint) held by the one relay of the database.
    pub relay_lock: i64,
    /// The first half of the two-int transaction-scoped advisory lock writers take per key
    /// (the second is `hashtext(key)`); the two-int space never collides with `relay_lock`.
    pub key_lock_space: i32,
}

/// The names of what [`Outbox::statement`] adds to a statement.
const LOCKED: &str = "outbox_locked";

impl Outbox {
    pub const fn new(channel: &'static str, relay_lock: i64, key_lock_space: i32) -> Self {
        Self {
            channel,
            relay_lock,
            key_lock_space,
        }
    }

    /// The two-int advisory lock the relay holds (session-level) while it sleeps and writers
    /// try to take shared until they commit: `(!key_lock_space, key_lock_space)`, outside the
    /// key locks' space. See the module documentation.
    pub const fn wake_lock(&self) -> (i32, i32) {
        (!self.key_lock_space, self.key_lock_space)
    }

    /// Writes `events` to the outbox within `tx` and wakes the relay when `tx` commits, in
    /// one statement.
    ///
    /// Row ids come from a sequence at insert time, not at commit: two transactions writing
    /// the same key could commit in the opposite order of their ids, and the relay could
    /// publish the later id before the earlier one is visible. A transaction-scoped advisory
    /// lock per key, taken before any row gets its id, serializes them, so per key the id
    /// order is the commit order; the rows get their ids in the order given. Keys are locked in sorted order, so two writers never
    /// deadlock on each other's keys; a hash collision between two keys only serializes two
    /// unrelated writers.
    pub async fn enqueue(
        &self,
        tx: &mut Transaction<'_, Postgres>,
        events: &[NewEvent],
    ) -> Result<()> {
        self.insert(tx, events, true).await
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
        self.insert(tx, events, false).await
    }

    async fn insert(
        &self,
        tx: &mut Transaction<'_, Postgres>,
        events: &[NewEvent],
        lock_keys: bool,
    ) -> Result<()> {
        crate::trace::remember(tx).await?;
        if events.is_empty() {
            return Ok(());
        }
        let rows = "SELECT topic, key, event_id, payload
                    FROM unnest($1::text[], $2::text[], $3::uuid[], $4::jsonb[])
                         WITH ORDINALITY AS e (topic, key, event_id, payload, n)
                    ORDER BY n";
        let sql = self.compose(
            None,
            rows,
            "SELECT count(*) FROM outbox_written",
            lock_keys,
            false,
        );
        let column = |f: fn(&NewEvent) -> String| events.iter().map(f).collect::<Vec<_>>();
        sqlx::query(&sql)
            .bind(column(|e| e.topic.clone()))
            .bind(column(|e| e.key.clone()))
            .bind(events.iter().map(|e| e.event_id).collect::<Vec<_>>())
            .bind(events.iter().map(|e| e.payload.clone()).collect::<Vec<_>>())
            .execute(&mut **tx)
            .await?;
        Ok(())
    }

    /// One statement that makes a change and writes the events it implies, for a change
    /// that needs no transaction of several statements (it then commits on its own, and no
    /// lock is held across a round trip to the client).
    ///
    /// - `ctes`: the caller's common table expressions (`name AS (...), ...`), e.g. the
    ///   conditional `UPDATE ... RETURNING` of the change; empty for none.
    /// - `events`: a query yielding the rows to write, with the columns `topic` (text), `key`
    ///   (text), `event_id` (uuid), `payload` (jsonb), `traceparent` and `tracestate` (text,
    ///   NULL when untraced: bind [`trace_context`]); it may read the caller's CTEs, so no row
    ///   is written when the change did nothing.
    /// - `select`: the statement's result; it may read the caller's CTEs and `outbox_written`
    ///   (`id`, `key` of every row written).
    ///
    /// The events get the guarantees of [`Outbox::enqueue`]: per-key locks (in key order)
    /// before any id, ids in the order the query yields the rows, and the relay's wake-up. Take the change's own row locks in `ctes` in
    /// one order everywhere, as for any statement.
    pub fn statement(&self, ctes: &str, events: &str, select: &str) -> String {
        let ctes = ctes.trim();
        self.compose(
            (!ctes.is_empty()).then_some(ctes),
            events,
            select,
            true,
            true,
        )
    }

    fn compose(
        &self,
        ctes: Option<&str>,
        events: &str,
        select: &str,
        lock_keys: bool,
        traced: bool,
    ) -> String {
        // Every key's lock, in key order, before any row gets its id: the InitPlan of
        // `outbox_locked` (the scalar subquery) runs before that CTE yields its first row.
        let (key_locks, locked) = if lock_keys {
            (
                format!(
                    "outbox_keys AS MATERIALIZED (
                         SELECT count(*) AS locked FROM (
                             SELECT pg_advisory_xact_lock({space}, hashtext(k.key))
                             FROM (SELECT DISTINCT key FROM outbox_events ORDER BY key) k
                         ) l
                     ),",
                    space = self.key_lock_space
                ),
                "(SELECT locked FROM outbox_keys) >= 0",
            )
        } else {
            (String::new(), "true")
        };
        // The trace columns' defaults read these settings (see `crate::schema`).
        let trace = if traced {
            "set_config('outbox.traceparent', coalesce(e.traceparent, ''), true) AS traceparent,
             set_config('outbox.tracestate', coalesce(e.tracestate, ''), true) AS tracestate,"
        } else {
            ""
        };
        let (wake_space, wake_key) = self.wake_lock();
        // MATERIALIZED: a CTE's every column is computed, row by row in the order given,
        // before the INSERT above it draws that row's id from the sequence and its defaults.
        format!(
            "WITH {ctes}outbox_events AS MATERIALIZED ({events}),
             {key_locks}
             {LOCKED} AS MATERIALIZED (
                 SELECT e.topic, e.key, e.event_id, e.payload, {trace}
                        CASE WHEN pg_try_advisory_xact_lock_shared({wake_space}, {wake_key})
                             THEN NULL ELSE pg_notify('{channel}', '') END AS woken
                 FROM outbox_events e WHERE {locked}
             ),
             outbox_written AS (
                 INSERT INTO outbox (topic, key, event_id, payload)
                 SELECT topic, key, event_id, payload FROM {LOCKED}
                 RETURNING id, key
             )
             {select}",
            ctes = ctes.map(|c| format!("{c},\n")).unwrap_or_default(),
            channel = self.channel.replace('\'', "''"),
        )
    }
}

/// The current span's W3C trace context as (`traceparent`, `tracestate`), both `None` when
/// tracing is off: the trace columns of an [`Outbox::statement`]'s events.
pub fn trace_context() -> (Option<String>, Option<String>) {
    match telemetry::TraceContext::current() {
        Some(trace) => (Some(trace.traceparent), trace.tracestate),
        None => (None, None),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_wake_lock_lies_outside_the_key_locks() {
        let outbox = Outbox::new("it's", 0x1234, 7);
        assert_eq!(outbox.wake_lock(), (!7, 7));
        let sql = outbox.statement(" done AS (SELECT 1) ", "SELECT 1", "SELECT 2");
        assert!(sql.starts_with("WITH done AS (SELECT 1),\noutbox_events"));
        assert!(sql.contains("pg_notify('it''s', '')"));
        assert!(sql.contains("pg_advisory_xact_lock(7, hashtext(k.key))"));
        assert!(sql.contains("pg_try_advisory_xact_lock_shared(-8, 7)"));
        let plain = outbox.statement("", "SELECT 1", "SELECT 2");
        assert!(plain.starts_with("WITH outbox_events"));
    }
}
