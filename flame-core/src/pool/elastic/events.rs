//! What a pool reports: [`PoolEvent`]s, to callbacks and to `tracing`.

use std::sync::Arc;
use std::time::Duration;

/// Something that happened in a pool. Every event is also logged with `tracing` (target
/// `flame::pool`, field `event` = `grow_start`, `grow_end`, `shrink` or `runner_down`).
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum PoolEvent {
    /// A runner is being started.
    GrowStart {
        /// The pool.
        pool: String,
        /// The new runner's id.
        runner_id: String,
    },
    /// A start finished: `error` is `None` when the runner is serving.
    GrowEnd {
        /// The pool.
        pool: String,
        /// The runner's id.
        runner_id: String,
        /// Why the start failed, if it did.
        error: Option<String>,
    },
    /// A runner was ended on purpose (idle, single use, draining, pool shutdown).
    Shrink {
        /// The pool.
        pool: String,
        /// The runner's id.
        runner_id: String,
        /// `idle`, `single_use`, `draining` or `shutdown`.
        reason: &'static str,
    },
    /// A runner was found dead (failed pings, or the engine says it stopped) and removed.
    RunnerDown {
        /// The pool.
        pool: String,
        /// The runner's id.
        runner_id: String,
        /// What was observed.
        reason: String,
    },
    /// Boots kept failing: the pool starts no runner for `retry_in`, then tries one.
    BreakerOpen {
        /// The pool.
        pool: String,
        /// Consecutive failed boots.
        failures: u32,
        /// How long the pool waits before its next (single, trial) start.
        retry_in: Duration,
        /// The last boot failure.
        last_error: String,
    },
    /// A runner came up after the breaker had opened: starts are back to normal.
    BreakerClosed {
        /// The pool.
        pool: String,
    },
    /// The spawn budget (`max_spawns_per_minute`) is spent: no start until the window moves.
    SpawnBudgetSpent {
        /// The pool.
        pool: String,
        /// Starts allowed per rolling minute.
        budget: usize,
    },
}

impl PoolEvent {
    /// The event's name: `grow_start`, `grow_end`, `shrink`, `runner_down`, `breaker_open`,
    /// `breaker_closed` or `spawn_budget_spent`.
    pub fn name(&self) -> &'static str {
        match self {
            PoolEvent::GrowStart { .. } => "grow_start",
            PoolEvent::GrowEnd { .. } => "grow_end",
            PoolEvent::Shrink { .. } => "shrink",
            PoolEvent::RunnerDown { .. } => "runner_down",
            PoolEvent::BreakerOpen { .. } => "breaker_open",
            PoolEvent::BreakerClosed { .. } => "breaker_closed",
            PoolEvent::SpawnBudgetSpent { .. } => "spawn_budget_spent",
        }
    }
}

/// A callback for [`PoolEvent`]s. It runs inline, so keep it short (send to a channel, count).
pub type PoolEventHook = Arc<dyn Fn(&PoolEvent) + Send + Sync>;

/// Logs `event` with `tracing` (target `flame::pool`, field `event`).
pub(super) fn log(event: &PoolEvent) {
    match event {
        PoolEvent::GrowStart { pool, runner_id } => {
            tracing::info!(target: "flame::pool", event = "grow_start", pool, runner = runner_id, "starting a runner")
        }
        PoolEvent::GrowEnd {
            pool,
            runner_id,
            error: None,
        } => {
            tracing::info!(target: "flame::pool", event = "grow_end", pool, runner = runner_id, "runner ready")
        }
        PoolEvent::GrowEnd {
            pool,
            runner_id,
            error: Some(e),
        } => {
            tracing::warn!(target: "flame::pool", event = "grow_end", pool, runner = runner_id, error = %e, "runner failed to start")
        }
        PoolEvent::Shrink {
            pool,
            runner_id,
            reason,
        } => {
            tracing::info!(target: "flame::pool", event = "shrink", pool, runner = runner_id, reason, "ending a runner")
        }
        PoolEvent::RunnerDown {
            pool,
            runner_id,
            reason,
        } => {
            tracing::warn!(target: "flame::pool", event = "runner_down", pool, runner = runner_id, reason = %reason, "runner is down")
        }
        PoolEvent::BreakerOpen {
            pool,
            failures,
            retry_in,
            last_error,
        } => {
            tracing::error!(target: "flame::pool", event = "breaker_open", pool, failures, retry_in_ms = retry_in.as_millis() as u64, last_error = %last_error, "runners keep failing to boot: starting none for a while")
        }
        PoolEvent::BreakerClosed { pool } => {
            tracing::info!(target: "flame::pool", event = "breaker_closed", pool, "a runner booted again: starts are back to normal")
        }
        PoolEvent::SpawnBudgetSpent { pool, budget } => {
            tracing::error!(target: "flame::pool", event = "spawn_budget_spent", pool, budget, "spawn budget spent: no runner starts until the rolling minute moves on")
        }
    }
}
