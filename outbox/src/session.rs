//! The relay's lock session: the PostgreSQL connection whose session-level advisory lock makes
//! this relay the only one of its database, and on which it reads and marks rows.
//!
//! If the relay's host dies or its network goes, PostgreSQL must notice and release the lock
//! so a standby relay can take over; sqlx has no client-side TCP keepalive, so the server
//! side does it, set per session through the startup `options`:
//!
//! | setting | value | effect |
//! |---|---|---|
//! | `tcp_keepalives_idle` | 10 s | first probe after 10 s of silence |
//! | `tcp_keepalives_interval` | 5 s | then one probe every 5 s |
//! | `tcp_keepalives_count` | 3 | dead after 3 unanswered probes: 10 + 3 × 5 = 25 s |
//! | `tcp_user_timeout` | 25 s | the same bound while data is unacknowledged |
//! | `statement_timeout` | 10 s | no relay query runs longer |
//! | `idle_in_transaction_session_timeout` | 10 s | a stuck transaction ends |
//!
//! So a dead holder's lock is released within about 25-30 s. The relay itself bounds every
//! call on this session by [`QUERY_TIMEOUT`] (client side), so a relay whose database
//! vanished notices within that time and starts over: measured 16 s from the moment the
//! database stopped answering (the 1 s poll, then the 15 s bound; `outbox/tests/relay.rs`).
//! The server-side `statement_timeout` is below that bound, so a server that is alive but
//! slow answers with an error first.

use std::time::Duration;

use sqlx::postgres::PgConnectOptions;

/// The client-side bound on every call on the lock session (connect, lock, fetch, mark).
pub const QUERY_TIMEOUT: Duration = Duration::from_secs(15);

/// The server-side session settings of the lock session, as `(name, value)`.
pub const LOCK_SESSION_SETTINGS: [(&str, &str); 6] = [
    ("tcp_keepalives_idle", "10"),
    ("tcp_keepalives_interval", "5"),
    ("tcp_keepalives_count", "3"),
    ("tcp_user_timeout", "25000"),
    ("statement_timeout", "10s"),
    ("idle_in_transaction_session_timeout", "10s"),
];

/// `database` with [`LOCK_SESSION_SETTINGS`] and an application name naming the relay role,
/// so an operator finds the relay in `pg_stat_activity`.
pub fn lock_session_options(database: &PgConnectOptions, role: &str) -> PgConnectOptions {
    database
        .clone()
        .options(LOCK_SESSION_SETTINGS)
        .application_name(role)
}
