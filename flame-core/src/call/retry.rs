//! How a call is retried: [`RetryPolicy`] (attempts, backoff with jitter, longest delay) and
//! [`RetryBudget`] (retries as a share of calls, per pool, so a failing pool is not hammered).
//!
//! There is one retry loop in flame, in core, above the pool: a retry takes a fresh slot and
//! may land on another runner. A transport sends exactly one attempt.

use crate::error::Error;
use std::collections::VecDeque;
use std::sync::Mutex;
use std::time::Duration;
use tokio::time::Instant;

/// How many times a call is attempted and how long to wait between attempts. A call is only
/// retried after an error that is retryable *and* safe to repeat: an idempotency key is set, or
/// the error proves the handler never ran. Never past the call's deadline.
///
/// ```
/// use flame_core::{RetryBudget, RetryPolicy};
/// use std::time::Duration;
/// const THREE: RetryPolicy = RetryPolicy::attempts(3).with_backoff(Duration::from_millis(20), Duration::from_secs(1));
/// assert_eq!(THREE.max_attempts(), 3);
/// assert_eq!(RetryPolicy::NONE.max_attempts(), 1);
/// assert_eq!(THREE.budget(), Some(RetryBudget::DEFAULT));
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RetryPolicy {
    max_attempts: u32,
    initial_delay: Duration,
    max_delay: Duration,
    jitter: bool,
    budget: Option<RetryBudget>,
}

impl Default for RetryPolicy {
    fn default() -> Self {
        RetryPolicy::NONE
    }
}

impl RetryPolicy {
    /// One attempt, no retry (the default).
    pub const NONE: RetryPolicy = RetryPolicy::attempts(1);

    /// Up to `n` attempts in all (at least 1): exponential backoff from 50 ms, doubling, at most
    /// 2 s between attempts, with full jitter, within the [`RetryBudget::DEFAULT`] budget.
    pub const fn attempts(n: u32) -> Self {
        RetryPolicy {
            max_attempts: if n == 0 { 1 } else { n },
            initial_delay: Duration::from_millis(50),
            max_delay: Duration::from_secs(2),
            jitter: true,
            budget: Some(RetryBudget::DEFAULT),
        }
    }

    /// Sets the first delay and the longest one.
    pub const fn with_backoff(mut self, initial: Duration, max: Duration) -> Self {
        self.initial_delay = initial;
        self.max_delay = max;
        self
    }

    /// Turns jitter on or off (on by default: callers retrying together spread out).
    pub const fn with_jitter(mut self, on: bool) -> Self {
        self.jitter = on;
        self
    }

    /// Sets the retry budget (`None`: retries are not throttled).
    pub const fn with_budget(mut self, budget: Option<RetryBudget>) -> Self {
        self.budget = budget;
        self
    }

    /// Attempts in all, the first included.
    pub const fn max_attempts(&self) -> u32 {
        self.max_attempts
    }

    /// The first delay.
    pub const fn initial_delay(&self) -> Duration {
        self.initial_delay
    }

    /// The longest delay.
    pub const fn max_delay(&self) -> Duration {
        self.max_delay
    }

    /// Whether delays are jittered.
    pub const fn jitter(&self) -> bool {
        self.jitter
    }

    /// The retry budget.
    pub const fn budget(&self) -> Option<RetryBudget> {
        self.budget
    }

    /// The delays before attempts 2, 3, …: exponential from `initial_delay`, capped at
    /// `max_delay`, jittered if asked.
    pub(crate) fn delays(&self) -> impl Iterator<Item = Duration> {
        use backon::BackoffBuilder;
        let builder = backon::ExponentialBuilder::default()
            .with_min_delay(self.initial_delay)
            .with_max_delay(self.max_delay)
            .with_max_times(self.max_attempts.saturating_sub(1) as usize);
        let builder = if self.jitter {
            builder.with_jitter()
        } else {
            builder
        };
        // backon's jitter adds up to one more delay: keep every delay under the cap.
        let cap = self.max_delay;
        builder.build().map(move |d| d.min(cap))
    }
}

/// Retries as a share of calls, per pool (Finagle's retry budget; gRPC's retry throttling is
/// the same idea): each call earns `percent`/100 of a retry for ten seconds, each retry takes
/// one, and a reserve of ten seconds of `min_per_second` refills whatever the traffic (a fresh
/// pool starts with it); with no token left a failed attempt is not retried. It keeps a pool in
/// trouble from getting several times its normal load, while a runner dying with its share of
/// the calls in flight still gets them all retried.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RetryBudget {
    /// Retries allowed per 100 calls.
    pub percent: u32,
    /// Retries always allowed per second, however few calls there are.
    pub min_per_second: u32,
}

impl RetryBudget {
    /// 20 retries per 100 calls, and at least 10 per second.
    pub const DEFAULT: RetryBudget = RetryBudget {
        percent: 20,
        min_per_second: 10,
    };
}

/// The window a retry budget counts calls in (Finagle's TTL).
const WINDOW: Duration = Duration::from_secs(10);

/// The running balance of a [`RetryBudget`] (one per pool): what recent calls earned, in
/// one-second buckets that expire after the window (withdrawals take the oldest first), and the
/// reserve, which refills at `min_per_second` up to ten seconds' worth.
#[derive(Debug)]
pub(crate) struct BudgetState {
    inner: Mutex<Balance>,
}

