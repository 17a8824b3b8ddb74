//! Watching runners: health pings, idle shutdown, suspects, and runners found dead or draining.

use super::events::PoolEvent;
use super::state::*;
use crate::backend::{RunnerHandle, RunnerState};
use crate::error::ErrorCode;
use crate::transport::Transport;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::Notify;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

impl Shared {
    /// Watches one runner: health pings, idle shutdown, checks asked for by failed calls.
    pub(super) async fn monitor(
        self: Arc<Self>,
        id: u64,
        handle: RunnerHandle,
        lost: CancellationToken,
        went_idle: Arc<Notify>,
        check_now: Arc<Notify>,
    ) {
        let ping_timeout = self
            .health_interval
            .clamp(Duration::from_secs(1), Duration::from_secs(10));
        let mut next_ping = Instant::now() + self.health_interval;
        let mut failures = 0u32;
        loop {
            let idle_at = {
                let st = self.lock();
                let Some(r) = st.runners.get(&id) else {
                    return;
                };
                (r.load == 0 && st.runners.len() > self.config.min)
                    .then(|| r.idle_since + self.config.idle_shutdown_after)
            };
            let far = Instant::now() + Duration::from_secs(86_400);
            tokio::select! {
                _ = lost.cancelled() => return,
                _ = self.closed.cancelled() => return,
                _ = went_idle.notified() => continue,
                _ = tokio::time::sleep_until(idle_at.unwrap_or(far)), if idle_at.is_some() => {
                    if self.retire_idle(id) {
                        return;
                    }
                    continue;
                }
                _ = check_now.notified() => {}
                _ = tokio::time::sleep_until(next_ping) => {}
            }
            let ping =
                tokio::time::timeout(ping_timeout, self.template.transport.ping(&handle.endpoint)).await;
            let (problem, refused) = match ping {
                Ok(Ok(status)) if status.draining => {
                    self.retire_draining(id);
                    (None, false)
                }
                Ok(Ok(_)) => (None, false),
                Ok(Err(e)) => {
                    let refused = e.code() == ErrorCode::Transport && e.handler_never_ran();
                    (Some(e.to_string()), refused)
                }
                Err(_) => (Some(format!("ping timed out after {ping_timeout:?}")), false),
            };
            next_ping = Instant::now() + self.health_interval;
            match problem {
                None => {
                    failures = 0;
                    self.clear_suspect(id);
                }
                Some(reason) => {
                    failures += 1;
                    let state = self.backend.status(&handle).await;
                    if refused && matches!(state, Ok(RunnerState::Running)) {
                        // It stopped listening but still runs: a runner draining on SIGTERM
                        // closes its listener first. Its calls in flight finish; it takes no
                        // new ones and is ended once they are done (or they fail on their own
                        // connections if it dies).
                        self.retire_draining(id);
                        return;
                    }
                    let stopped = matches!(state, Ok(RunnerState::Stopped));
                    if stopped || failures >= PING_FAILURES_DOWN {
                        let why = if stopped {
                            format!("{reason}; the {} backend says it stopped", self.backend.name())
                        } else {
                            format!("{failures} pings failed; last: {reason}")
                        };
                        self.runner_down(id, why);
                        return;
                    }
                    self.mark_suspect(id);
                    // Look again soon rather than a whole interval later.
                    next_ping = Instant::now() + (self.health_interval / 4).max(Duration::from_millis(50));
                }
            }
        }
    }

    pub(super) fn mark_suspect(self: &Arc<Self>, id: u64) {
        let mut st = self.lock();
        if let Some(r) = st.runners.get_mut(&id) {
            r.suspect = true;
        }
        self.refile(&mut st, id);
    }

    pub(super) fn clear_suspect(self: &Arc<Self>, id: u64) {
        let actions = {
            let mut st = self.lock();
            let Some(r) = st.runners.get_mut(&id) else {
                return;
            };
            if !r.suspect {
                return;
            }
            r.suspect = false;
            self.refile(&mut st, id);
            self.rebalance(&mut st)
        };
        self.apply(actions);
    }

    pub(super) fn retire_draining(self: &Arc<Self>, id: u64) {
        let actions = {
            let mut st = self.lock();
            let Some(r) = st.runners.get_mut(&id) else {
                return;
            };
            if r.retiring.is_some() {
                return;
            }
            r.retiring = Some("draining");
            let mut actions = Actions::default();
            if r.load == 0 {
                if let Some(r) = self.remove_runner(&mut st, id) {
                    r.lost.cancel();
                    actions.events.push(PoolEvent::Shrink {
                        pool: self.name.clone(),
                        runner_id: r.handle.runner_id.clone(),
                        reason: "draining",
                    });
                    actions.terminate.push((r.handle, "draining"));
                }
            } else {
                self.refile(&mut st, id);
            }
            actions.merge(self.rebalance(&mut st));
            actions
        };
        self.apply(actions);
    }

    /// Ends runner `id` if it is still idle and the pool is above `min`; true if it did.
    pub(super) fn retire_idle(self: &Arc<Self>, id: u64) -> bool {
        let handle = {
            let mut st = self.lock();
            let above_min = st.runners.len() > self.config.min;
            let Some(r) = st.runners.get(&id) else {
                return true;
            };
            if r.load > 0 || !above_min || r.idle_since.elapsed() < self.config.idle_shutdown_after {
                return false;
            }
            match self.remove_runner(&mut st, id) {
                Some(r) => r.handle,
                None => return true,
            }
        };
        self.emit(PoolEvent::Shrink {
            pool: self.name.clone(),
            runner_id: handle.runner_id.clone(),
            reason: "idle",
        });
        self.apply(Actions {
            terminate: vec![(handle, "idle")],
            ..Actions::default()
        });
        true
    }

    pub(super) fn runner_down(self: &Arc<Self>, id: u64, reason: String) {
        let (runner, actions) = {
            let mut st = self.lock();
            let runner = self.remove_runner(&mut st, id);
            (runner, self.rebalance(&mut st))
        };
        let Some(runner) = runner else {
            self.apply(actions);
            return;
        };
        // Calls in flight on it fail now, retryable, instead of waiting for their deadline.
        runner.lost.cancel();
        self.emit(PoolEvent::RunnerDown {
            pool: self.name.clone(),
            runner_id: runner.handle.runner_id.clone(),
            reason,
        });
        self.apply(actions);
        // Make sure whatever is left of it is gone (idempotent for an exited runner).
        self.end_in_background(runner.handle, "down");
    }
}
