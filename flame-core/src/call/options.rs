//! Per-call options.

use super::retry::RetryPolicy;
use std::collections::BTreeMap;
use std::time::Duration;

/// Options of one call: pool, timeout, idempotency key, retry policy, trace context. What is
/// not set here comes from the method, then the pool, then the configuration (see
/// [`crate::call`] for the precedence).
///
/// ```
/// use flame_core::{CallOptions, RetryPolicy};
/// use std::time::Duration;
/// let opts = CallOptions::new().pool("gpu").timeout(Duration::from_secs(5)).idempotency_key("img-42").retries(3);
/// assert_eq!(opts.get_retries(), 3);
/// assert_eq!(opts.get_retry(), Some(RetryPolicy::attempts(4)));
/// ```
#[derive(Debug, Clone, Default)]
pub struct CallOptions {
    pub(crate) pool: Option<String>,
    pub(crate) timeout: Option<Duration>,
    pub(crate) idempotency_key: Option<String>,
    pub(crate) retry: Option<RetryPolicy>,
    pub(crate) trace: BTreeMap<String, String>,
    /// A cast: the runner acknowledges once it accepted the call and runs it on its own.
    pub(crate) cast: bool,
}

impl CallOptions {
    /// Nothing set: the method's, the pool's or the configuration's values apply.
    pub fn new() -> Self {
        CallOptions::default()
    }

    /// Routes the call through pool `name`.
    pub fn pool(mut self, name: impl Into<String>) -> Self {
        self.pool = Some(name.into());
        self
    }

    /// The call's timeout (its deadline is now + timeout, across all retries).
    pub fn timeout(mut self, timeout: Duration) -> Self {
        self.timeout = Some(timeout);
        self
    }

    /// An idempotency key: a runner that already ran this key returns the first result, and
    /// retries become safe for any retryable error.
    pub fn idempotency_key(mut self, key: impl Into<String>) -> Self {
        self.idempotency_key = Some(key.into());
        self
    }

    /// Up to `n` retries after a retryable error, when repeating is safe (an idempotency key is
    /// set, or the error proves the handler never ran); exponential backoff with jitter, never
    /// past the deadline. Shorthand for `retry(RetryPolicy::attempts(n + 1))`.
    pub fn retries(mut self, n: u32) -> Self {
        self.retry = Some(RetryPolicy::attempts(n.saturating_add(1)));
        self
    }

    /// The retry policy of this call (wins over the method's, the pool's and the default).
    pub fn retry(mut self, policy: RetryPolicy) -> Self {
        self.retry = Some(policy);
        self
    }

    /// Adds a trace-context entry (e.g. `traceparent`).
    pub fn trace(mut self, key: impl Into<String>, value: impl Into<String>) -> Self {
        self.trace.insert(key.into(), value.into());
        self
    }

    /// The pool, if set.
    pub fn get_pool(&self) -> Option<&str> {
        self.pool.as_deref()
    }

    /// The timeout, if set.
    pub fn get_timeout(&self) -> Option<Duration> {
        self.timeout
    }

    /// The idempotency key, if set.
    pub fn get_idempotency_key(&self) -> Option<&str> {
        self.idempotency_key.as_deref()
    }

    /// Retries this call's own policy allows (0 when it sets none).
    pub fn get_retries(&self) -> u32 {
        self.retry.map_or(0, |p| p.max_attempts() - 1)
    }

    /// This call's own retry policy, if it sets one.
    pub fn get_retry(&self) -> Option<RetryPolicy> {
        self.retry
    }
}