#[derive(Debug)]
struct Balance {
    /// Tokens earned by calls, by the second they were earned in (oldest first).
    earned: VecDeque<(Instant, f64)>,
    /// The reserve's tokens and when it was last refilled; `None` until first used (then full).
    reserve: Option<(f64, Instant)>,
}

impl BudgetState {
    pub(crate) fn new() -> Self {
        BudgetState {
            inner: Mutex::new(Balance {
                earned: VecDeque::new(),
                reserve: None,
            }),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Balance> {
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// A call starts: it earns its share of a retry.
    pub(crate) fn deposit(&self, budget: &RetryBudget) {
        let share = f64::from(budget.percent) / 100.0;
        let now = Instant::now();
        let mut b = self.lock();
        b.expire(now);
        match b.earned.back_mut() {
            Some((second, tokens)) if now.saturating_duration_since(*second) < Duration::from_secs(1) => {
                *tokens += share;
            }
            _ => b.earned.push_back((now, share)),
        }
    }

    /// A retry wants to go: true if the budget allows it (and takes the token).
    pub(crate) fn withdraw(&self, budget: &RetryBudget) -> bool {
        let now = Instant::now();
        let mut b = self.lock();
        b.expire(now);
        if b.earned.iter().map(|(_, t)| t).sum::<f64>() >= 1.0 {
            let mut owed = 1.0;
            while owed > 0.0 {
                let Some((_, tokens)) = b.earned.front_mut() else {
                    break;
                };
                let take = tokens.min(owed);
                *tokens -= take;
                owed -= take;
                if *tokens <= f64::EPSILON {
                    b.earned.pop_front();
                }
            }
            return true;
        }
        let per_second = f64::from(budget.min_per_second);
        let full = per_second.max(1.0) * WINDOW.as_secs_f64();
        let (tokens, since) = b.reserve.get_or_insert((full, now));
        let secs = now.saturating_duration_since(*since).as_secs_f64();
        *tokens = (*tokens + secs * per_second).min(full);
        *since = now;
        if *tokens >= 1.0 {
            *tokens -= 1.0;
            true
        } else {
            false
        }
    }
}

impl Balance {
    fn expire(&mut self, now: Instant) {
        while self
            .earned
            .front()
            .is_some_and(|(second, _)| now.saturating_duration_since(*second) >= WINDOW)
        {
            self.earned.pop_front();
        }
    }
}

/// Whether an attempt that failed with `err` may be repeated: the error is retryable, and
/// repeating cannot run a handler twice (idempotency key set, or the handler never ran).
pub(crate) fn safe_to_retry(err: &Error, has_idempotency_key: bool) -> bool {
    err.is_retryable() && (has_idempotency_key || err.handler_never_ran())
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
    fn delays_are_bounded_and_counted() {
        let p = RetryPolicy::attempts(6).with_backoff(Duration::from_millis(50), Duration::from_secs(2));
        let delays: Vec<_> = p.delays().collect();
        assert_eq!(delays.len(), 5);
        assert!(delays.iter().all(|d| *d <= Duration::from_secs(2)));
        assert_eq!(RetryPolicy::NONE.delays().count(), 0);
        let fixed: Vec<_> = RetryPolicy::attempts(3)
            .with_jitter(false)
            .with_backoff(Duration::from_millis(10), Duration::from_millis(15))
            .delays()
            .collect();
        assert_eq!(fixed, [Duration::from_millis(10), Duration::from_millis(15)]);
    }

    #[tokio::test(start_paused = true)]
    async fn the_budget_allows_a_share_of_calls_plus_a_floor() {
        let b = RetryBudget {
            percent: 50,
            min_per_second: 1,
        };
        let state = BudgetState::new();
        for _ in 0..10 {
            assert!(state.withdraw(&b), "a fresh pool starts with ten seconds' floor");
        }
        assert!(!state.withdraw(&b));
        for _ in 0..4 {
            state.deposit(&b);
        }
        assert!(state.withdraw(&b));
        assert!(state.withdraw(&b));
        assert!(!state.withdraw(&b), "4 calls at 50 % earn 2 retries");
        tokio::time::advance(Duration::from_secs(1)).await;
        assert!(state.withdraw(&b), "the floor refills one per second");
        assert!(!state.withdraw(&b));
        // A burst of calls earns its share on top of the reserve; it fades over the window.
        tokio::time::advance(Duration::from_secs(30)).await;
        for _ in 0..100 {
            state.deposit(&b);
        }
        let mut granted = 0;
        while state.withdraw(&b) {
            granted += 1;
        }
        assert_eq!(granted, 60, "10 reserve + 50 % of 100 calls");
        for _ in 0..100 {
            state.deposit(&b);
        }
        tokio::time::advance(Duration::from_secs(9)).await;
        assert!(state.withdraw(&b), "earned tokens last the window");
        tokio::time::advance(Duration::from_secs(60)).await;
        let mut later = 0;
        while state.withdraw(&b) {
            later += 1;
        }
        assert_eq!(later, 10, "earned tokens expired; the reserve refilled");
    }
}
