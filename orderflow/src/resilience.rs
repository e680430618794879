//! Resiliency policies for every outbound call: a timeout per attempt, retries with
//! exponential backoff and jitter (`backon`), and a circuit breaker (`failsafe`) that stops
//! calling a service after consecutive failures and lets one call through once it has been
//! open for a while. One [`Resilient`] per called service, configured by its [`Policy`].
//!
//! Only transient failures count against the breaker and are retried: no answer in time,
//! a connection error, a 5xx or 429. A 4xx is an answer (the service is up) and goes back to
//! the caller at once.

use std::future::Future;
use std::time::Duration;

use backon::{ExponentialBuilder, Retryable};
use failsafe::backoff::Constant;
use failsafe::failure_policy::ConsecutiveFailures;
use failsafe::StateMachine;

/// The services the order flow calls, each with a policy of its own.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Call {
    Customers,
    Products,
    Orders,
    Payments,
}

impl Call {
    pub fn name(self) -> &'static str {
        match self {
            Call::Customers => "customers",
            Call::Products => "products",
            Call::Orders => "orders",
            Call::Payments => "payments",
        }
    }
}

#[derive(Debug, Clone, PartialEq)]
pub struct Policy {
    pub name: &'static str,
    /// Per attempt.
    pub timeout: Duration,
    /// Attempts after the first one.
    pub retries: usize,
    pub min_backoff: Duration,
    pub max_backoff: Duration,
    /// Consecutive transient failures that open the breaker.
    pub breaker_failures: u32,
    /// How long an open breaker refuses calls before letting one through.
    pub breaker_open: Duration,
}

/// Why a call failed.
#[derive(Debug, thiserror::Error)]
pub enum CallError {
    #[error("{call}: no answer within {timeout:?}")]
    Timeout {
        call: &'static str,
        timeout: Duration,
    },
    #[error("{call}: circuit open after repeated failures")]
    Open { call: &'static str },
    #[error("{call}: {source}")]
    Transport {
        call: &'static str,
        source: reqwest::Error,
    },
    #[error("{call} answered {status}: {body}")]
    Status {
        call: &'static str,
        status: u16,
        body: String,
    },
}

impl CallError {
    /// Whether trying again (later) can succeed.
    pub fn is_retryable(&self) -> bool {
        match self {
            CallError::Timeout { .. } | CallError::Open { .. } | CallError::Transport { .. } => {
                true
            }
            CallError::Status { status, .. } => *status >= 500 || *status == 429,
        }
    }
}

type Breaker = StateMachine<ConsecutiveFailures<Constant>, ()>;

/// The policy of one called service, with its breaker (shared by clones).
#[derive(Clone)]
pub struct Resilient {
    policy: Policy,
    breaker: Breaker,
}

impl Resilient {
    pub fn new(policy: Policy) -> Self {
        let breaker = failsafe::Config::new()
            .failure_policy(failsafe::failure_policy::consecutive_failures(
                policy.breaker_failures,
                failsafe::backoff::constant(policy.breaker_open),
            ))
            .build();
        Self { policy, breaker }
    }

    pub fn policy(&self) -> &Policy {
        &self.policy
    }

    /// Runs `attempt` under the policy: each attempt bounded by the timeout, transient
    /// failures retried with backoff and jitter, refused at once while the breaker is open.
    pub async fn call<T, F, Fut>(&self, attempt: F) -> Result<T, CallError>
    where
        F: Fn() -> Fut,
        Fut: Future<Output = Result<T, CallError>>,
    {
        let once = || async {
            if !self.breaker.is_call_permitted() {
                return Err(CallError::Open {
                    call: self.policy.name,
                });
            }
            let outcome = match tokio::time::timeout(self.policy.timeout, attempt()).await {
                Ok(outcome) => outcome,
                Err(_) => Err(CallError::Timeout {
                    call: self.policy.name,
                    timeout: self.policy.timeout,
                }),
            };
            match &outcome {
                Err(e) if e.is_retryable() => self.breaker.on_error(),
                _ => self.breaker.on_success(),
            }
            outcome
        };
        let backoff = ExponentialBuilder::default()
            .with_min_delay(self.policy.min_backoff)
            .with_max_delay(self.policy.max_backoff)
            .with_max_times(self.policy.retries)
            .with_jitter();
        once.retry(backoff)
            .when(CallError::is_retryable)
            .notify(|e, after| {
                tracing::debug!(call = self.policy.name, error = %e, ?after, "retrying");
            })
            .await
    }
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicUsize, Ordering};

    use super::*;

    fn policy(retries: usize, breaker_failures: u32) -> Policy {
        Policy {
            name: "test",
            timeout: Duration::from_millis(50),
            retries,
            min_backoff: Duration::from_millis(1),
            max_backoff: Duration::from_millis(2),
            breaker_failures,
            breaker_open: Duration::from_secs(60),
        }
    }

    fn unavailable() -> CallError {
        CallError::Status {
            call: "test",
            status: 503,
            body: String::new(),
        }
    }

    #[tokio::test]
    async fn transient_failures_are_retried_and_permanent_ones_are_not() {
        let calls = AtomicUsize::new(0);
        let resilient = Resilient::new(policy(3, 100));
        let answer = resilient
            .call(|| async {
                if calls.fetch_add(1, Ordering::SeqCst) < 2 {
                    Err(unavailable())
                } else {
                    Ok(7)
                }
            })
            .await
            .unwrap();
        assert_eq!((answer, calls.load(Ordering::SeqCst)), (7, 3));

        calls.store(0, Ordering::SeqCst);
        let refused = resilient
            .call(|| async {
                calls.fetch_add(1, Ordering::SeqCst);
                Err::<(), _>(CallError::Status {
                    call: "test",
                    status: 409,
                    body: String::new(),
                })
            })
            .await;
        assert!(matches!(
            refused,
            Err(CallError::Status { status: 409, .. })
        ));
        assert_eq!(calls.load(Ordering::SeqCst), 1);
    }

    #[tokio::test]
    async fn a_slow_answer_times_out() {
        let resilient = Resilient::new(policy(1, 100));
        let slow = resilient
            .call(|| async {
                tokio::time::sleep(Duration::from_secs(5)).await;
                Ok(())
            })
            .await;
        assert!(matches!(slow, Err(CallError::Timeout { .. })));
    }

    #[tokio::test]
    async fn the_breaker_opens_after_consecutive_failures() {
        let calls = AtomicUsize::new(0);
        let resilient = Resilient::new(policy(0, 3));
        for _ in 0..3 {
            let _ = resilient
                .call(|| async {
                    calls.fetch_add(1, Ordering::SeqCst);
                    Err::<(), _>(unavailable())
                })
                .await;
        }
        let refused = resilient
            .call(|| async {
                calls.fetch_add(1, Ordering::SeqCst);
                Ok(())
            })
            .await;
        assert!(
            matches!(refused, Err(CallError::Open { .. })),
            "{refused:?}"
        );
        assert_eq!(
            calls.load(Ordering::SeqCst),
            3,
            "an open breaker calls nothing"
        );
    }
}
