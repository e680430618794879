//! Dev-only helpers every test suite of the workspace shares, instead of a copy per suite.
//!
//! - [`unique`], [`free_port`]: names and ports no other test (or earlier run) uses.
//! - [`eventually`]: wait for a condition with a deadline instead of a fixed sleep.
//! - [`Isolated`]: a second instance of one `scripts/infra` service under its own
//!   `INFRA_HOME` and free ports, for tests that stop or kill it; removed on drop.
//! - [`env`]: the shared services' addresses, from the environment with the local defaults.
//! - [`fold`]: a fold that depends on every event (per key, its event ids in order), so a
//!   fault test sees a lost, repeated or reordered event and not only the last value.
//! - [`zipkin`]: a trace's spans read back from Zipkin, and finding one of them.

pub mod env;
pub mod fold;
mod isolated;
pub mod zipkin;

use std::future::Future;
use std::time::{Duration, Instant};

pub use isolated::Isolated;

/// `<prefix>_<12 hex digits>`: a topic, group, database or namespace name of this test alone.
/// Letters, digits and `_` only, so it is valid as a SQL identifier too.
pub fn unique(prefix: &str) -> String {
    let id = uuid::Uuid::new_v4().simple().to_string();
    format!("{prefix}_{}", &id[..12])
}

/// A TCP port on 127.0.0.1 that nothing listens on right now.
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|listener| listener.local_addr())
        .expect("a free port on 127.0.0.1")
        .port()
}

/// Polls `condition` every 100 ms until it holds; panics naming `what` after `within`.
pub async fn eventually<F, Fut>(what: &str, within: Duration, mut condition: F)
where
    F: FnMut() -> Fut,
    Fut: Future<Output = bool>,
{
    let deadline = Instant::now() + within;
    while !condition().await {
        assert!(
            Instant::now() < deadline,
            "timed out after {within:?} waiting until {what}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unique_names_differ_and_are_identifiers() {
        let (a, b) = (unique("t"), unique("t"));
        assert_ne!(a, b);
        assert!(a.starts_with("t_") && a.len() == 14, "{a}");
        assert!(a.chars().all(|c| c.is_ascii_alphanumeric() || c == '_'));
    }

    #[tokio::test]
    async fn eventually_returns_once_the_condition_holds() {
        let mut calls = 0;
        eventually("the third call", Duration::from_secs(5), || {
            calls += 1;
            let done = calls >= 3;
            async move { done }
        })
        .await;
        assert_eq!(calls, 3);
    }

    #[tokio::test]
    #[should_panic(expected = "timed out")]
    async fn eventually_gives_up_at_the_deadline() {
        eventually("never", Duration::from_millis(250), || async { false }).await;
    }
}
