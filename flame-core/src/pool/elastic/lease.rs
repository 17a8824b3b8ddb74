//! Checkout and release: handing slots to callers (FIFO), and deciding when to start runners.

use super::events::PoolEvent;
use super::state::*;
use crate::backend::RunnerHandle;
use crate::error::{Error, ErrorCode, Result};
use crate::pool::breaker::Gate;
use crate::pool::{CheckoutOptions, Lease, LeaseOutcome};
use std::sync::atomic::Ordering;
use std::sync::Arc;
use tokio::sync::oneshot;
use tokio::time::Instant;

impl Shared {
    /// Hands free slots to waiters (oldest first) and decides how many runners to start.
    pub(super) fn rebalance(self: &Arc<Self>, st: &mut State) -> Actions {
        let mut actions = Actions::default();
        while !st.waiters.is_empty() {
            let Some(&(_, id)) = st.free.first() else {
                break;
            };
            let Some((_, tx)) = st.waiters.pop_first() else {
                break;
            };
            let lease = self.take_slot(st, id);
            actions.grants.push((tx, lease));
        }
        self.publish(st);
        if st.closed {
            return actions;
        }
        if self.refusal.is_some() {
            return actions;
        }
        let now = Instant::now();
        let min_ok = st.min_retry_at.map_or(true, |t| now >= t);
        loop {
            let total = st.runners.len() + st.booting;
            if total >= self.config.max {
                break;
            }
            let uncovered = st.waiters.len().saturating_sub(st.booting * self.conc);
            if !(uncovered > 0 || (total < self.config.min && min_ok)) {
                break;
            }
            match st.breaker.gate(now, st.booting) {
                Gate::Open | Gate::Trial => {}
                Gate::TrialBooting => break,
                Gate::BreakerUntil(at) => {
                    actions.wake = Some(at);
                    break;
                }
                Gate::BudgetUntil(at) => {
                    if !st.breaker.budget_reported {
                        st.breaker.budget_reported = true;
                        actions.events.push(PoolEvent::SpawnBudgetSpent {
                            pool: self.name.clone(),
                            budget: self.config.spawn_budget(),
                        });
                    }
                    actions.wake = Some(at);
                    break;
                }
            }
            st.breaker.started(now);
            st.booting += 1;
            actions.spawns += 1;
        }
        self.publish(st);
        if let Some(at) = actions.wake {
            if st.wake_at.is_some_and(|w| w <= at) {
                actions.wake = None;
            } else {
                st.wake_at = Some(at);
            }
        }
        actions
    }

    /// Does what `rebalance` decided; must be called without the lock.
    pub(super) fn apply(self: &Arc<Self>, actions: Actions) {
        for event in actions.events {
            self.emit(event);
        }
        for (tx, grant) in actions.grants {
            // A waiter that just gave up: dropping the lease hands the slot on.
            if let Err(returned) = tx.send(grant) {
                drop(returned);
            }
        }
        for (handle, reason) in actions.terminate {
            self.end_in_background(handle, reason);
        }
        for _ in 0..actions.spawns {
            let shared = self.clone();
            tokio::spawn(async move { shared.boot().await });
        }
        if let Some(at) = actions.wake {
            let shared = self.clone();
            tokio::spawn(async move {
                tokio::select! {
                    _ = tokio::time::sleep_until(at) => {}
                    _ = shared.closed.cancelled() => return,
                }
                let actions = {
                    let mut st = shared.lock();
                    if st.wake_at == Some(at) {
                        st.wake_at = None;
                    }
                    shared.rebalance(&mut st)
                };
                shared.apply(actions);
            });
        }
    }

    /// Ends a runner in a task; shutdown waits for such tasks.
    pub(super) fn end_in_background(self: &Arc<Self>, handle: RunnerHandle, reason: &'static str) {
        self.terminating.fetch_add(1, Ordering::AcqRel);
        let shared = self.clone();
        tokio::spawn(async move {
            shared.end_runner(handle, reason).await;
            shared.terminating.fetch_sub(1, Ordering::AcqRel);
            shared.changed.notify_waiters();
        });
    }

