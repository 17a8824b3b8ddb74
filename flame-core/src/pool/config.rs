use crate::call::{CallDefaults, RetryPolicy};
use std::time::Duration;

/// Settings of an elastic pool. Defaults follow Elixir FLAME (`lib/flame/pool.ex`).
///
/// ```
/// use flame_core::PoolConfig;
/// use std::time::Duration;
/// let cfg = PoolConfig::default().max(8).max_concurrency(4).idle_shutdown_after(Duration::from_secs(10));
/// assert_eq!((cfg.min, cfg.max, cfg.max_concurrency), (0, 8, 4));
/// ```
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct PoolConfig {
    /// Runners kept even when idle. Default 0 (always 0 inside a runner).
    pub min: usize,
    /// Most runners at once (running + booting). Default 1.
    pub max: usize,
    /// Concurrent calls per runner. Default 100.
    pub max_concurrency: usize,
    /// A runner idle this long is ended (never below `min`). Default 30 s.
    pub idle_shutdown_after: Duration,
    /// A runner that does not answer `ping` within this is ended. Default 30 s.
    pub boot_timeout: Duration,
    /// Default timeout of calls through this pool, below the call's and the method's own
    /// (see [`crate::call`]). Default `None`: the configuration's (`FLAME_REQUEST_TIMEOUT_MS`).
    pub call_timeout: Option<Duration>,
    /// Default retry policy of calls through this pool, below the call's and the method's own.
    /// Default `None`: the configuration's ([`RetryPolicy::NONE`] unless set).
    pub retry: Option<RetryPolicy>,
    /// Grace for calls in flight when the pool shuts down. Default 30 s.
    pub shutdown_timeout: Duration,
    /// Each runner serves one call, then is ended. Default false.
    pub single_use: bool,
    /// How often runners are pinged. Default 5 s (well inside the runner's 20 s failsafe).
    pub health_interval: Duration,
    /// Consecutive failed boots (exit before ready, boot timeout, backend refusal) that open
    /// the crash-loop breaker: the pool then starts no runner for a backoff, and callers that
    /// no runner can serve fail at once with a retryable `NO_RUNNER` naming the last failure.
    /// Default 3.
    pub boot_failure_threshold: u32,
    /// The breaker's first backoff; it doubles with every further failed trial start, up to
    /// `breaker_max_backoff`. Default 1 s.
    pub breaker_backoff: Duration,
    /// The longest breaker backoff. Default 30 s.
    pub breaker_max_backoff: Duration,
    /// Most runner starts in any rolling minute — the last fence against a runaway, whatever
    /// else goes wrong. `None` (the default) means `max(60, 2 × max)`.
    pub max_spawns_per_minute: Option<usize>,
}

impl Default for PoolConfig {
    fn default() -> Self {
        PoolConfig {
            min: 0,
            max: 1,
            max_concurrency: 100,
            idle_shutdown_after: Duration::from_secs(30),
            boot_timeout: Duration::from_secs(30),
            call_timeout: None,
            retry: None,
            shutdown_timeout: Duration::from_secs(30),
            single_use: false,
            health_interval: Duration::from_secs(5),
            boot_failure_threshold: 3,
            breaker_backoff: Duration::from_secs(1),
            breaker_max_backoff: Duration::from_secs(30),
            max_spawns_per_minute: None,
        }
    }
}

impl PoolConfig {
    /// Sets `min`.
    pub fn min(mut self, n: usize) -> Self {
        self.min = n;
        self
    }
    /// Sets `max`.
    pub fn max(mut self, n: usize) -> Self {
        self.max = n;
        self
    }
    /// Sets `max_concurrency`.
    pub fn max_concurrency(mut self, n: usize) -> Self {
        self.max_concurrency = n;
        self
    }
    /// Sets `idle_shutdown_after`.
    pub fn idle_shutdown_after(mut self, d: Duration) -> Self {
        self.idle_shutdown_after = d;
        self
    }
    /// Sets `boot_timeout`.
    pub fn boot_timeout(mut self, d: Duration) -> Self {
        self.boot_timeout = d;
        self
    }
    /// Sets `call_timeout`.
    pub fn call_timeout(mut self, d: Duration) -> Self {
        self.call_timeout = Some(d);
        self
    }
    /// Sets the pool's retry policy.
    pub fn retry(mut self, policy: RetryPolicy) -> Self {
        self.retry = Some(policy);
        self
    }
    /// What this pool contributes to a call's policy.
    pub fn call_defaults(&self) -> CallDefaults {
        CallDefaults {
            timeout: self.call_timeout,
            retry: self.retry,
        }
    }
    /// Sets `shutdown_timeout`.
    pub fn shutdown_timeout(mut self, d: Duration) -> Self {
        self.shutdown_timeout = d;
        self
    }
    /// Sets `single_use`.
    pub fn single_use(mut self, on: bool) -> Self {
        self.single_use = on;
        self
    }
    /// Sets `health_interval`.
    pub fn health_interval(mut self, d: Duration) -> Self {
        self.health_interval = d;
        self
    }
    /// Sets `boot_failure_threshold` (at least 1).
    pub fn boot_failure_threshold(mut self, n: u32) -> Self {
        self.boot_failure_threshold = n;
        self
    }
    /// Sets the breaker's first and longest backoff.
    pub fn breaker_backoff(mut self, first: Duration, max: Duration) -> Self {
        self.breaker_backoff = first;
        self.breaker_max_backoff = max;
        self
    }
    /// Sets the spawn budget: most runner starts in any rolling minute (at least 1).
    pub fn max_spawns_per_minute(mut self, n: usize) -> Self {
        self.max_spawns_per_minute = Some(n);
        self
    }
    /// The spawn budget in effect: `max_spawns_per_minute`, else `max(60, 2 × max)`.
    pub fn spawn_budget(&self) -> usize {
        self.max_spawns_per_minute
            .unwrap_or_else(|| self.max.saturating_mul(2).max(60))
            .max(1)
    }
}
