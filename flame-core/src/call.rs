//! Per-call options and the retry policy.

use crate::error::Error;
use std::collections::BTreeMap;
use std::time::Duration;

/// Options of one call: pool, timeout, idempotency key, retries, trace context.
///
/// ```
/// use flame_core::CallOptions;
/// use std::time::Duration;
/// let opts = CallOptions::new().pool("gpu").timeout(Duration::from_secs(5)).idempotency_key("img-42").retries(3);
/// assert_eq!(opts.get_retries(), 3);
/// ```
#[derive(Debug, Clone, Default)]
pub struct CallOptions {
    pub(crate) pool: Option<String>,
    pub(crate) timeout: Option<Duration>,
    pub(crate) idempotency_key: Option<String>,
    pub(crate) retries: u32,
    pub(crate) trace: BTreeMap<String, String>,
}

impl CallOptions {
    /// Defaults: the method's or the default pool, the configured timeout, no retries.
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

    /// Retries after a retryable error, when repeating is safe (an idempotency key is set, or
    /// the error proves the handler never ran); exponential backoff with jitter, never past the
    /// deadline.
    pub fn retries(mut self, n: u32) -> Self {
        self.retries = n;
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

    /// The retry count.
    pub fn get_retries(&self) -> u32 {
        self.retries
    }
}

/// Whether an attempt that failed with `err` may be repeated: the error is retryable, and
/// repeating cannot run a handler twice (idempotency key set, or the handler never ran).
pub fn safe_to_retry(err: &Error, has_idempotency_key: bool) -> bool {
    err.is_retryable() && (has_idempotency_key || err.handler_never_ran())
}

/// The backoff between attempts: exponential from 50 ms, capped at 2 s, with jitter.
pub fn backoff(retries: u32) -> impl Iterator<Item = Duration> {
    use backon::BackoffBuilder;
    backon::ExponentialBuilder::default()
        .with_min_delay(Duration::from_millis(50))
        .with_max_delay(Duration::from_secs(2))
        .with_jitter()
        .with_max_times(retries as usize)
        .build()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ErrorCode;

    #[test]
    fn retry_needs_retryable_and_safe() {
        let refused = Error::not_delivered("refused");
        let reset = Error::transport("reset");
        let handler = Error::handler("boom");
        assert!(safe_to_retry(&refused, false));
        assert!(!safe_to_retry(&reset, false));
        assert!(safe_to_retry(&reset, true));
        assert!(!safe_to_retry(&handler, true));
        assert!(safe_to_retry(&Error::new(ErrorCode::Overloaded, ""), false));
    }

    #[test]
    fn backoff_is_bounded() {
        let delays: Vec<_> = backoff(5).collect();
        assert_eq!(delays.len(), 5);
        assert!(delays.iter().all(|d| *d <= Duration::from_secs(4)));
    }
}
