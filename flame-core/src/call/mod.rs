//! The life of a call, owned by core: its options, its retry policy, and the one place where
//! its deadline and retries are decided.
//!
//! A call's policy is resolved **once**, when it starts, and then flows down unchanged:
//!
//! | what | first set wins |
//! |---|---|
//! | pool | [`CallOptions::pool`] → [`Method::with_pool`](crate::Method::with_pool) → `Config::default_pool` (`FLAME_DEFAULT_POOL`, `default`) |
//! | timeout | [`CallOptions::timeout`] → [`Method::with_timeout_ms`](crate::Method::with_timeout_ms) → the pool's `PoolConfig::call_timeout` → `Config::request_timeout` (`FLAME_REQUEST_TIMEOUT_MS`, 30 s) |
//! | retry policy | [`CallOptions::retry`] (or `retries`) → [`Method::with_retry`](crate::Method::with_retry) → the pool's `PoolConfig::retry` → `Config::retry` ([`RetryPolicy::NONE`]) |
//!
//! The deadline is `now + timeout`, across every attempt; a caller that waits for a runner to
//! boot gets its timeout counted from when it reaches the runner (a call's timeout covers the
//! call, not a boot). The only retry loop sits above the pool, so a retry takes a fresh slot and
//! can reach another runner; it retries only errors that are retryable and safe to repeat (an
//! idempotency key is set, or the error proves the handler never ran), with the policy's
//! backoff, never past the deadline, and within the pool's [`RetryBudget`]. A
//! [`Transport`](crate::Transport) sends exactly one attempt; the attempt number travels in the
//! envelope (`attempt`, which the TypeScript reference ignores) and reaches the handler as
//! [`Context::attempt`](crate::Context::attempt).

mod lifecycle;
mod options;
mod retry;

pub(crate) use lifecycle::{attempt_remote, decode, Plan};
pub use options::CallOptions;
pub(crate) use retry::BudgetState;
pub use retry::{RetryBudget, RetryPolicy};

use std::time::Duration;

/// What a pool contributes to a call's policy when neither the call nor its method says
/// (see the [module docs](self)).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct CallDefaults {
    /// The pool's default timeout.
    pub timeout: Option<Duration>,
    /// The pool's default retry policy.
    pub retry: Option<RetryPolicy>,
}
