//! The fences that keep an elastic pool from starting runners in a loop: the crash-loop
//! breaker (consecutive failed boots open it, with capped exponential backoff) and the spawn
//! budget (at most so many starts in any rolling minute). Pure bookkeeping: the pool calls it
//! under its lock and acts on the answers.

use crate::error::{Error, ErrorCode};
use std::collections::VecDeque;
use std::time::Duration;
use tokio::time::Instant;

/// The window the spawn budget counts starts in.
pub const BUDGET_WINDOW: Duration = Duration::from_secs(60);

/// What the breaker says about starting a runner now.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Gate {
    /// Start as many as needed.
    Open,
    /// The breaker waits out its backoff: start nothing until this instant.
    BreakerUntil(Instant),
    /// The backoff is over: one trial start may go (none is booting).
    Trial,
    /// The trial start is booting: wait for its outcome.
    TrialBooting,
    /// The spawn budget is spent until this instant.
    BudgetUntil(Instant),
}

/// Crash-loop breaker plus spawn budget of one pool.
#[derive(Debug)]
pub(crate) struct Breaker {
    threshold: u32,
    base: Duration,
    cap: Duration,
    budget: usize,
    /// Consecutive failed boots since the last success.
    pub(crate) failures: u32,
    /// The breaker is open (no starts) until then.
    open_until: Option<Instant>,
    /// The last boot failure (named in the errors callers get while the breaker is open).
    pub(crate) last_error: Option<Error>,
    /// Start times within the budget window, oldest first.
    starts: VecDeque<Instant>,
    /// Whether the budget was already reported spent in this episode.
    pub(crate) budget_reported: bool,
}

impl Breaker {
    pub(crate) fn new(threshold: u32, base: Duration, cap: Duration, budget: usize) -> Self {
        Breaker {
            threshold: threshold.max(1),
            base: base.max(Duration::from_millis(1)),
            cap: cap.max(base),
            budget: budget.max(1),
            failures: 0,
            open_until: None,
            last_error: None,
            starts: VecDeque::new(),
            budget_reported: false,
        }
    }

    /// Whether the breaker has tripped (open or waiting for its trial start to succeed).
    pub(crate) fn tripped(&self) -> bool {
        self.failures >= self.threshold
    }

    /// Whether a start may go now, given how many are booting.
    pub(crate) fn gate(&mut self, now: Instant, booting: usize) -> Gate {
        if self.tripped() {
            match self.open_until {
                Some(until) if now < until => return Gate::BreakerUntil(until),
                _ if booting > 0 => return Gate::TrialBooting,
                _ => {}
            }
        }
        while self
            .starts
            .front()
            .is_some_and(|t| now.duration_since(*t) >= BUDGET_WINDOW)
        {
            self.starts.pop_front();
        }
        if self.starts.len() >= self.budget {
            if let Some(oldest) = self.starts.front() {
                return Gate::BudgetUntil(*oldest + BUDGET_WINDOW);
            }
        }
        self.budget_reported = false;
        if self.tripped() {
            Gate::Trial
        } else {
            Gate::Open
        }
    }

    /// Records a start (counts against the budget).
    pub(crate) fn started(&mut self, now: Instant) {
        self.starts.push_back(now);
    }

    /// Records a runner that came up: the breaker closes. Returns whether it had tripped.
    pub(crate) fn succeeded(&mut self) -> bool {
        let was = self.tripped();
        self.failures = 0;
        self.open_until = None;
        self.last_error = None;
        was
    }

    /// Records a failed boot. Returns the backoff when this failure opens (or re-opens) the
    /// breaker.
    pub(crate) fn failed(&mut self, now: Instant, error: &Error) -> Option<Duration> {
        self.failures = self.failures.saturating_add(1);
        self.last_error =
            Some(Error::new(error.code(), error.message()).with_retryable(error.is_retryable()));
        if !self.tripped() {
            return None;
        }
        let doublings = (self.failures - self.threshold).min(16);
        let backoff = self.base.saturating_mul(1u32 << doublings).min(self.cap);
        self.open_until = Some(now + backoff);
        Some(backoff)
    }

    /// The error callers get while the breaker is open: `NO_RUNNER`, retryable, naming the
    /// last boot failure (its code and message are also in the details).
    pub(crate) fn error(&self, pool: &str, now: Instant) -> Error {
        let retry_in = self
            .open_until
            .map(|t| t.saturating_duration_since(now))
            .unwrap_or_default();
        let (code, last) = match &self.last_error {
            Some(e) => (e.code().as_str(), e.message().to_owned()),
            None => ("NO_RUNNER", "unknown".to_owned()),
        };
        Error::new(
            ErrorCode::NoRunner,
            format!(
                "pool `{pool}` stopped starting runners after {} consecutive failed boots (next try in {} ms); last boot failure: {code}: {last}",
                self.failures,
                retry_in.as_millis()
            ),
        )
        .with_retryable(true)
        .with_details(serde_json::json!({
            "breaker": "open",
            "consecutiveFailures": self.failures,
            "retryInMs": retry_in.as_millis() as u64,
            "lastBootError": { "code": code, "message": last },
        }))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn opens_after_threshold_backs_off_exponentially_and_closes_on_success() {
        let now = Instant::now();
        let e = Error::backend("exit status 1 before ready", false);
        let mut b = Breaker::new(3, Duration::from_secs(1), Duration::from_secs(4), 100);
        assert_eq!(b.failed(now, &e), None);
        assert_eq!(b.failed(now, &e), None);
        assert_eq!(b.gate(now, 0), Gate::Open);
        assert_eq!(b.failed(now, &e), Some(Duration::from_secs(1)));
        assert_eq!(b.gate(now, 0), Gate::BreakerUntil(now + Duration::from_secs(1)));
        let later = now + Duration::from_secs(1);
        assert_eq!(b.gate(later, 0), Gate::Trial);
        assert_eq!(b.gate(later, 1), Gate::TrialBooting, "one trial at a time");
        assert_eq!(b.failed(later, &e), Some(Duration::from_secs(2)));
        assert_eq!(b.failed(later, &e), Some(Duration::from_secs(4)));
        assert_eq!(b.failed(later, &e), Some(Duration::from_secs(4)), "capped");
        let err = b.error("gpu", later);
        assert_eq!(err.code(), ErrorCode::NoRunner);
        assert!(err.is_retryable());
        assert!(err.message().contains("exit status 1 before ready"), "{err}");
        assert!(b.succeeded());
        assert_eq!(b.gate(later, 0), Gate::Open);
    }

    #[test]
    fn the_budget_counts_starts_in_a_rolling_minute() {
        let t0 = Instant::now();
        let mut b = Breaker::new(3, Duration::from_secs(1), Duration::from_secs(4), 2);
        b.started(t0);
        b.started(t0 + Duration::from_secs(10));
        assert_eq!(
            b.gate(t0 + Duration::from_secs(20), 0),
            Gate::BudgetUntil(t0 + BUDGET_WINDOW)
        );
        assert_eq!(b.gate(t0 + BUDGET_WINDOW, 0), Gate::Open);
    }
}