    pub(super) async fn end_runner(&self, handle: RunnerHandle, reason: &'static str) {
        if let Err(e) = self.backend.terminate(&handle).await {
            tracing::warn!(target: "flame::pool", pool = %self.name, runner = %handle.runner_id, reason, error = %e, "terminating a runner failed");
        }
    }

    pub(super) async fn checkout(self: &Arc<Self>, options: &CheckoutOptions) -> Result<Lease> {
        let (rx, id, actions) = {
            let mut st = self.lock();
            if st.closed {
                return Err(self.shut_down_error());
            }
            if st.waiters.is_empty() {
                if let Some(&(_, id)) = st.free.first() {
                    return self.take_slot(&mut st, id);
                }
            }
            if st.runners.is_empty() && st.booting == 0 {
                // Nothing could serve a waiter: say why now instead of at the deadline.
                if let Some(refusal) = &self.refusal {
                    return Err(Error::config(refusal.clone()));
                }
                let now = Instant::now();
                if let Gate::BreakerUntil(_) = st.breaker.gate(now, 0) {
                    return Err(st.breaker.error(&self.name, now));
                }
            }
            let id = st.next();
            let (tx, rx) = oneshot::channel();
            st.waiters.insert(id, tx);
            let actions = self.rebalance(&mut st);
            (rx, id, actions)
        };
        self.apply(actions);
        let mut guard = WaiterGuard {
            shared: self,
            id: Some(id),
        };
        let mut rx = rx;
        let mut outcome = match options.deadline {
            Some(deadline) => tokio::time::timeout_at(deadline, &mut rx).await.ok(),
            None => Some((&mut rx).await),
        };
        if outcome.is_none() && self.lock().booting > 0 {
            // A call's timeout covers the call, not a runner's boot: while runners boot, wait
            // for them (bounded by the boot timeout) rather than fail — Elixir FLAME's calls
            // fail during boot when their timeout is shorter than `boot_timeout`.
            let limit = self.config.boot_timeout + BOOT_SLACK;
            outcome = tokio::time::timeout(limit, &mut rx).await.ok();
        }
        match outcome {
            Some(Ok(grant)) => {
                guard.id = None;
                grant
            }
            Some(Err(_)) => {
                guard.id = None;
                Err(self.shut_down_error())
            }
            None => {
                drop(guard);
                // Any slot that raced to us was in the receiver, dropped with the timeout
                // future: it has been handed on already.
                let st = self.lock();
                let busy_at_max =
                    st.booting == 0 && !st.runners.is_empty() && st.runners.len() >= self.config.max;
                Err(if busy_at_max {
                    Error::new(
                        ErrorCode::Overloaded,
                        format!(
                            "pool `{}` is at its max of {} runners and every slot stayed busy until the call's deadline",
                            self.name, self.config.max
                        ),
                    )
                } else {
                    Error::new(
                        ErrorCode::Timeout,
                        format!(
                            "pool `{}`: no runner became ready before the call's deadline",
                            self.name
                        ),
                    )
                })
            }
        }
    }

    pub(super) fn release(self: &Arc<Self>, id: u64, outcome: LeaseOutcome) {
        let actions = {
            let mut st = self.lock();
            st.in_flight = st.in_flight.saturating_sub(1);
            let mut actions = Actions::default();
            if let Some(r) = st.runners.get_mut(&id) {
                r.load = r.load.saturating_sub(1);
                if outcome == LeaseOutcome::RunnerFailed && !r.suspect {
                    r.suspect = true;
                    r.check_now.notify_one();
                }
                if r.load == 0 {
                    r.idle_since = Instant::now();
                    r.went_idle.notify_one();
                    let reason = r.retiring.or(if self.config.single_use && r.used {
                        Some("single_use")
                    } else {
                        None
                    });
                    if let Some(reason) = reason {
                        if let Some(r) = self.remove_runner(&mut st, id) {
                            r.lost.cancel();
                            actions.events.push(PoolEvent::Shrink {
                                pool: self.name.clone(),
                                runner_id: r.handle.runner_id.clone(),
                                reason,
                            });
                            actions.terminate.push((r.handle, reason));
                        }
                    }
                }
                self.refile(&mut st, id);
            }
            actions.merge(self.rebalance(&mut st));
            actions
        };
        self.apply(actions);
        self.changed.notify_waiters();
    }
}
